"""Protocol detection: the sans-IO classifier, the sniffing protocol, and the places
that use it (TCP upstream listeners, PERMISSIVE plaintext inbound, mTLS without ALPN),
in one event loop with real clients."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import grpc
import pytest
import pytest_asyncio

from gossamer.cli.proxy import add_proxy_flags
from gossamer.identity.tls import client_context
from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.outbound.tcp import TcpUpstream
from gossamer.proxy.wire.detect import (
    HTTP1,
    HTTP2,
    MAX_SNIFF,
    OPAQUE,
    Kind,
    Sniffer,
    classify,
    kind_for,
)
from gossamer.proxy.wire.http2 import PREFACE
from gossamer.proxy.wire.tls import sni_for
from gossamer.translate.authz import SecurityView
from gossamer.translate.snapshot import (
    Endpoint,
    LocalPort,
    ProxySelf,
    ServicePort,
    ServiceView,
    Snapshot,
)
from tests.proxy.conftest import EchoApp, Pki, curl, fast_config
from tests.proxy.test_e2e_grpc import SERVICE, grpc_server
from tests.proxy.test_e2e_http import metric

# ---- classify ----------------------------------------------------------------------

REQUEST_LINES = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /orders?id=1 HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"CONNECT db.shop:5432 HTTP/1.1\r\n",
    b"GET http://echo.shop/ HTTP/1.1\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\n",
    b"M-SEARCH * HTTP/1.1\r\n",
]


@pytest.mark.parametrize(
    "data",
    REQUEST_LINES,
    ids=["GET", "POST with a query", "OPTIONS *", "CONNECT", "absolute form", "HTTP/1.0",
         "after an empty line", "a method with a dash"],
)  # fmt: skip
def test_a_request_line_is_http1(data: bytes) -> None:
    assert classify(data) == HTTP1


def test_the_preface_is_http2() -> None:
    assert classify(PREFACE) == HTTP2
    assert classify(PREFACE + b"\x00\x00\x12\x04") == HTTP2


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL's SSLRequest
        b"*1\r\n$4\r\nPING\r\n",  # Redis
        b"hello over mTLS",
        b"GET /\r\n",  # HTTP/0.9: no version
        b"GET / HTTP/2.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # almost the preface
        b"GET  / HTTP/1.1\r\n",  # no target
        b"GET /\x01 HTTP/1.1\r\n",
        b"X" * 33 + b" / HTTP/1.1\r\n",  # no method is that long
        b" GET / HTTP/1.1\r\n",
    ],
    ids=["TLS", "PostgreSQL", "Redis", "text", "HTTP/0.9", "HTTP/2.0 request line",
         "a broken preface", "an empty target", "a control byte in the target",
         "a long method", "a leading space"],
)  # fmt: skip
def test_anything_else_is_opaque(data: bytes) -> None:
    assert classify(data) == OPAQUE


@pytest.mark.parametrize("whole", [*REQUEST_LINES[:3], PREFACE], ids=["GET", "POST", "*", "h2"])
def test_every_prefix_waits_for_more_bytes(whole: bytes) -> None:
    decided = len(PREFACE) if whole == PREFACE else whole.index(b" HTTP/1.") + len(b" HTTP/1.")
    for n in range(decided):
        assert classify(whole[:n]) is None, whole[:n]
    assert classify(whole[:decided]) is not None


def test_an_undecided_start_longer_than_the_limit_is_opaque() -> None:
    line = b"GET /" + b"a" * MAX_SNIFF
    assert classify(line[: MAX_SNIFF - 1]) is None
    assert classify(line) == OPAQUE


@pytest.mark.parametrize(
    ("app_protocol", "kind"),
    [
        ("tcp", OPAQUE), ("TCP", OPAQUE), ("opaque", OPAQUE), ("mysql", OPAQUE),
        ("http", HTTP1), ("kubernetes.io/ws", HTTP1),
        ("http2", HTTP2), ("grpc", HTTP2), ("kubernetes.io/h2c", HTTP2), ("h2c", HTTP2),
        (None, None), ("", None), ("example.com/custom", None),
    ],
)  # fmt: skip
def test_a_declared_app_protocol_says_what_follows(app_protocol: str | None, kind: str) -> None:
    assert kind_for(app_protocol) == kind


def proxy_args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_proxy_flags(parser)
    return parser.parse_args(["--name", "web", *flags])


@pytest.mark.parametrize(
    ("flag", "parsed"),
    [
        ("8080", (8080, 8080, None, None)),
        ("http=8080:18080", (8080, 18080, "http", None)),
        ("db=5432/tcp", (5432, 5432, "db", "tcp")),
        ("h2=8081:18081/kubernetes.io/h2c", (8081, 18081, "h2", "kubernetes.io/h2c")),
    ],
)
def test_the_port_flag_may_declare_an_app_protocol(
    flag: str, parsed: tuple[int, int, str | None, str | None]
) -> None:
    assert proxy_args("--port", flag).port == [parsed]


@pytest.mark.parametrize(
    "flags",
    [("--port", "80/not a name"), ("--detect-timeout", "0"), ("--detect-timeout", "soon")],
    ids=["a bad appProtocol", "no timeout", "not a number"],
)
def test_bad_detection_flags_are_refused(
    flags: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        proxy_args(*flags)
    assert flags[1] in capsys.readouterr().err


def test_the_detection_timeout_defaults_to_the_data_planes() -> None:
    assert proxy_args().detect_timeout is None  # DataPlaneConfig's default applies
    assert proxy_args("--detect-timeout", "0.5").detect_timeout == 0.5


# ---- Sniffer -----------------------------------------------------------------------


class Recorder(asyncio.Protocol):
    """What the connection is handed to: records what it is given."""

    def __init__(self) -> None:
        self.data = b""
        self.made = False
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return False


class FakeTransport:
    def __init__(self) -> None:
        self.protocol: asyncio.BaseProtocol | None = None
        self.reading = True
        self.closed = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        return self.protocol

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True


@dataclass
class Sniffed:
    sniffer: Sniffer
    transport: FakeTransport
    kinds: list[Kind] = field(default_factory=list)
    recorder: Recorder = field(default_factory=Recorder)

    def feed_bytewise(self, data: bytes) -> None:
        for i in range(len(data)):
            assert not self.kinds, f"decided after {i} bytes"
            self.sniffer.data_received(data[i : i + 1])


def sniff(timeout: float = 5.0, **kwargs: object) -> Sniffed:
    loop = asyncio.get_running_loop()
    transport = FakeTransport()
    sniffed: Sniffed

    def take_over(t: asyncio.Transport, kind: Kind) -> asyncio.Protocol:
        sniffed.kinds.append(kind)
        t.set_protocol(sniffed.recorder)
        sniffed.recorder.connection_made(t)
        return sniffed.recorder

    sniffer = Sniffer(loop, timeout, take_over, **kwargs)  # type: ignore[arg-type]
    sniffed = Sniffed(sniffer, transport)
    transport.set_protocol(sniffer)
    sniffer.connection_made(cast(asyncio.Transport, transport))
    return sniffed


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("first", "kind", "decided_by"),
    [
        (b"GET /a HTTP/1.1\r\n", HTTP1, len(b"GET /a HTTP/1.")),
        (PREFACE, HTTP2, len(PREFACE)),
        (b"\x00\x01garbage", OPAQUE, 1),
    ],
    ids=["HTTP/1.1", "HTTP/2", "garbage"],
)
async def test_bytes_arriving_one_at_a_time_are_handed_over_whole(
    first: bytes, kind: Kind, decided_by: int
) -> None:
    s = sniff()
    s.feed_bytewise(first[: decided_by - 1])  # each one short of deciding
    s.sniffer.data_received(first[decided_by - 1 :] + b"and the rest")
    assert s.kinds == [kind]
    assert s.transport.protocol is s.recorder
    assert s.recorder.data == first + b"and the rest"  # replayed, nothing lost


@pytest.mark.asyncio
async def test_silence_until_the_timeout_is_opaque() -> None:
    s = sniff(timeout=0.05)
    await asyncio.sleep(0.2)
    assert s.kinds == [OPAQUE]
    assert s.recorder.made and s.recorder.data == b""


@pytest.mark.asyncio
async def test_a_partial_request_line_at_the_timeout_is_opaque_with_its_bytes() -> None:
    s = sniff(timeout=0.05)
    s.sniffer.data_received(b"GET /x HT")
    await asyncio.sleep(0.2)
    assert s.kinds == [OPAQUE]
    assert s.recorder.data == b"GET /x HT"


@pytest.mark.asyncio
async def test_an_end_of_stream_decides_and_is_passed_on() -> None:
    s = sniff()
    s.sniffer.data_received(b"GET")
    assert s.sniffer.eof_received() is False  # what the new protocol said
    assert s.kinds == [OPAQUE]
    assert s.recorder.data == b"GET" and s.recorder.eof


@pytest.mark.asyncio
async def test_a_declared_protocol_is_handed_over_before_any_byte() -> None:
    s = sniff(known=OPAQUE)
    assert s.kinds == [OPAQUE]
    assert s.sniffer.timer is None  # nothing waits for bytes


@pytest.mark.asyncio
async def test_a_sniffer_not_ready_holds_bytes_until_started() -> None:
    s = sniff(ready=False)
    s.sniffer.data_received(b"GET / HTTP/1.1\r\n")
    assert s.kinds == []
    s.sniffer.start(None)
    assert s.kinds == [HTTP1]
    assert s.recorder.data == b"GET / HTTP/1.1\r\n"


@pytest.mark.asyncio
async def test_a_declared_protocol_wins_over_the_bytes() -> None:
    s = sniff(ready=False)
    s.sniffer.data_received(b"GET / HTTP/1.1\r\n")
    s.sniffer.start(OPAQUE)
    assert s.kinds == [OPAQUE]
    assert s.recorder.data == b"GET / HTTP/1.1\r\n"


@pytest.mark.asyncio
async def test_a_sniffer_not_ready_stops_reading_at_the_limit_and_resumes_after() -> None:
    s = sniff(ready=False)
    s.sniffer.data_received(b"x" * MAX_SNIFF)
    assert not s.transport.reading
    s.sniffer.start(None)
    assert s.kinds == [OPAQUE]
    assert s.transport.reading
    assert len(s.recorder.data) == MAX_SNIFF


@pytest.mark.asyncio
async def test_a_timeout_while_not_ready_decides_at_start() -> None:
    s = sniff(timeout=0.05, ready=False)
    await asyncio.sleep(0.2)
    assert s.kinds == []
    s.sniffer.start(None)
    assert s.kinds == [OPAQUE]


# ---- in the proxy --------------------------------------------------------------------

SERVER_FIRST_GREETING = b"220 mail.shop ready\r\n"


class Greeter(asyncio.Protocol):
    """A server that speaks first, then echoes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(SERVER_FIRST_GREETING)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@dataclass
