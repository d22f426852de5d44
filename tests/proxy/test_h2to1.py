"""HTTP/2 to an HTTP/1.1 app: an in-process HTTP/2 client (the `h2` package) → client
proxy (h2c) → mTLS (gossamer/h2) → server proxy → HTTP/1.1 app on a port with no
HTTP/2 appProtocol. The client holds its own flow control, so backpressure is seen
from both ends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.forward.exchange import BUFFER_LIMIT
from gossamer.proxy.inbound.h2to1 import H1Exchange
from tests.proxy.conftest import EchoApp, Pki, curl
from tests.proxy.test_e2e_http import admin_get, closed_port, metric
from tests.proxy.test_e2e_upgrade import two_proxies

Headers = list[tuple[bytes, bytes]]


@dataclass
class Answer:
    """What came back on one stream."""

    informational: list[Headers] = field(default_factory=list)
    headers: Headers = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: Headers | None = None
    reset: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Client:
    """HTTP/2 with prior knowledge, flow control in the test's hands: received DATA
    is acknowledged only while `reading`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        # Outbound headers unchecked: a test may send what a hostile client would.
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True, header_encoding=None, validate_outbound_headers=False
            )
        )
        self.answers: dict[int, Answer] = {}
        self.reading = True
        self.unacknowledged: list[tuple[int, int]] = []
        self.sent: dict[int, int] = {}  # DATA bytes sent, by stream
        self.window = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @staticmethod
    @contextlib.asynccontextmanager
    async def connect(proxy: DataPlane) -> AsyncIterator[H2Client]:
        assert proxy.outbound_address is not None
        reader, writer = await asyncio.open_connection(*proxy.outbound_address)
        client = H2Client(reader, writer)
        client.h2.initiate_connection()
        client.flush()
        client.task = asyncio.create_task(client._read())
        try:
            yield client
        finally:
            client.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client.task
            writer.transport.abort()

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    def start(self, path: str, method: str = "GET", *extra: tuple[str, str], end: bool) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "http"), (":authority", "echo"),
                   (":path", path), *extra]  # fmt: skip
        self.h2.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in headers], end)
        self.answers[stream_id] = Answer()
        self.flush()
        return stream_id

    async def send(self, stream_id: int, data: bytes, end: bool = True) -> None:
        """Send `data` as the windows allow, waiting for WINDOW_UPDATEs."""
        while data:
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                self.window.clear()
                await asyncio.wait_for(self.window.wait(), 10)
                continue
            self.h2.send_data(stream_id, data[:window])
            self.sent[stream_id] = self.sent.get(stream_id, 0) + min(window, len(data))
            data = data[window:]
            self.flush()
        if end:
            self.h2.end_stream(stream_id)
            self.flush()

    async def request(
        self, path: str, method: str = "GET", *extra: tuple[str, str], body: bytes = b""
    ) -> Answer:
        stream_id = self.start(path, method, *extra, end=not body)
        if body:
            await self.send(stream_id, body)
        return await self.answer(stream_id)

    async def answer(self, stream_id: int) -> Answer:
        answer = self.answers[stream_id]
        await asyncio.wait_for(answer.ended.wait(), 20)
        return answer

    def reset(self, stream_id: int) -> None:
        self.h2.reset_stream(stream_id)
        self.flush()

    def read_on(self) -> None:
        """Acknowledge what was held back, and everything from now on."""
        self.reading = True
        for stream_id, size in self.unacknowledged:
            self.h2.acknowledge_received_data(size, stream_id)
        self.unacknowledged.clear()
        self.flush()

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.h2.receive_data(data):
                self._event(event)
            self.flush()
        for answer in self.answers.values():
            answer.ended.set()

    def _event(self, event: h2.events.Event) -> None:
        answer = self.answers.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.InformationalResponseReceived) and answer:
            answer.informational.append(list(event.headers or []))
        elif isinstance(event, h2.events.ResponseReceived) and answer:
            answer.headers = list(event.headers or [])
        elif isinstance(event, h2.events.DataReceived) and answer:
            answer.body += event.data or b""
            size = event.flow_controlled_length or 0
            if self.reading:
                self.h2.acknowledge_received_data(size, event.stream_id or 0)
            else:
                self.unacknowledged.append((event.stream_id or 0, size))
        elif isinstance(event, h2.events.TrailersReceived) and answer:
            answer.trailers = list(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded) and answer:
            answer.ended.set()
        elif isinstance(event, h2.events.StreamReset) and answer:
            answer.reset = int(event.error_code or 0)
            answer.ended.set()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window.set()


