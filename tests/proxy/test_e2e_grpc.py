"""End to end: a real grpcio client and server, HTTP/2 through two proxies.

The client speaks h2c with prior knowledge to the client proxy's outbound listener
(the same port as HTTP/1.1); proxies speak HTTP/2 to each other over mTLS (ALPN
gossamer/h2); the server proxy speaks h2c to the app, whose port is declared grpc.
grpcio's blocking API runs in threads so that the proxies' loop stays free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from gossamer.proxy.dataplane import DataPlane
from gossamer.translate.snapshot import LocalPort
from tests.proxy.conftest import Pki, Workload, curl, fast_config, server_snapshot
from tests.proxy.test_e2e_http import admin_get, metric
from tests.proxy.test_e2e_upgrade import two_proxies
from tests.proxy.test_traffic import Traffic, httproute, ref

SERVICE = "gossamer.test.Echo"


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request == b"slow":
        time.sleep(1.0)
    return request[::-1]


def _server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield b"%d" % i


def _client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    return b"+".join(requests)


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        yield request.upper()


def grpc_server(name: str = "echo") -> tuple[grpc.Server, int]:
    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        routed = dict(context.invocation_metadata()).get("x-routed", "-")
        return f"{name} {routed}".encode()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Who": grpc.unary_unary_rpc_method_handler(who),
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", 16 << 20)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def calls(address: tuple[str, int]) -> dict[str, object]:
    """Every kind of call through the proxy; what each returned (or its status)."""
    got: dict[str, object] = {}
    options = [
        ("grpc.default_authority", "echo"),
        ("grpc.max_receive_message_length", 16 << 20),
        ("grpc.max_send_message_length", 16 << 20),
    ]
    with grpc.insecure_channel(f"{address[0]}:{address[1]}", options=options) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        got["unary"] = unary(b"hello", timeout=10)
        stream = channel.unary_stream(f"/{SERVICE}/ServerStream")
        got["server_stream"] = list(stream(b"5", timeout=10))
        client_stream = channel.stream_unary(f"/{SERVICE}/ClientStream")
        got["client_stream"] = client_stream(iter([b"a", b"b", b"c"]), timeout=10)
        bidi = channel.stream_stream(f"/{SERVICE}/Bidi")
        got["bidi"] = list(bidi(iter([b"x", b"y"]), timeout=10))
        big = bytes(range(256)) * (3 * 4096)  # 3 MiB: many windows' worth
        got["large"] = unary(big, timeout=20) == big[::-1]
        for name, request, timeout in (("not_found", b"fail", 10.0), ("deadline", b"slow", 0.2)):
            try:
                unary(request, timeout=timeout)
            except grpc.RpcError as e:
                got[name] = e.code()
    return got


@pytest.mark.asyncio
async def test_grpc_calls_of_every_kind_go_through_two_proxies(pki: Pki) -> None:
    server, app_port = grpc_server()
    try:
        async with two_proxies(pki, app_port, "grpc") as (client, _):
            assert client.outbound_address is not None
            got = await asyncio.wait_for(asyncio.to_thread(calls, client.outbound_address), 60)
            assert got == {
                "unary": b"olleh",
                "server_stream": [b"0", b"1", b"2", b"3", b"4"],
                "client_stream": b"a+b+c",
                "bidi": [b"X", b"Y"],
                "large": True,
                "not_found": grpc.StatusCode.NOT_FOUND,
                "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
            }
            _, text = await admin_get(client, "/metrics")
            requests = "gossamer_requests_total"
            assert metric(text.decode(), requests, dst_service="echo", grpc_status="0") == 5
            assert metric(text.decode(), requests, dst_service="echo", grpc_status="5") == 1
    finally:
        server.stop(None)


def reset_beside_a_stream(address: tuple[str, int]) -> list[bytes]:
    """A bidi stream goes on while another call on the same connection is reset."""
    import queue

    sent: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        for _ in range(10):
            item = sent.get(timeout=10)
            if item is None:
                return
            yield item

    options = [("grpc.default_authority", "echo")]
    with grpc.insecure_channel(f"{address[0]}:{address[1]}", options=options) as channel:
        bidi = channel.stream_stream(f"/{SERVICE}/Bidi")(requests(), timeout=20)
        got = []
        sent.put(b"a")
        got.append(next(bidi))
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        with pytest.raises(grpc.RpcError) as e:
            unary(b"slow", timeout=0.2)  # the client resets this stream at its deadline
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        sent.put(b"b")
        got.append(next(bidi))
        sent.put(None)
        got.extend(bidi)
        return got


@pytest.mark.asyncio
async def test_a_reset_stream_leaves_the_other_streams_of_its_connection_alone(
    pki: Pki,
) -> None:
    server, app_port = grpc_server()
    try:
        async with two_proxies(pki, app_port, "grpc") as (client, _):
            assert client.outbound_address is not None
            got = await asyncio.wait_for(
                asyncio.to_thread(reset_beside_a_stream, client.outbound_address), 60
            )
            assert got == [b"A", b"B"]
    finally:
        server.stop(None)


@pytest.mark.asyncio
async def test_curl_speaks_http2_prior_knowledge_through_the_mesh(pki: Pki) -> None:
    server, app_port = grpc_server()
    try:
        async with two_proxies(pki, app_port, "grpc") as (client, _):
            host, port = client.outbound_address or ("", 0)
            code, out, err = await curl(
                "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                "-H", "content-type: application/grpc", "-H", "te: trailers",
                "--data-binary", "@/dev/null",
                "--connect-to", f"echo:80:{host}:{port}", f"http://echo:80/{SERVICE}/Unary",
            )  # fmt: skip
            assert code == 0, err
            # An empty body is not a gRPC message: the server answers in HTTP/2 all the same.
            assert out.decode().startswith("2 200")
    finally:
        server.stop(None)


# ---- bad input ----------------------------------------------------------------------


async def goaway_after(address: tuple[str, int], data: bytes, timeout: float = 5.0) -> int | None:
    """Send `data` on a fresh connection; the error code of the GOAWAY that comes back."""
    import h2.config
    import h2.connection
    import h2.events

    reader, writer = await asyncio.open_connection(*address)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.clear_outbound_data_buffer()  # this test writes its own bytes
    try:
        writer.write(data)
        for _ in range(100):
            try:
                got = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                return None
            if not got:
                return None
            try:
                events = client.receive_data(got)
            except Exception:
                return None
            for event in events:
                if isinstance(event, h2.events.ConnectionTerminated):
                    return int(event.error_code or 0)
        return None
    finally:
        writer.transport.abort()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PING = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"\x00" * 8
BAD_INPUT = [
    ("an invalid preface", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SETTINGS, 1),
    ("a DATA frame on stream 0", PREFACE + SETTINGS + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x", 1),
    ("a flood of PINGs", PREFACE + SETTINGS + PING * 600, 11),
    ("a flood of SETTINGS", PREFACE + SETTINGS * 600, 11),
]


@pytest.mark.parametrize(
    ("data", "code"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
@pytest.mark.asyncio
async def test_bad_http2_input_closes_the_connection_with_its_error_code(
    pki: Pki, data: bytes, code: int
) -> None:
    async with two_proxies(pki, 1, "grpc") as (client, _):
        assert client.outbound_address is not None
        assert await goaway_after(client.outbound_address, data) == code
        # And the listener still serves everyone else.
        assert await goaway_after(client.outbound_address, PREFACE + SETTINGS + PING, 0.3) is None


@pytest.mark.asyncio
async def test_h2load_sends_many_concurrent_streams_through_the_mesh(
    pki: Pki, tmp_path: Path
) -> None:
    message = tmp_path / "message"
    message.write_bytes(b"\x00\x00\x00\x00\x05hello")  # one gRPC message, uncompressed
    server, app_port = grpc_server()
    try:
        async with two_proxies(pki, app_port, "grpc") as (client, _):
            host, port = client.outbound_address or ("", 0)
            proc = await asyncio.create_subprocess_exec(
                "h2load", "-n", "200", "-c", "2", "-m", "20",
                "-H", ":authority: echo", "-H", "content-type: application/grpc",
                "-H", "te: trailers", "-d", str(message),
                f"http://{host}:{port}/{SERVICE}/Unary",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 60)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            text = out.decode()
            assert "200 succeeded, 0 failed, 0 errored" in text, text
            assert "200 2xx" in text, text
    finally:
        server.stop(None)


@pytest.mark.asyncio
async def test_an_httproute_splits_and_edits_grpc_calls_by_service_and_method(pki: Pki) -> None:
    servers: list[grpc.Server] = []
    proxies: list[DataPlane] = []
    client = DataPlane(fast_config(), on_interest=lambda key: None)
    try:
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        traffic = Traffic(pki, client, services={"v1": ["v1"], "v2": ["v2"], "echo": ["v1"]})
        for name in ("v1", "v2"):
            server, port = grpc_server(name)
            servers.append(server)
            proxy = await grpc_workload(pki, name, port)
            proxies.append(proxy)
            identity = pki.identity("default", "echo")
            traffic.workloads[name] = Workload(name, None, proxy, identity)  # type: ignore[arg-type]
        edit = {"set": [{"name": "x-routed", "value": "by-route"}]}
        traffic.apply(
            httproute("split", [{
                "matches": [{"path": {"type": "Exact", "value": f"/{SERVICE}/Who"}}],
                "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": edit}],
                "backendRefs": [ref("v2", 1), ref("v1", 0)],
            }])
        )  # fmt: skip
        assert client.outbound_address is not None
        address = client.outbound_address

        def call() -> list[bytes]:
            options = [("grpc.default_authority", "echo")]
            with grpc.insecure_channel(f"{address[0]}:{address[1]}", options=options) as ch:
                who = ch.unary_unary(f"/{SERVICE}/Who")
                got = [who(b"", timeout=10) for _ in range(4)]
                with pytest.raises(grpc.RpcError) as e:  # no rule matches another method
                    ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=10)
                got.append(str(e.value.code()).encode())
                return got

        got = await asyncio.wait_for(asyncio.to_thread(call), 60)
        assert got == [b"v2 by-route"] * 4 + [b"StatusCode.UNIMPLEMENTED"]
    finally:
        await client.close()
        for proxy in proxies:
            await proxy.close()
        for server in servers:
            server.stop(None)


async def grpc_workload(pki: Pki, name: str, app_port: int) -> DataPlane:
    """A server proxy whose local port 8080 is a gRPC app."""
    proxy = DataPlane(fast_config(), on_interest=lambda key: None)
    await proxy.start()
    proxy.set_credentials(pki.issue("default", "echo"))
    snapshot = server_snapshot(pki, name, app_port)
    ports = (LocalPort(8080, app_port, "http", "grpc"),)
    proxy.apply_snapshot(replace(snapshot, proxy=replace(snapshot.proxy, ports=ports)))
    return proxy