class Backend:
    """One workload with an HTTP/1.1 echo app, a gRPC (h2c) app and a greeter, behind
    its proxy; a client proxy with a TcpUpstream to each of its service ports."""

    pki: Pki
    server: DataPlane
    echo: EchoApp
    grpc_port: int
    greeter_port: int
    clients: list[DataPlane] = field(default_factory=list)

    def endpoint(self, port: int) -> Endpoint:
        assert self.server.inbound_address is not None
        return Endpoint(
            "backend-1", "default", "127.0.0.1", self.server.inbound_address[1], port,
            self.pki.identity("default", "backend"),
        )  # fmt: skip

    async def client(
        self, app_protocols: dict[int, str | None], detect_timeout: float = 5.0
    ) -> tuple[DataPlane, dict[int, tuple[str, int]]]:
        """A client proxy with one upstream per service port; the listeners by port."""
        ups = {port: TcpUpstream("backend", None, port, "127.0.0.1", 0) for port in app_protocols}
        client = DataPlane(
            fast_config(upstreams=tuple(ups.values()), detect_timeout=detect_timeout),
            on_interest=lambda key: None,
        )
        self.clients.append(client)
        await client.start()
        client.set_credentials(self.pki.issue("default", "web"))
        ports = tuple(
            ServicePort(port, f"p{port}", proto, (self.endpoint(port),))
            for port, proto in app_protocols.items()
        )
        client.apply_snapshot(
            Snapshot(
                proxy=ProxySelf(
                    "web-1", "default", "web", self.pki.identity("default", "web"),
                    services=("web",),
                ),
                trust_domain=self.pki.trust_domain, trust_bundle="",
                services=(ServiceView("backend", "default", ports),),
            )
        )  # fmt: skip
        return client, {port: client.tcp_addresses[up] for port, up in ups.items()}