@contextlib.asynccontextmanager
async def through_mesh(pki: Pki, app_port: int) -> AsyncIterator[tuple[H2Client, DataPlane]]:
    """An HTTP/2 client of the client proxy, and the server proxy of an app that
    speaks only HTTP/1.1 (its port has no appProtocol)."""
    async with contextlib.AsyncExitStack() as stack:
        client, server = await stack.enter_async_context(two_proxies(pki, app_port))
        yield await stack.enter_async_context(H2Client.connect(client)), server


@contextlib.asynccontextmanager
async def echo_app() -> AsyncIterator[EchoApp]:
    app = EchoApp("echo-1")
    await app.start()
    try:
        yield app
    finally:
        await app.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_app(handler: Handler, small_buffers: bool = False) -> AsyncIterator[int]:
    """An HTTP/1.1 "app" that is `handler`, per connection; yields its port.

    `small_buffers`: its sockets' kernel buffers are kept small, so that what the
    kernel holds on its side says little about what the proxy holds."""
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        if small_buffers:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writers.discard(writer)
            writer.transport.abort()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    if small_buffers:  # set before listen, so that accepted sockets have it from the start
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    server = await asyncio.start_server(serve, sock=listener)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in list(writers):
            writer.transport.abort()
        await server.wait_closed()


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def settled(read: Callable[[], int]) -> int:
    """`read()` once it has stopped growing (unchanged for 0.3 s)."""
    last, same = -1, 0
    for _ in range(400):
        value = read()
        same = same + 1 if value == last else 0
        if same >= 6:
            return value
        last = value
        await asyncio.sleep(0.05)
    return read()


def echoed(answer: Answer) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(bytes(answer.body))
    data["headers"] = {k.lower(): v for k, v in data["headers"]}
    return data


# ---- the request, translated -----------------------------------------------------------


@pytest.mark.asyncio
async def test_a_stream_reaches_the_http11_app_as_a_request_line_and_host(pki: Pki) -> None:
    async with echo_app() as app, through_mesh(pki, app.port) as (client, _):
        answer = await client.request(
            "/items?x=1", "GET", ("te", "trailers"), ("cookie", "a=1"), ("cookie", "b=2"),
            ("x-custom", "kept"),
        )  # fmt: skip
    assert answer.status == 200 and answer.reset is None
    seen = echoed(answer)
    assert (seen["method"], seen["path"], seen["version"]) == ("GET", "/items?x=1", "HTTP/1.1")
    headers = seen["headers"]
    assert headers["host"] == "echo"
    assert headers["cookie"] == "a=1; b=2"
    assert headers["x-custom"] == "kept" and headers["x-forwarded-for"] == "127.0.0.1"
    assert not [name for name in headers if name.startswith(":")]
    for dropped in ("te", "gossamer-src-service", "content-length", "transfer-encoding"):
        assert dropped not in headers
    # The response head comes back as HTTP/2 headers, names lower-cased.
    assert answer.header(b"x-instance") == b"echo-1"
    assert answer.header(b"content-length") == str(len(answer.body)).encode()


FRAMINGS = [
    # (case, declares content-length, sends the body after the head went out, expected)
    ("a declared content-length", True, True, "content-length"),
    ("a whole body in the first read", False, False, "content-length"),
    ("a body still coming", False, True, "chunked"),
]


@pytest.mark.parametrize(
    ("declared", "later", "framing"), [c[1:] for c in FRAMINGS], ids=[c[0] for c in FRAMINGS]
)
@pytest.mark.asyncio
async def test_a_request_body_is_framed_by_what_is_known_of_it(
    pki: Pki, declared: bool, later: bool, framing: str
) -> None:
    body = bytes(range(256)) * 1000
    extra = [("content-length", str(len(body)))] if declared else []
    async with echo_app() as app, through_mesh(pki, app.port) as (client, _):
        if later:
            stream_id = client.start("/upload", "POST", *extra, end=False)
            await until(lambda: app.requests == 1, "the app got the request head")
            await client.send(stream_id, body)
        else:
            stream_id = client.start("/upload", "POST", *extra, end=False)
            client.h2.send_data(stream_id, body[:16384])
            client.h2.send_data(stream_id, body[16384:32768], end_stream=True)
            client.flush()
            body = body[:32768]
        answer = await client.answer(stream_id)
    seen = echoed(answer)
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    headers = seen["headers"]
    if framing == "chunked":
        assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    else:
        assert headers["content-length"] == str(len(body)) and "transfer-encoding" not in headers


