"""Retries when a replica goes away under a request, against a real client proxy.

The replica is played by the test (`ScriptedPeer`): a peer's inbound listener with the
echo identity over mTLS, which answers each request as its script says — closes the
connection before any response byte, after part of a response head, or answers. So
each test says exactly when the upstream connection went. The client proxy's snapshot
is built by the real translation from Kubernetes-shaped objects, RetryPolicy included.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.wire.tls import make_contexts
from gossamer.resources import to_dict, validate
from gossamer.translate import MeshView, ProxyInfo, build_snapshot
from tests.proxy.conftest import Pki, fast_config, parse_responses

BUNDLE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
WAIT = 10.0

CLOSE = "close before any response byte"
CLOSE_AT_HEAD = "close once the head is in, before the body"
PARTIAL = "close after part of a response head"
SPLIT_503 = "answer 503 and, in the same write, a second response nobody asked for"
ANSWER = "answer"


@pytest.fixture(autouse=True)
def _a_connection_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripted replica speaks HTTP/1.1 over mTLS: each request goes on a connection
    of its own (the default, said here so that the tests do not depend on it), and
    these tests are about when that connection goes. The same failures on a stream
    between two proxies (GOSSAMER_MULTIPLEX_HTTP1=1) are tests/proxy/test_h1to2.py's."""
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "0")


class ScriptedPeer:
    """A replica's inbound listener (mTLS, identity default/echo) that answers request
    number i as script[i] says, and every later one with 200. With `held`, it accepts
    nothing (connections wait in the kernel's backlog) until `admit()`."""

    def __init__(
        self, pki: Pki, name: str, script: tuple[str, ...] = (), held: bool = False
    ) -> None:
        self.name = name
        self.script = script
        self.held = held
        self.context = make_contexts(pki.issue("default", "echo")).server
        self.requests: list[bytes] = []  # the method of each request read
        self.bodies: list[bytes] = []  # the body of each request answered
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        if not self.held:
            await self.admit()
        return int(self.sock.getsockname()[1])

    async def admit(self) -> None:
        self.server = await asyncio.start_server(self._handle, sock=self.sock, ssl=self.context)

    async def close(self) -> None:
        if self.server is None:
            self.sock.close()
            return
        self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method = head.split(b" ", 1)[0]
                i = len(self.requests)
                self.requests.append(method)
                move = self.script[i] if i < len(self.script) else ANSWER
                if move == CLOSE_AT_HEAD:
                    writer.close()
                    return
                body = b""
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        body = await reader.readexactly(int(line.split(b":")[1]))
                self.bodies.append(body)
                if move == PARTIAL:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-")
                if move == SPLIT_503:
                    writer.write(
                        b"HTTP/1.1 503 X\r\ncontent-length: 4\r\n\r\nbusy"
                        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged"
                    )
                    await writer.drain()
                    continue
                if move != ANSWER:
                    writer.close()  # what was written goes first
                    return
                name = self.name.encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(name))
                if method != b"HEAD":
                    writer.write(name)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


def _obj(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> Any:
    api = "v1" if kind == "Service" else "gossamer.dev/v1alpha1"
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}


def retry_policy(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "RetryPolicy",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}], **spec},
    }