HTTP_PORT, GRPC_PORT, MAIL_PORT = 8080, 9090, 2525


def backend_snapshot(b: Backend, mode: str = "STRICT", only: int | None = None) -> Snapshot:
    ports = (
        LocalPort(HTTP_PORT, b.echo.port, "http"),
        LocalPort(GRPC_PORT, b.grpc_port, "grpc", "grpc"),  # h2c to the app needs saying
        LocalPort(MAIL_PORT, b.greeter_port, "mail"),
    )
    return Snapshot(
        proxy=ProxySelf(
            "backend-1", "default", "backend", b.pki.identity("default", "backend"),
            ports=tuple(p for p in ports if only is None or p.port == only),
            services=("backend",),
        ),
        trust_domain=b.pki.trust_domain, trust_bundle="",
        security=SecurityView(mtls_mode=mode),
    )  # fmt: skip


@pytest_asyncio.fixture
async def backend(pki: Pki) -> AsyncIterator[Backend]:
    loop = asyncio.get_running_loop()
    echo = EchoApp("backend-1")
    await echo.start()
    grpc_srv, grpc_port = grpc_server("backend-1")
    greeter = await loop.create_server(Greeter, "127.0.0.1", 0)
    server = DataPlane(fast_config(detect_timeout=0.3), on_interest=lambda key: None)
    b = Backend(pki, server, echo, grpc_port, greeter.sockets[0].getsockname()[1])
    try:
        await server.start()
        server.set_credentials(pki.issue("default", "backend"))
        server.apply_snapshot(backend_snapshot(b))
        yield b
    finally:
        for client in b.clients:
            await client.close()
        await server.close()
        await echo.close()
        greeter.close()
        await greeter.wait_closed()
        grpc_srv.stop(None)