SPLITTING = [
    ("a space in :path", "GET", "/a HTTP/1.1", "bad :path"),
    ("a space in :method", "GET /admin", "/", "bad :method"),
    ("a control in :path", "GET", "/a\x7f", "bad :path"),
]


@pytest.mark.parametrize(
    ("method", "path", "reason"), [c[1:] for c in SPLITTING], ids=[c[0] for c in SPLITTING]
)
@pytest.mark.asyncio
async def test_a_pseudo_header_that_would_split_the_request_line_is_refused(
    pki: Pki, method: str, path: str, reason: str
) -> None:
    async with echo_app() as app, through_mesh(pki, app.port) as (client, _):
        answer = await client.request(path, method)
    assert answer.status == 400
    assert reason in (answer.header(b"gossamer-error") or b"").decode()
    assert app.requests == 0


@pytest.mark.asyncio
async def test_a_get_without_a_body_carries_no_framing(pki: Pki) -> None:
    async with echo_app() as app, through_mesh(pki, app.port) as (client, _):
        answer = await client.request("/plain")
    headers = echoed(answer)["headers"]
    assert "content-length" not in headers and "transfer-encoding" not in headers


@pytest.mark.asyncio
async def test_expect_100_continue_is_answered_before_the_body(pki: Pki) -> None:
    body = b"z" * 5000
    async with echo_app() as app, through_mesh(pki, app.port) as (client, _):
        stream_id = client.start(
            "/upload", "PUT", ("expect", "100-continue"), ("content-length", "5000"), end=False
        )
        answer = client.answers[stream_id]
        await until(lambda: bool(answer.informational), "a 100 Continue")
        await client.send(stream_id, body)
        await client.answer(stream_id)
    assert answer.informational == [[(b":status", b"100")]]
    seen = echoed(answer)
    assert seen["body_length"] == len(body) and "expect" not in seen["headers"]


# ---- the response, translated ----------------------------------------------------------


