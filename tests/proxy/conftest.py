"""Fixtures for proxy tests: a CA, an echo app, and proxies wired into a small mesh.

Everything runs in the test's event loop (uvloop, like the real proxy) on ephemeral
ports, and is closed in `finally` blocks so a failing test leaks nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
import uvloop

from gossamer.identity.ca import CertificateAuthority
from gossamer.identity.csr import generate_private_key, make_csr
from gossamer.identity.spiffe import SpiffeId
from gossamer.proxy.dataplane import Credentials, DataPlane, DataPlaneConfig
from gossamer.proxy.wire import h2codec, http1
from gossamer.translate.snapshot import (
    Endpoint,
    LocalPort,
    ProxySelf,
    ServicePort,
    ServiceView,
    Snapshot,
)

TRUST_DOMAIN = "cluster.local"
LOCAL = ("127.0.0.1", 0)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    # The proxy runs on uvloop; GOSSAMER_TEST_LOOP=asyncio checks the stock loop too.
    if os.environ.get("GOSSAMER_TEST_LOOP") == "asyncio":
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


# The HTTP/2 protocol, bad-input and gRPC suites run over each codec: h2 with the
# pure-Python or the native HPACK (decision 0097), and nghttp2_session (decision 0102).
# The native ones must be built here (make test builds them): where they are not, their
# part of these tests fails with the reason rather than passing over another codec.
H2_CODEC_SUITES = frozenset(
    (
        "test_http2",
        "test_h2_coalesce",
        "test_h2spec",
        "test_h2_hardening",
        "test_h2_hooks",
        "test_h2to1",
        "test_h1to2",
        "test_e2e_grpc",
    )
)


# The HTTP/1.1 reader suites run over each reader: llhttp alone, and with the common
# message read in C first (decision 0115; test_h1native compares the two directly).
H1_READER_SUITES = frozenset(("test_http1", "test_http1_hardening"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    suite = metafunc.module.__name__.rpartition(".")[2]
    if suite in H2_CODEC_SUITES:
        metafunc.parametrize("h2_codec", h2codec.NAMES, indirect=True)
    if suite in H1_READER_SUITES:
        metafunc.parametrize("h1_reader", ("llhttp", "native"), indirect=True)


@pytest.fixture(autouse=True)
def h1_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The HTTP/1.1 reader readers made in this test use, here and in proxies it starts."""
    name: str | None = getattr(request, "param", None)
    if name is None:
        return "native" if http1.native else "llhttp"
    monkeypatch.setattr(http1, "native", http1._native_wanted(name))
    monkeypatch.setenv(http1.READER_ENV, name)
    return name