async def read_greeting(address: tuple[str, int], timeout: float) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    try:
        return await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.transport.abort()


def grpc_unary(address: tuple[str, int], authority: str | None = None) -> bytes:
    options = [("grpc.default_authority", authority)] if authority else []
    with grpc.insecure_channel(f"{address[0]}:{address[1]}", options=options) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Unary")
        return cast(bytes, call(b"abc", timeout=10))


@pytest.mark.asyncio
@pytest.mark.parametrize("app_protocol", [None, "http"], ids=["detected", "declared http"])
async def test_http1_on_an_upstream_goes_to_its_service_whatever_the_host(
    backend: Backend, app_protocol: str | None
) -> None:
    client, listeners = await backend.client({HTTP_PORT: app_protocol})
    host, port = listeners[HTTP_PORT]
    code, out, err = await curl("-H", "Host: localhost:5000", f"http://{host}:{port}/hello")
    assert code == 0, err
    assert b'"instance": "backend-1"' in out and b'"path": "/hello"' in out
    text = client.metrics.render()
    labels = {"direction": "outbound", "dst_service": "backend", "code": "200"}
    assert metric(text, "gossamer_requests_total", **labels) == 1
    assert "gossamer_tcp_open_connections{" not in text  # not carried as opaque


@pytest.mark.asyncio
@pytest.mark.parametrize("app_protocol", [None, "grpc"], ids=["detected", "declared grpc"])
async def test_http2_on_an_upstream_goes_to_its_service(
    backend: Backend, app_protocol: str | None
) -> None:
    client, listeners = await backend.client({GRPC_PORT: app_protocol})
    assert await asyncio.to_thread(grpc_unary, listeners[GRPC_PORT], "localhost:5000") == b"cba"
    labels = {"direction": "outbound", "dst_service": "backend", "grpc_status": "0"}
    assert metric(client.metrics.render(), "gossamer_requests_total", **labels) == 1


@pytest.mark.asyncio
async def test_a_server_speaking_first_on_a_declared_tcp_port_is_not_stalled(
    backend: Backend,
) -> None:
    _, listeners = await backend.client({MAIL_PORT: "tcp"}, detect_timeout=30.0)
    # Detection would wait 30 s for the client's bytes; declared tcp, nothing waits.
    assert await read_greeting(listeners[MAIL_PORT], timeout=5.0) == SERVER_FIRST_GREETING


@pytest.mark.asyncio
async def test_a_server_speaking_first_undeclared_answers_after_the_timeout(
    backend: Backend,
) -> None:
    client, listeners = await backend.client({MAIL_PORT: None}, detect_timeout=0.3)
    assert await read_greeting(listeners[MAIL_PORT], timeout=5.0) == SERVER_FIRST_GREETING
    text = client.metrics.render()
    assert 'gossamer_tcp_open_connections{direction="outbound"' in text