async def _trailers_and_hop_by_hop(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    w.write(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\n"
        b"Keep-Alive: timeout=5\r\nX-Hop: 1\r\nX-Kept: 2\r\nTrailer: x-checksum\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"
    )
    await w.drain()
    await reader.read()


@pytest.mark.asyncio
async def test_a_chunked_response_keeps_its_trailers_and_loses_its_hop_by_hop_headers(
    pki: Pki,
) -> None:
    async with raw_app(_trailers_and_hop_by_hop) as port, through_mesh(pki, port) as (client, _):
        answer = await client.request("/")
    assert answer.status == 200 and bytes(answer.body) == b"hello world"
    names = {name for name, _ in answer.headers}
    assert b"x-kept" in names
    for hop in (b"x-hop", b"keep-alive", b"connection", b"transfer-encoding", b"trailer"):
        assert hop not in names
    assert answer.trailers == [(b"x-checksum", b"abc")]


@pytest.mark.asyncio
async def test_head_gets_the_length_and_no_body(pki: Pki) -> None:
    async with echo_app() as app, through_mesh(pki, app.port) as (client, _):
        head = await client.request("/thing", "HEAD")
        get = await client.request("/thing")
    assert head.status == 200 and head.body == b"" and head.reset is None
    assert int(head.header(b"content-length") or 0) > 0
    # The app's connection was not left waiting for a body: the GET went on it.
    assert get.status == 200 and echoed(get)["method"] == "GET" and app.connections == 1


# ---- flow control, both ways -----------------------------------------------------------


@contextlib.asynccontextmanager
async def slow_reader_app(received: list[int], go: asyncio.Event) -> AsyncIterator[int]:
    """Reads a request head, then its body only once `go` is set; answers its size."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await go.wait()
        digest = hashlib.sha256()
        while received[0] < length:
            piece = await reader.read(min(65536, length - received[0]))
            digest.update(piece)
            received[0] += len(piece)
        body = digest.hexdigest().encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await reader.read()

    async with raw_app(handler, small_buffers=True) as port:
        yield port


@pytest.mark.asyncio
async def test_a_large_upload_is_streamed_to_the_app_never_held_whole(pki: Pki) -> None:
    size = 24 * 1024 * 1024
    body = bytes(range(256)) * (size // 256)
    received, go = [0], asyncio.Event()
    async with slow_reader_app(received, go) as port, through_mesh(pki, port) as (client, _):
        stream_id = client.start("/upload", "POST", ("content-length", str(size)), end=False)
        sending = asyncio.create_task(client.send(stream_id, body))
        # While the app reads nothing, the client may only send what the windows and
        # socket buffers on the way hold: it stalls far short of the whole body.
        stalled_at = await settled(lambda: client.sent.get(stream_id, 0))
        assert not sending.done()
        assert stalled_at < size // 2
        go.set()
        await asyncio.wait_for(sending, 30)
        answer = await client.answer(stream_id)
    assert received[0] == size
    assert bytes(answer.body) == hashlib.sha256(body).hexdigest().encode()


@pytest.mark.asyncio
async def test_a_slow_http2_reader_pauses_reading_from_the_app(pki: Pki) -> None:
    size = 24 * 1024 * 1024
    written = [0]

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        block = bytes(range(256)) * 256
        while written[0] < size:
            writer.write(block)
            await writer.drain()  # returns only once the proxy takes the bytes
            written[0] += len(block)
        await reader.read()

    async with (
        raw_app(big, small_buffers=True) as port,
        through_mesh(pki, port) as (client, server),
    ):
        client.reading = False
        stream_id = client.start("/big", end=True)
        stalled_at = await settled(lambda: written[0])
        assert stalled_at < size // 2
        # The server proxy stopped reading from the app, holding at most its limit.
        [exchange] = _bridged(server)
        assert exchange.upstream is not None and exchange.upstream.read_paused
        assert exchange.buffered <= BUFFER_LIMIT + 256 * 1024
        client.read_on()
        answer = await client.answer(stream_id)
    assert len(answer.body) == size
    assert answer.body == (bytes(range(256)) * 256) * (size // 65536)


def _bridged(proxy: DataPlane) -> list[H1Exchange]:
    """The streams `proxy` carries to its app as HTTP/1.1 now."""
    found = []
    for conn in proxy.h2_connections:
        for half in conn.halves.values():
            carrier = half.pair.up.carrier
            if isinstance(carrier, H1Exchange):
                found.append(carrier)
    return found


# ---- connections to the app ------------------------------------------------------------


@pytest.mark.asyncio
async def test_keep_alive_connections_to_the_app_serve_streams_and_http11_alike(
    pki: Pki,
) -> None:
    async with echo_app() as app, through_mesh(pki, app.port) as (client, _):
        for path in ("/one", "/two"):
            assert (await client.request(path)).status == 200
        host, port = _outbound(client)
        code, out, err = await curl("-x", f"http://{host}:{port}", "http://echo/three")
        assert code == 0, err
        assert (await client.request("/four")).status == 200
    assert json.loads(out)["version"] == "HTTP/1.1"
    assert app.requests == 4 and app.connections == 1


def _outbound(client: H2Client) -> tuple[str, int]:
    host, port = client.writer.get_extra_info("peername")[:2]
    return str(host), int(port)


@pytest.mark.asyncio
async def test_a_stream_reset_by_the_client_closes_its_app_connection(pki: Pki) -> None:
    async with echo_app() as app, through_mesh(pki, app.port) as (client, server):
        stream_id = client.start("/hang", end=True)
        await until(lambda: app.requests == 1, "the app got the request")
        assert len(_bridged(server)) == 1
        client.reset(stream_id)
        await until(lambda: not app._writers, "the app's connection closed")
        assert _bridged(server) == []
        # It did not go back to the pool: the next stream opens another.
        assert (await client.request("/after")).status == 200
    assert app.connections == 2


async def _answers_once_per_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answers a connection's first request; closes unanswered at its second, as an app
    whose keep-alive timeout has just passed does."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")


@pytest.mark.asyncio
async def test_a_bodiless_request_on_a_pooled_connection_the_app_closed_is_sent_again(
    pki: Pki,
) -> None:
    async with (
        raw_app(_answers_once_per_connection) as port,
        through_mesh(pki, port) as (client, _),
    ):
        first = await client.request("/a")
        second = await client.request("/b")
    assert (first.status, bytes(first.body)) == (200, b"ok")
    assert (second.status, bytes(second.body)) == (200, b"ok")


async def _answers_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Refuses an upload after its head, without reading the body."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big\n")
    await writer.drain()


@pytest.mark.asyncio
async def test_an_early_answer_leaves_the_clients_connection_usable(pki: Pki) -> None:
    body = b"u" * (3 * 1024 * 1024)
    async with raw_app(_answers_early) as port, through_mesh(pki, port) as (client, _):
        # Two such uploads are more than the connection's window (4 MiB): the second
        # goes through only if the dropped rest of the first was acknowledged.
        answers = [await client.request("/upload", "POST", body=body) for _ in range(2)]
    for answer in answers:
        assert (answer.status, bytes(answer.body)) == (413, b"too big\n")


# ---- errors ------------------------------------------------------------------------------


async def _malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n")
    await writer.drain()
    await reader.read()


async def _closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def _cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
    await writer.drain()


ERRORS: list[tuple[str, Handler | None, int, str]] = [
    ("refused", None, 502, "app not listening on 127.0.0.1:"),
    ("a malformed response", _malformed, 502, "malformed response"),
    ("closed before answering", _closes, 502, "upstream reset: app on 127.0.0.1:"),
]


@pytest.mark.parametrize(
    ("handler", "status", "reason"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
@pytest.mark.asyncio
async def test_an_error_reaching_the_app_is_answered_with_its_reason(
    pki: Pki, handler: Handler | None, status: int, reason: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        port = (
            closed_port() if handler is None else await stack.enter_async_context(raw_app(handler))
        )
        client, _ = await stack.enter_async_context(through_mesh(pki, port))
        answer = await client.request("/")
    assert answer.status == status
    assert reason in (answer.header(b"gossamer-error") or b"").decode()
    assert reason in bytes(answer.body).decode()


@pytest.mark.asyncio
async def test_a_response_cut_short_resets_the_stream(pki: Pki) -> None:
    async with raw_app(_cut_short) as port, through_mesh(pki, port) as (client, _):
        answer = await client.request("/")
        again = await client.request("/again")  # the client's connection goes on
    assert answer.status == 200 and answer.reset is not None
    assert again.status == 200 and again.reset is not None


@pytest.mark.asyncio
async def test_a_grpc_call_to_an_http11_app_gets_a_grpc_error_that_says_why(pki: Pki) -> None:
    async with echo_app() as app, through_mesh(pki, app.port) as (client, server):
        answer = await client.request(
            "/pkg.Service/Method", "POST", ("content-type", "application/grpc"),
            ("te", "trailers"), body=b"\x00\x00\x00\x00\x00",
        )  # fmt: skip
        _, text = await admin_get(server, "/metrics")
    assert answer.status == 200 and answer.reset is None and answer.body == b""
    assert answer.header(b"content-type") == b"application/grpc"
    assert answer.header(b"grpc-status") == b"12"  # UNIMPLEMENTED: not worth a retry
    message = (answer.header(b"grpc-message") or b"").decode()
    assert "appProtocol grpc" in message and "port 8080" in message
    assert answer.header(b"gossamer-error") is not None
    assert app.requests == 0
    assert metric(text.decode(), "gossamer_requests_total", direction="inbound",
                  grpc_status="12") == 1  # fmt: skip


@pytest.mark.asyncio
async def test_a_stream_to_an_http11_app_is_counted_as_an_inbound_request(pki: Pki) -> None:
    async with echo_app() as app, through_mesh(pki, app.port) as (client, server):
        assert (await client.request("/counted")).status == 200
        _, text = await admin_get(server, "/metrics")
    requests = metric(
        text.decode(), "gossamer_requests_total", direction="inbound", code="200",
        dst_service="echo", tls="true",
    )  # fmt: skip
    assert requests == 1


# ---- the response timeout ----------------------------------------------------------------


async def _early_hints_then_nothing(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
    await w.drain()
    await reader.read()  # and never the final answer


@pytest.mark.asyncio
async def test_an_app_that_sends_only_early_hints_times_out(pki: Pki) -> None:
    """The 103 goes on to the HTTP/2 client (RFC 9110 15.2) and is no answer: the
    response timeout still runs, and the stream is answered 504, as over HTTP/1.1."""
    async with (
        raw_app(_early_hints_then_nothing) as port,
        through_mesh(pki, port) as (
            client,
            server,
        ),
    ):
        server.config.response_timeout = 0.5
        answer = await client.request("/")
        assert [dict(h).get(b":status") for h in answer.informational] == [b"103"]
        assert answer.status == 504
        assert b"sent no response" in (answer.header(b"gossamer-error") or b"")
        assert all(not app.carried for app in server._apps.values())