@pytest.fixture(autouse=True)
def h2_codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The HTTP/2 codec new connections use, here and in proxies tests start."""
    before = h2codec.active
    name: str = getattr(request, "param", before.name)
    h2codec.use(name)
    monkeypatch.setenv(h2codec.ENV, name)
    try:
        yield name
    finally:
        h2codec.active = before


class Pki:
    """A CA from gossamer.identity issuing leaf certificates for test workloads."""

    def __init__(self, trust_domain: str = TRUST_DOMAIN) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="gossamer-test-ca-")
        self.trust_domain = trust_domain
        self.ca = CertificateAuthority.load_or_create(Path(self._dir.name), trust_domain)
        self._cache: dict[tuple[str, str], Credentials] = {}

    def identity(self, namespace: str, service_account: str) -> str:
        return str(SpiffeId(self.trust_domain, namespace, service_account))

    def issue(self, namespace: str, service_account: str, *, fresh: bool = False) -> Credentials:
        """A leaf for the identity; the same one each call unless `fresh`."""
        key = (namespace, service_account)
        if fresh or key not in self._cache:
            spiffe = SpiffeId(self.trust_domain, namespace, service_account)
            key_pem = generate_private_key()
            issued = self.ca.sign_csr(make_csr(key_pem, spiffe), spiffe)
            self._cache[key] = Credentials.from_pem(
                issued.chain_pem.encode(), key_pem, issued.trust_bundle_pem.encode()
            )
        return self._cache[key]

    def close(self) -> None:
        self._dir.cleanup()


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    p = Pki()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="session")
def other_pki() -> Iterator[Pki]:
    """A second, unrelated CA with the same trust domain name."""
    p = Pki()
    try:
        yield p
    finally:
        p.close()


# ---- the echo app -------------------------------------------------------------------


class AppServer:
    """An app for tests on an ephemeral 127.0.0.1 port: each connection it accepts is
    counted and `serve`d until it ends; `close` aborts those still open."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class EchoApp(AppServer):
    """A tiny HTTP/1.1 server that says which instance served and what it received.

    GET/POST /anything → JSON {instance, method, path, version, headers, body_length,
    body_sha256}. /stream echoes the request body back chunked as it arrives; /bytes?n=N
    answers N bytes with a Content-Length; /chunked?n=N answers N bytes chunked;
    /close answers a close-delimited body; /hang never answers. `delay` (seconds)
    holds every answer that long first: a destination that slows down.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.requests = 0
        self.delay = 0.0
        # (method, path, body length, body sha256) of each request whose body was read.
        self.received: list[tuple[str, str, int, str]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await self._one(reader, writer):
            pass

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        self.requests += 1
        lines = raw.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
        lower = {k.lower(): v for k, v in headers}
        path, _, query = target.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        chunked = lower.get("transfer-encoding", "").lower().endswith("chunked")
        length = int(lower.get("content-length", "0"))
        keep = lower.get("connection", "").lower() != "close" and version == "HTTP/1.1"

        if path == "/stream":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            async for piece in _body(reader, chunked, length):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return keep
        digest = hashlib.sha256()
        size = 0
        async for piece in _body(reader, chunked, length):
            digest.update(piece)
            size += len(piece)
        self.received.append((method, path, size, digest.hexdigest()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if path == "/bytes" or path == "/chunked":
            n = int(params.get("n", "0"))
            block = b"x" * 65536
            if path == "/bytes":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
                while n > 0:
                    writer.write(block[: min(n, len(block))])
                    n -= len(block)
                    await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                while n > 0:
                    piece = block[: min(n, len(block))]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    n -= len(piece)
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            return keep
        if path == "/hang":
            await reader.read()  # until the proxy gives up and closes
            return False
        if path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nclosed-delimited body")
            await writer.drain()
            return False
        body = json.dumps(
            {
                "instance": self.name,
                "method": method,
                "path": target,
                "version": version,
                "headers": headers,
                "body_length": size,
                "body_sha256": digest.hexdigest(),
            }
        ).encode()
        extra = b"" if keep else b"connection: close\r\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-instance: %s\r\n"
            b"content-length: %d\r\n%s\r\n" % (self.name.encode(), len(body), extra)
        )
        if method != "HEAD":
            writer.write(body)
        await writer.drain()
        return keep


async def _body(reader: asyncio.StreamReader, chunked: bool, length: int) -> AsyncIterator[bytes]:
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            remaining = size
            while remaining:
                piece = await reader.read(min(remaining, 65536))
                if not piece:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(piece)
                yield piece
            await reader.readexactly(2)
    else:
        while length > 0:
            piece = await reader.read(min(length, 65536))
            if not piece:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(piece)
            yield piece


# ---- a small mesh -------------------------------------------------------------------


def fast_config(**overrides: object) -> DataPlaneConfig:
    cfg = DataPlaneConfig(outbound=LOCAL, inbound=LOCAL, admin=LOCAL, connect_timeout=1.0)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@dataclass
class Workload:
    """An echo app behind its own inbound proxy."""

    name: str
    app: EchoApp
    proxy: DataPlane
    identity: str
    namespace: str = "default"
    port: int = 8080

    def endpoint(self, identity: str | None = None) -> Endpoint:
        assert self.proxy.inbound_address is not None
        return Endpoint(
            workload=self.name,
            namespace=self.namespace,
            address="127.0.0.1",
            inbound_port=self.proxy.inbound_address[1],
            target_port=self.port,
            identity=identity or self.identity,
        )


@dataclass
class Mesh:
    pki: Pki
    client: DataPlane
    workloads: list[Workload] = field(default_factory=list)
    interests_asked: list[str] = field(default_factory=list)

    @property
    def outbound(self) -> tuple[str, int]:
        assert self.client.outbound_address is not None
        return self.client.outbound_address

    @property
    def proxy_url(self) -> str:
        host, port = self.outbound
        return f"http://{host}:{port}"

    def client_snapshot(
        self,
        services: tuple[ServiceView, ...] | None = None,
        interests: tuple[str, ...] = (),
    ) -> Snapshot:
        if services is None:
            services = (
                ServiceView(
                    "echo",
                    "default",
                    (ServicePort(80, "http", None, tuple(w.endpoint() for w in self.workloads)),),
                ),
            )
        return Snapshot(
            proxy=ProxySelf(
                workload="web-1",
                namespace="default",
                service_account="web",
                identity=self.pki.identity("default", "web"),
                services=("web",),
            ),
            trust_domain=self.pki.trust_domain,
            trust_bundle="",
            services=services,
            interests=interests,
            version="1",
        )


def server_snapshot(pki: Pki, name: str, app_port: int, namespace: str = "default") -> Snapshot:
    return Snapshot(
        proxy=ProxySelf(
            workload=name,
            namespace=namespace,
            service_account="echo",
            identity=pki.identity(namespace, "echo"),
            ports=(LocalPort(8080, app_port, "http"),),
            services=("echo",),
        ),
        trust_domain=pki.trust_domain,
        trust_bundle="",
        version="1",
    )


async def start_workload(
    pki: Pki, name: str, *, creds: Credentials | None = None, namespace: str = "default"
) -> Workload:
    app = EchoApp(name)
    app_port = await app.start()
    proxy = DataPlane(fast_config(), on_interest=lambda key: None)
    try:
        await proxy.start()
        proxy.set_credentials(creds or pki.issue(namespace, "echo"))
        proxy.apply_snapshot(server_snapshot(pki, name, app_port, namespace))
        for _ in range(100):
            if proxy.ready:
                break
            await asyncio.sleep(0.01)
    except BaseException:
        await proxy.close()
        await app.close()
        raise
    return Workload(name, app, proxy, pki.identity(namespace, "echo"), namespace)


@pytest_asyncio.fixture
async def mesh(pki: Pki) -> AsyncIterator[Mesh]:
    """A client proxy ("web") routing echo.default:80 to two echo workloads."""
    asked: list[str] = []
    client = DataPlane(fast_config(), on_interest=asked.append)
    m = Mesh(pki, client, interests_asked=asked)
    try:
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        for name in ("echo-1", "echo-2"):
            m.workloads.append(await start_workload(pki, name))
        client.apply_snapshot(m.client_snapshot())
        yield m
    finally:
        await client.close()
        for w in m.workloads:
            await w.proxy.close()
            await w.app.close()


# ---- clients ------------------------------------------------------------------------


async def curl(*args: str, timeout: float = 20.0) -> tuple[int, bytes, bytes]:
    """Run the real curl; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


async def raw_exchange(address: tuple[str, int], data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` on a fresh connection and read until the proxy closes it."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.transport.abort()


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split raw bytes into (status, headers, body) for Content-Length framed responses."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out