@pytest.mark.asyncio
async def test_opaque_bytes_on_an_undeclared_port_are_carried(backend: Backend) -> None:
    _, listeners = await backend.client({MAIL_PORT: None}, detect_timeout=30.0)
    reader, writer = await asyncio.open_connection(*listeners[MAIL_PORT])
    try:
        writer.write(b"\x00\x01not http\r\n")  # decided at the first byte
        assert await asyncio.wait_for(reader.readline(), 5) == SERVER_FIRST_GREETING
        assert await asyncio.wait_for(reader.readline(), 5) == b"\x00\x01not http\r\n"
    finally:
        writer.transport.abort()


# ---- inbound: PERMISSIVE plaintext, and mTLS without ALPN --------------------------------


@pytest.mark.asyncio
async def test_permissive_plaintext_h2c_is_carried_as_http2(backend: Backend) -> None:
    backend.server.apply_snapshot(backend_snapshot(backend, "PERMISSIVE"))
    inbound = backend.server.inbound_address
    assert inbound is not None
    # The port from :authority, as from Host for HTTP/1.1.
    answer = await asyncio.to_thread(grpc_unary, inbound, f"backend:{GRPC_PORT}")
    assert answer == b"cba"
    labels = {"direction": "inbound", "tls": "false", "grpc_status": "0"}
    assert metric(backend.server.metrics.render(), "gossamer_requests_total", **labels) == 1


@pytest.mark.asyncio
async def test_permissive_plaintext_opaque_goes_to_the_only_port(backend: Backend) -> None:
    backend.server.apply_snapshot(backend_snapshot(backend, "PERMISSIVE", only=MAIL_PORT))
    inbound = backend.server.inbound_address
    assert inbound is not None
    reader, writer = await asyncio.open_connection(*inbound)
    try:
        writer.write(b"\x00binary\n")
        assert await asyncio.wait_for(reader.readline(), 5) == SERVER_FIRST_GREETING
        assert await asyncio.wait_for(reader.readline(), 5) == b"\x00binary\n"
    finally:
        writer.transport.abort()
    # A client that says nothing: after the first-byte timeout, opaque all the same.
    assert await read_greeting(inbound, timeout=5.0) == SERVER_FIRST_GREETING
    labels = {"direction": "inbound", "tls": "false", "flow": "received"}
    assert metric(backend.server.metrics.render(), "gossamer_tcp_bytes_total", **labels) > 0


@pytest.mark.asyncio
async def test_permissive_plaintext_opaque_to_several_ports_is_refused_and_logged(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gossamer.proxy")
    backend.server.apply_snapshot(backend_snapshot(backend, "PERMISSIVE"))
    inbound = backend.server.inbound_address
    assert inbound is not None
    reader, writer = await asyncio.open_connection(*inbound)
    try:
        writer.write(b"\x00binary\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.transport.abort()
    assert "opaque TCP needs a workload with exactly one port" in caplog.text


def no_alpn_context(pki: Pki) -> ssl.SSLContext:
    creds = pki.issue("default", "outsider")
    return client_context(creds.chain_pem, creds.key_pem, creds.bundle_pem)


@pytest.mark.asyncio
async def test_mtls_without_alpn_is_detected(backend: Backend) -> None:
    inbound = backend.server.inbound_address
    assert inbound is not None
    ctx = no_alpn_context(backend.pki)
    # HTTP/1.1 to the echo app's port, as before.
    reader, writer = await asyncio.open_connection(
        *inbound, ssl=ctx, server_hostname=sni_for(HTTP_PORT, "backend-1", "default")
    )
    try:
        writer.write(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 200") and b'"path": "/plain"' in answer
    finally:
        writer.transport.abort()
    # Opaque bytes to the greeter's port: carried, not answered with an HTTP error.
    reader, writer = await asyncio.open_connection(
        *inbound, ssl=ctx, server_hostname=sni_for(MAIL_PORT, "backend-1", "default")
    )
    try:
        writer.write(b"\x00opaque\n")
        assert await asyncio.wait_for(reader.readline(), 5) == SERVER_FIRST_GREETING
        assert await asyncio.wait_for(reader.readline(), 5) == b"\x00opaque\n"
    finally:
        writer.transport.abort()