def apply(client: DataPlane, pki: Pki, replicas: dict[str, int], *objects: Any) -> None:
    """Give `client` the snapshot the control plane would build: service echo:80 with
    the replicas (name → inbound port), and `objects`."""
    mesh_objects = [
        _obj("Workload", "web-1", {"address": "127.0.0.1", "inboundPort": 1,
                                   "serviceAccount": "web"}),
        _obj("Service", "echo", {"selector": {"app": "echo"},
                                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
    ]  # fmt: skip
    for name, port in replicas.items():
        mesh_objects.append(
            _obj("Workload", name, {"address": "127.0.0.1", "serviceAccount": "echo",
                                    "inboundPort": port, "ports": [{"name": "http", "port": 8080}]},
                 labels={"app": "echo"})
        )  # fmt: skip
    for i, obj in enumerate(objects):
        obj = to_dict(validate(obj))
        obj["metadata"]["creationTimestamp"] = f"2026-01-01T00:00:{i:02d}Z"
        mesh_objects.append(obj)
    mesh = MeshView.from_objects(mesh_objects, trust_domain=pki.trust_domain, trust_bundle=BUNDLE)
    snapshot = build_snapshot(mesh, ProxyInfo("web-1", "default", frozenset({"echo.default"})))
    client.apply_snapshot(snapshot)


async def send(client: DataPlane, method: str = "GET", body: bytes = b"") -> tuple[int, str, bytes]:
    """One request through the client's outbound: (status, gossamer-error, body)."""
    assert client.outbound_address is not None
    reader, writer = await asyncio.open_connection(*client.outbound_address)
    try:
        length = f"Content-Length: {len(body)}\r\n" if body else ""
        writer.write(
            f"{method} /x HTTP/1.1\r\nHost: echo\r\n{length}Connection: close\r\n\r\n".encode()
            + body
        )
        data = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.transport.abort()
    ((status, headers, got),) = parse_responses(data)
    return status, headers.get("gossamer-error", ""), got


def connecting_to(client: DataPlane, port: int) -> bool:
    """Whether the client proxy is opening a connection to the endpoint on `port`."""
    pools = [pool for pool, _ in client._peers.values() if pool.endpoint.inbound_port == port]
    return any(pool.opening for pool in pools)


@pytest_asyncio.fixture
async def client(pki: Pki) -> AsyncIterator[DataPlane]:
    proxy = DataPlane(fast_config(), on_interest=lambda key: None)
    try:
        await proxy.start()
        proxy.set_credentials(pki.issue("default", "web"))
        yield proxy
    finally:
        await proxy.close()


@pytest_asyncio.fixture
async def peers() -> AsyncIterator[list[ScriptedPeer]]:
    started: list[ScriptedPeer] = []
    try:
        yield started
    finally:
        for peer in started:
            await peer.close()


RESET_RETRY = retry_policy(attempts=2, retryOn=["reset"], backoff={"baseInterval": "1ms"})


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", b""), ("HEAD", b""), ("PUT", b"x" * 1000), ("DELETE", b"")],
)
async def test_an_idempotent_request_whose_connection_closes_before_any_byte_is_retried(
    pki: Pki, client: DataPlane, peers: list[ScriptedPeer], method: str, body: bytes
) -> None:
    peer = ScriptedPeer(pki, "echo-1", (CLOSE,))
    peers.append(peer)
    apply(client, pki, {"echo-1": await peer.start()}, RESET_RETRY)
    status, error, got = await send(client, method, body)
    assert (status, error) == (200, "")
    assert got == (b"" if method == "HEAD" else b"echo-1")
    assert peer.requests == [method.encode()] * 2


@pytest.mark.asyncio
async def test_a_post_is_not_retried(
    pki: Pki, client: DataPlane, peers: list[ScriptedPeer]
) -> None:
    peer = ScriptedPeer(pki, "echo-1", (CLOSE,))
    peers.append(peer)
    apply(client, pki, {"echo-1": await peer.start()}, RESET_RETRY)
    status, error, _ = await send(client, "POST", b"once")
    assert status == 502
    assert "closed the connection" in error
    assert peer.requests == [b"POST"]


@pytest.mark.asyncio
async def test_a_request_whose_response_had_begun_is_not_retried(
    pki: Pki, client: DataPlane, peers: list[ScriptedPeer]
) -> None:
    """Part of a response head came: the upstream had the request and may have acted on
    it, so it is not sent again, idempotent or not."""
    peer = ScriptedPeer(pki, "echo-1", (PARTIAL,))
    peers.append(peer)
    apply(client, pki, {"echo-1": await peer.start()}, RESET_RETRY)
    status, error, _ = await send(client, "GET")
    assert status == 502
    assert error.endswith("closed the connection mid-response")
    assert peer.requests == [b"GET"]


@pytest.mark.asyncio
async def test_a_request_waiting_for_a_connection_is_answered_when_its_endpoint_leaves(
    pki: Pki, client: DataPlane, peers: list[ScriptedPeer]
) -> None:
    """A snapshot that drops the endpoint a request is connecting to (the replica is
    going away) used to cancel the connect and leave the request unanswered for good."""
    leaving = ScriptedPeer(pki, "echo-1", held=True)  # the handshake waits for admit()
    staying = ScriptedPeer(pki, "echo-2")
    peers += [leaving, staying]
    leaving_port = await leaving.start()
    apply(client, pki, {"echo-1": leaving_port})
    staying_port = await staying.start()
    request = asyncio.create_task(send(client))
    try:
        for _ in range(int(WAIT / 0.01)):
            if connecting_to(client, leaving_port):
                break
            await asyncio.sleep(0.01)
        assert connecting_to(client, leaving_port)
        apply(client, pki, {"echo-2": staying_port})
        await leaving.admit()
        status, error, got = await asyncio.wait_for(request, WAIT)
    finally:
        request.cancel()
    # The connection it was waiting for opened, and carried it.
    assert (status, error, got) == (200, "", b"echo-1")
    # New requests go to the endpoint the snapshot has now.
    assert await send(client) == (200, "", b"echo-2")


@pytest.mark.asyncio
async def test_a_request_whose_connection_closes_while_its_body_arrives_is_retried_whole(
    pki: Pki, client: DataPlane, peers: list[ScriptedPeer], caplog: pytest.LogCaptureFixture
) -> None:
    """A PUT whose body is kept for replay: the retry waits for the rest of it."""
    caplog.set_level(logging.INFO, logger="gossamer.proxy")
    peer = ScriptedPeer(pki, "echo-1", (CLOSE_AT_HEAD,))
    peers.append(peer)
    apply(client, pki, {"echo-1": await peer.start()}, RESET_RETRY)
    body = bytes(range(256)) * 8
    assert client.outbound_address is not None
    reader, writer = await asyncio.open_connection(*client.outbound_address)
    try:
        writer.write(
            b"PUT /x HTTP/1.1\r\nHost: echo\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(body)
            + body[:1000]
        )
        for _ in range(int(WAIT / 0.01)):
            if "reset the connection; retrying" in caplog.text:
                break
            await asyncio.sleep(0.01)
        assert "reset the connection; retrying" in caplog.text
        writer.write(body[1000:])
        ((status, _, got),) = parse_responses(await asyncio.wait_for(reader.read(), WAIT))
    finally:
        writer.transport.abort()
    assert (status, got) == (200, b"echo-1")
    assert peer.requests == [b"PUT", b"PUT"]
    assert peer.bodies == [body]


@pytest.mark.asyncio
async def test_a_retried_response_with_bytes_after_it_does_not_fail_the_retry(
    pki: Pki, client: DataPlane, peers: list[ScriptedPeer]
) -> None:
    """A replica answers 503 with a second response in the same write: the 503 is
    retried (its connection let go), and what came after it on that connection is
    nobody's, neither the retry's answer nor a reason to fail it."""
    peer = ScriptedPeer(pki, "echo-1", (SPLIT_503,))
    peers.append(peer)
    policy = retry_policy(attempts=2, retryOn=["5xx"], backoff={"baseInterval": "1ms"})
    apply(client, pki, {"echo-1": await peer.start()}, policy)
    status, error, got = await send(client)
    assert (status, error, got) == (200, "", b"echo-1")
    assert peer.requests == [b"GET", b"GET"]
