"""HTTP/2 abuse against real proxies, frame by frame: empty-DATA floods, WINDOW_UPDATE
floods, rapid reset, too many header fields, and the cap on streams per connection.

A raw client (`RawH2`) writes frames built with hyperframe to a real socket (the
outbound h2c listener, or the inbound over mTLS with ALPN gossamer/h2) and reads every
frame that comes back, so a test sees GOAWAYs and resets as they are sent. The app
behind the proxies is the HTTP/1.1 echo app, which counts the requests that reach it
(or a grpcio server, for large gRPC calls that must not trip a limit). The exact
WINDOW_UPDATE allowance is checked on one in-memory hop (tests/proxy/test_http2.py).
Every loop is bounded in count and time; sockets and proxies close in `finally`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from gossamer.identity.tls import client_context
from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.wire import http2
from gossamer.proxy.wire.limits import MAX_HEADERS, InFlight
from gossamer.proxy.wire.tls import ALPN_H2, sni_for
from tests.proxy.conftest import EchoApp, Pki
from tests.proxy.test_e2e_grpc import SERVICE, grpc_server
from tests.proxy.test_e2e_upgrade import two_proxies
from tests.proxy.test_http2 import REQUEST, RESPONSE, _connected, _turn

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NO_ERROR = 0
PROTOCOL_ERROR = 1
STREAM_CLOSED = 5
REFUSED_STREAM = 7
CANCEL = 8
ENHANCE_YOUR_CALM = 11

Fields = list[tuple[bytes, bytes]]


def request(
    path: bytes = b"/anything", method: bytes = b"GET", *extra: tuple[bytes, bytes]
) -> Fields:
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"echo"),
        (b":path", path),
        *extra,
    ]


def many_fields(n: int) -> list[tuple[bytes, bytes]]:
    return [(b"x-field-%03d" % i, b"v") for i in range(n)]


def headers_frame(
    encoder: hpack.Encoder, stream_id: int, fields: Fields, end_stream: bool = True
) -> bytes:
    """A HEADERS frame (END_HEADERS; END_STREAM unless a body follows), serialized."""
    frame = HeadersFrame(stream_id, encoder.encode(fields))
    frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


class RawH2:
    """An HTTP/2 client that writes the frames it is given and records what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.goaway: tuple[int, int] | None = None  # (error code, last stream id)
        self.resets: dict[int, int] = {}
        self.heads: dict[int, Fields] = {}
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.eof = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        address: tuple[str, int],
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> RawH2:
        reader, writer = await asyncio.open_connection(
            *address, ssl=tls, server_hostname=server_hostname
        )
        client = cls(reader, writer)
        writer.write(PREFACE + SettingsFrame(0).serialize())
        return client

    def headers(self, stream_id: int, fields: Fields, end_stream: bool = True) -> bytes:
        return headers_frame(self.encoder, stream_id, fields, end_stream)

    @staticmethod
    def data(stream_id: int, data: bytes = b"", end_stream: bool = False) -> bytes:
        frame = DataFrame(stream_id, data)
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    @staticmethod
    def rst(stream_id: int, code: int = CANCEL) -> bytes:
        return RstStreamFrame(stream_id, error_code=code).serialize()

    async def send(self, data: bytes) -> bool:
        """Write `data`; False once the proxy has closed the connection."""
        if self.eof.is_set() or self.writer.transport.is_closing():
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        await asyncio.sleep(0)  # let what came back be read
        return not self.eof.is_set()

    async def until(self, done: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait (bounded) until `done()` holds or the connection ends."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            if self.eof.is_set():
                return done()
            await asyncio.sleep(0.005)
        return done()

    async def settled(self, *stream_ids: int, timeout: float = 10.0) -> bool:
        """Wait (bounded) until each stream has ended or been reset."""
        return await self.until(
            lambda: all(i in self.ended or i in self.resets for i in stream_ids), timeout
        )

    async def closed(self, timeout: float = 10.0) -> bool:
        """Wait (bounded) until the proxy has closed the connection."""
        return await self.until(self.eof.is_set, timeout)

    async def get(self, stream_id: int, fields: Fields, timeout: float = 10.0) -> int | None:
        """Send a request without a body; its response status, or None if reset."""
        await self.send(self.headers(stream_id, fields))
        await self.settled(stream_id, timeout=timeout)
        return self.status(stream_id)

    def status(self, stream_id: int) -> int | None:
        for name, value in self.heads.get(stream_id, ()):
            if name == b":status":
                return int(value)
        return None

    async def _read(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(9)
                frame, length = Frame.parse_frame_header(memoryview(head))
                frame.parse_body(memoryview(await self.reader.readexactly(length)))
                self._received(frame)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.eof.set()

    def _received(self, frame: Frame) -> None:
        sid = frame.stream_id
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.writer.write(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, GoAwayFrame):
            self.goaway = (frame.error_code, frame.last_stream_id)
        elif isinstance(frame, RstStreamFrame):
            self.resets[sid] = frame.error_code
        elif isinstance(frame, HeadersFrame):
            fields = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(frame.data, raw=True)]
            if sid in self.heads:
                self.heads[sid] += fields  # trailers
            else:
                self.heads[sid] = fields
            if "END_STREAM" in frame.flags:
                self.ended.add(sid)
        elif isinstance(frame, DataFrame):
            self.bodies.setdefault(sid, bytearray()).extend(frame.data)
            if "END_STREAM" in frame.flags:
                self.ended.add(sid)

    async def close(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        self.writer.transport.abort()


@asynccontextmanager
async def echo_mesh(pki: Pki) -> AsyncIterator[tuple[DataPlane, DataPlane, EchoApp]]:
    """Two proxies (client "web", server "echo-1") in front of the HTTP/1.1 echo app."""
    app = EchoApp("echo-1")
    port = await app.start()
    try:
        async with two_proxies(pki, port) as (client, server):
            yield client, server, app
    finally:
        await app.close()


def inbound_context(pki: Pki) -> ssl.SSLContext:
    creds = pki.issue("default", "web")
    return client_context(
        creds.chain_pem, creds.key_pem, creds.bundle_pem, alpn_protocols=[ALPN_H2]
    )


async def open_to(pki: Pki, client: DataPlane, server: DataPlane, side: str) -> RawH2:
    """A raw connection to the client proxy's outbound h2c port, or (side "inbound")
    straight to the server proxy's inbound over mTLS as a peer proxy would come."""
    if side == "outbound":
        assert client.outbound_address is not None
        return await RawH2.open(client.outbound_address)
    assert server.inbound_address is not None
    return await RawH2.open(
        server.inbound_address,
        inbound_context(pki),
        server_hostname=sni_for(8080, "echo-1", "default"),
    )


# ---- empty DATA frames --------------------------------------------------------------

FLOOD_CHUNK = 1000  # empty DATA frames per write
FLOOD_CHUNKS = 200  # at most 200,000 frames


async def flood_data(raw: RawH2, payload: bytes = b"", reset: bool = False) -> int:
    """Open a stream (and reset it, if `reset`) and send DATA frames with `payload` on
    it until the connection is cut (or FLOOD_CHUNKS writes); how many went out."""
    await raw.send(raw.headers(1, request(b"/anything", b"POST"), end_stream=False))
    if reset:
        await raw.send(raw.rst(1))
    chunk = RawH2.data(1, payload) * FLOOD_CHUNK
    sent = 0
    for _ in range(FLOOD_CHUNKS):
        if raw.goaway is not None or not await raw.send(chunk):
            break
        sent += FLOOD_CHUNK
    return sent


FLOODS = [
    ("empty DATA on the outbound h2c port", "outbound", b"", False),
    ("empty DATA on the mtls inbound", "inbound", b"", False),
    # Each makes h2 answer RST_STREAM, and no event.
    ("one-byte DATA on a stream already reset", "outbound", b"x", True),
]


@pytest.mark.parametrize(
    ("side", "payload", "reset"), [f[1:] for f in FLOODS], ids=[f[0] for f in FLOODS]
)
@pytest.mark.asyncio
async def test_a_flood_of_data_frames_that_carry_nothing_gets_goaway_and_the_connection_closes(
    pki: Pki, side: str, payload: bytes, reset: bool, h2_codec: str
) -> None:
    async with echo_mesh(pki) as (client, server, _):
        raw = await open_to(pki, client, server, side)
        try:
            sent = await flood_data(raw, payload, reset)
            await raw.closed()
            assert raw.goaway is not None, f"no GOAWAY after {sent} DATA frames"
            assert raw.eof.is_set()
            # nghttp2_session (decision 0102) ends the connection at the first DATA
            # after the client's own RST_STREAM, with STREAM_CLOSED (RFC 9113 5.1).
            session = reset and h2_codec == "session"
            codes = (ENHANCE_YOUR_CALM, PROTOCOL_ERROR) + ((STREAM_CLOSED,) if session else ())
            assert raw.goaway[0] in codes
            assert sent < FLOOD_CHUNK * FLOOD_CHUNKS  # cut off, not sent to the end
        finally:
            await raw.close()


@pytest.mark.asyncio
async def test_one_empty_data_frame_between_others_is_allowed(pki: Pki) -> None:
    """An empty DATA frame now and then (some clients flush one) is not a flood."""
    async with echo_mesh(pki) as (client, server, _):
        raw = await open_to(pki, client, server, "outbound")
        try:
            await raw.send(raw.headers(1, request(b"/anything", b"POST"), end_stream=False))
            for _ in range(3):
                await raw.send(raw.data(1) + raw.data(1, b"abc"))
            await raw.send(raw.data(1, end_stream=True))
            assert await raw.settled(1)
            assert raw.status(1) == 200 and raw.goaway is None
            assert b'"body_length": 9' in raw.bodies[1]
        finally:
            await raw.close()


def _flood_in_a_thread(address: tuple[str, int], stop: threading.Event) -> Iterator[int]:
    """Empty DATA frames from a plain blocking socket, off the proxies' loop, until
    the proxy cuts it or `stop`; yields once per chunk written (bounded)."""
    with socket.create_connection(address, timeout=5) as sock:
        encoder = hpack.Encoder()
        head = HeadersFrame(1, encoder.encode(request(b"/anything", b"POST")))
        head.flags.add("END_HEADERS")
        sock.sendall(PREFACE + SettingsFrame(0).serialize() + head.serialize())
        chunk = RawH2.data(1) * FLOOD_CHUNK
        for _ in range(FLOOD_CHUNKS * 5):
            if stop.is_set():
                return
            try:
                sock.sendall(chunk)
            except OSError:
                return
            yield FLOOD_CHUNK


@pytest.mark.asyncio
async def test_a_request_on_another_connection_is_answered_during_a_flood(pki: Pki) -> None:
    """Four connections flood empty DATA frames from threads while a request is made
    on a fifth: it is answered, and every flooding connection is cut."""
    async with echo_mesh(pki) as (client, _, _):
        assert client.outbound_address is not None
        address = client.outbound_address
        stop = threading.Event()
        sent = [0] * 4

        def flood(i: int) -> None:
            for n in _flood_in_a_thread(address, stop):
                sent[i] += n

        threads = [asyncio.create_task(asyncio.to_thread(flood, i)) for i in range(4)]
        raw = None
        try:
            await asyncio.sleep(0.2)  # the floods are under way
            raw = await RawH2.open(address)
            status = await raw.get(1, request(b"/anything"), timeout=20)
            assert status == 200
            # The floods end because the proxy cut them, not because `stop` was set.
            done, _ = await asyncio.wait(threads, timeout=20)
            assert len(done) == 4, f"floods still running after {sent} frames"
            assert all(n < FLOOD_CHUNK * FLOOD_CHUNKS * 5 for n in sent)
        finally:
            stop.set()
            await asyncio.gather(*threads, return_exceptions=True)
            if raw is not None:
                await raw.close()


# ---- WINDOW_UPDATE frames -----------------------------------------------------------


@pytest.mark.parametrize("stream_id", [0, 1], ids=["on the connection", "on an open stream"])
@pytest.mark.asyncio
async def test_window_updates_beyond_envoys_allowance_get_goaway_enhance_your_calm(
    stream_id: int,
) -> None:
    """Envoy's rule to the frame: after one stream and three DATA frames sent, a client
    may send 5 + 2 x (1 + 10 x 3) = 67 WINDOW_UPDATE frames; the 68th is a flood."""
    hop, client, app = await _connected()
    client.send_headers(1, REQUEST)  # the stream stays open: no END_STREAM
    hop.down.data_received(client.data_to_send())
    await _turn()
    app.receive_data(hop.up_pipe.take())
    app.send_headers(1, RESPONSE)
    for _ in range(3):
        # One read each: DATA frames read together go on as one (http2._coalesce).
        app.send_data(1, b"x" * 100)
        hop.up.data_received(app.data_to_send())
    await _turn()
    received = client.receive_data(hop.down_pipe.take())
    assert sum(isinstance(e, h2.events.DataReceived) for e in received) == 3

    update = WindowUpdateFrame(stream_id, window_increment=1).serialize()
    hop.down.data_received(update * 67)
    await _turn()
    assert not hop.down_pipe.closed
    assert not any(
        isinstance(e, h2.events.ConnectionTerminated)
        for e in client.receive_data(hop.down_pipe.take())
    )
    hop.down.data_received(update)
    assert hop.down_pipe.closed
    ended = [
        e.error_code
        for e in client.receive_data(hop.down_pipe.take())
        if isinstance(e, h2.events.ConnectionTerminated)
    ]
    assert ended == [ENHANCE_YOUR_CALM]
    # Envoy's defaults (Http2ProtocolOptions), which the 67 above assume.
    assert (http2.WINDOW_UPDATE_BASE, http2.WINDOW_UPDATES_PER_DATA_FRAME) == (5, 10)


@pytest.mark.asyncio
async def test_streams_and_their_window_updates_in_one_read_are_not_a_flood() -> None:
    """grpc-core sends, after each request's DATA, a WINDOW_UPDATE on the stream and one
    on the connection; 30 calls on one connection arrive as one read. The streams were
    counted only as their events were handled, after the whole read was parsed, so the
    read's WINDOW_UPDATEs met an allowance of 5 and a grpcio client got GOAWAY."""
    hop, client, _ = await _connected()
    for stream_id in range(1, 61, 2):
        client.send_headers(stream_id, REQUEST)
        client.send_data(stream_id, b"\x00\x00\x00\x00\x05hello", end_stream=True)
        client.increment_flow_control_window(5, stream_id=stream_id)
        client.increment_flow_control_window(5)
    hop.down.data_received(client.data_to_send())  # 60 WINDOW_UPDATEs for 30 streams
    await _turn()
    assert not hop.down_pipe.closed
    assert not any(
        isinstance(e, h2.events.ConnectionTerminated)
        for e in client.receive_data(hop.down_pipe.take())
    )


WINDOW_UPDATE_CHUNK = 1000  # WINDOW_UPDATE frames per write
WINDOW_UPDATE_CHUNKS = 100  # at most 100,000 frames


async def flood_window_updates(raw: RawH2, stream_id: int) -> int:
    """Send WINDOW_UPDATE frames (increment 1) on `stream_id`, opened first unless it is
    0, until the connection is cut (or WINDOW_UPDATE_CHUNKS writes); how many went out."""
    if stream_id:
        await raw.send(raw.headers(stream_id, request(b"/anything", b"POST"), end_stream=False))
    chunk = WindowUpdateFrame(stream_id, window_increment=1).serialize() * WINDOW_UPDATE_CHUNK
    sent = 0
    for _ in range(WINDOW_UPDATE_CHUNKS):
        if raw.goaway is not None or not await raw.send(chunk):
            break
        sent += WINDOW_UPDATE_CHUNK
    return sent


@pytest.mark.parametrize("stream_id", [0, 1], ids=["on the connection", "on an open stream"])
@pytest.mark.parametrize("side", ["outbound", "inbound"], ids=["outbound h2c", "mtls inbound"])
@pytest.mark.asyncio
async def test_a_flood_of_window_updates_gets_goaway_and_the_connection_closes(
    pki: Pki, side: str, stream_id: int
) -> None:
    """Each WINDOW_UPDATE on the connection made the proxy look at every open stream,
    and nothing limited them."""
    async with echo_mesh(pki) as (client, server, _):
        raw = await open_to(pki, client, server, side)
        try:
            sent = await flood_window_updates(raw, stream_id)
            await raw.closed()
            assert raw.goaway is not None, f"no GOAWAY after {sent} WINDOW_UPDATE frames"
            assert raw.goaway[0] == ENHANCE_YOUR_CALM
            assert raw.eof.is_set()
            assert sent < WINDOW_UPDATE_CHUNK * WINDOW_UPDATE_CHUNKS
        finally:
            await raw.close()


def window_update_floods(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the proxies logged about WINDOW_UPDATE floods, on any of their connections:
    the client's, the link between them, and the one to the app."""
    return [r.getMessage() for r in caplog.records if "WINDOW_UPDATE" in r.getMessage()]


async def eager_exchange(
    address: tuple[str, int], streams: int, body: bytes, timeout: float = 60.0
) -> tuple[dict[int, bytes], int | None]:
    """POST `body` to /stream (echoed back as it arrives) on `streams` streams at once,
    with an h2 client that sends as many WINDOW_UPDATE frames as an honest one may: one
    for the connection and one for each stream as it opens (to widen their windows),
    then for every DATA frame received one for its stream and one for the connection.
    What came back on each stream, and the GOAWAY error code if there was one."""
    reader, writer = await asyncio.open_connection(*address)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(1 << 20)
    to_send: dict[int, memoryview] = {}
    received: dict[int, bytearray] = {}
    for _ in range(streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, request(b"/stream", b"POST"))
        conn.increment_flow_control_window(1 << 20, sid)
        to_send[sid] = memoryview(body)
        received[sid] = bytearray()
    ended: set[int] = set()
    goaway = None
    deadline = time.monotonic() + timeout
    try:
        while len(ended) < streams and goaway is None and time.monotonic() < deadline:
            for sid, rest in list(to_send.items()):
                while rest:
                    window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    if window <= 0:
                        break
                    piece, rest = rest[:window], rest[window:]
                    conn.send_data(sid, piece, end_stream=not rest)
                to_send[sid] = rest
                if not rest:
                    del to_send[sid]
            writer.write(conn.data_to_send())
            await writer.drain()
            data = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived) and event.stream_id:
                    received[event.stream_id] += event.data or b""
                    size = event.flow_controlled_length or 0
                    if size:
                        conn.increment_flow_control_window(size)
                        # Not on a stream that a later frame of this read ended.
                        with suppress(h2.exceptions.StreamClosedError):
                            conn.increment_flow_control_window(size, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended.add(event.stream_id or 0)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event.error_code
    finally:
        writer.transport.abort()
    return {sid: bytes(data) for sid, data in received.items()}, goaway


@pytest.mark.asyncio
async def test_large_bodies_both_ways_with_eager_window_updates_never_trip_the_limit(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Two 4 MiB uploads echoed back at once through both proxies, by a client that
    returns credit for every DATA frame: neither its connection nor the link between
    the proxies (whose ends send each other WINDOW_UPDATEs both ways) is cut."""
    caplog.set_level(logging.WARNING, logger="gossamer.proxy")
    body = bytes(range(256)) * (4 * 4096)
    async with echo_mesh(pki) as (client, _, _):
        assert client.outbound_address is not None
        received, goaway = await eager_exchange(client.outbound_address, 2, body)
    assert goaway is None
    assert received == {1: body, 3: body}
    assert window_update_floods(caplog) == []


def large_grpc_calls(address: tuple[str, int]) -> tuple[bool, list[int]]:
    """An 8 MiB unary call answered with 8 MiB, and a bidi stream of 64 x 128 KiB
    messages each way, on one channel."""
    options = [
        ("grpc.default_authority", "echo"),
        ("grpc.max_receive_message_length", 16 << 20),
        ("grpc.max_send_message_length", 16 << 20),
    ]
    big = bytes(range(256)) * (8 * 4096)
    with grpc.insecure_channel(f"{address[0]}:{address[1]}", options=options) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        whole = unary(big, timeout=30) == big[::-1]
        bidi = channel.stream_stream(f"/{SERVICE}/Bidi")
        messages = (bytes((i,)) * (128 * 1024) for i in range(64))
        sizes = [len(m) for m in bidi(messages, timeout=30)]
    return whole, sizes


@pytest.mark.asyncio
async def test_multi_megabyte_grpc_calls_both_ways_never_trip_the_window_update_limit(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """grpcio's own flow control (BDP probing, its WINDOW_UPDATEs) against the proxies,
    client to proxy, proxy to proxy, and proxy to a grpcio server as its client."""
    caplog.set_level(logging.WARNING, logger="gossamer.proxy")
    server, app_port = grpc_server()
    try:
        async with two_proxies(pki, app_port, "grpc") as (client, _):
            assert client.outbound_address is not None
            whole, sizes = await asyncio.wait_for(
                asyncio.to_thread(large_grpc_calls, client.outbound_address), 90
            )
    finally:
        server.stop(None)
    assert whole
    assert sizes == [128 * 1024] * 64
    assert window_update_floods(caplog) == []


# ---- rapid reset --------------------------------------------------------------------

RESET_BATCHES = 15
RESET_BATCH = 20


@pytest.mark.parametrize("side", ["outbound", "inbound"], ids=["outbound h2c", "mtls inbound"])
@pytest.mark.asyncio
async def test_rapid_reset_gets_goaway_and_few_cancelled_requests_reach_the_app(
    pki: Pki, side: str
) -> None:
    """Streams opened and reset 50 ms later, below the control-frame limit (300 resets
    in about a second), the way CVE-2023-44487 is exploited; the client ignores the
    GOAWAY and goes on, as an attacker would."""
    async with echo_mesh(pki) as (client, server, app):
        raw = await open_to(pki, client, server, side)
        try:
            stream_id = 1
            sent = 0
            for _ in range(RESET_BATCHES):
                ids = list(range(stream_id, stream_id + 2 * RESET_BATCH, 2))
                stream_id += 2 * RESET_BATCH
                if not await raw.send(b"".join(raw.headers(i, request(b"/hang")) for i in ids)):
                    break
                sent += len(ids)
                await asyncio.sleep(0.05)  # long enough for a request to reach the app
                if not await raw.send(b"".join(raw.rst(i) for i in ids)):
                    break
            await asyncio.sleep(0.2)  # what is still on its way reaches the app
            assert raw.goaway is not None and raw.goaway[0] == ENHANCE_YOUR_CALM, raw.goaway
            total = RESET_BATCHES * RESET_BATCH
            assert app.requests <= total // 3, f"{app.requests} of {sent} reached the app"
        finally:
            await raw.close()


@pytest.mark.asyncio
async def test_streams_answered_before_the_client_resets_them_are_not_premature(
    pki: Pki,
) -> None:
    """Resetting streams after their answers is normal: no GOAWAY."""
    async with echo_mesh(pki) as (client, server, _):
        raw = await open_to(pki, client, server, "outbound")
        try:
            for i in range(1, 2 * 120, 2):
                await raw.send(raw.headers(i, request(b"/stream", b"POST"), end_stream=False))
                await raw.until(lambda: raw.status(i) is not None)  # noqa: B023 (awaited here)
                await raw.send(raw.rst(i))
            assert raw.goaway is None
            assert await raw.get(1001, request()) == 200
        finally:
            await raw.close()


# ---- header fields ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["headers", "trailers"])
@pytest.mark.asyncio
async def test_a_request_with_too_many_header_fields_is_refused(pki: Pki, where: str) -> None:
    async with echo_mesh(pki) as (client, server, app):
        raw = await open_to(pki, client, server, "outbound")
        try:
            if where == "headers":
                await raw.send(raw.headers(1, request(b"/anything", b"GET", *many_fields(150))))
            else:
                await raw.send(raw.headers(1, request(b"/anything", b"POST"), end_stream=False))
                await raw.send(raw.data(1, b"body"))
                await raw.send(raw.headers(1, many_fields(150)))
            assert await raw.settled(1)
            assert raw.status(1) == 431 or raw.resets.get(1) not in (None, NO_ERROR)
            # A stream error only: the connection goes on, and a request within the
            # limit gets through.
            assert raw.goaway is None
            fields = many_fields(MAX_HEADERS - 5)
            assert await raw.get(5, request(b"/anything", b"GET", *fields)) == 200
            assert [r[1] for r in app.received] == ["/anything"]
        finally:
            await raw.close()


# ---- refusals over a workload's cap on requests in flight -----------------------------

OVER_CAP_BATCH = 100
OVER_CAP_BATCHES = 7  # 700 refusals: more than CONTROL_FRAME_LIMIT (500) in a second


@pytest.mark.parametrize("side", ["outbound", "inbound"], ids=["outbound h2c", "mtls inbound"])
@pytest.mark.asyncio
async def test_refusals_over_the_in_flight_cap_that_the_client_reads_are_no_flood(
    pki: Pki, side: str
) -> None:
    """A workload at its cap (decision 0109) refuses each new stream with REFUSED_STREAM.
    A client proxy in front of a busy host sends hundreds a second, and reads every
    refusal: that is load, not a flood, and its link (and the request it holds open)
    must live on. Each refusal costs this end less than a 404 would."""
    async with echo_mesh(pki) as (client, server, app):
        plane = client if side == "outbound" else server
        cap = plane.in_flight = InFlight(1, lambda: "workload default/web")
        raw = await open_to(pki, client, server, side)
        try:
            await raw.send(raw.headers(1, request(b"/hang")))
            assert await raw.until(lambda: app.requests == 1)
            stream_id = 3
            start = time.monotonic()
            for _ in range(OVER_CAP_BATCHES):
                ids = list(range(stream_id, stream_id + 2 * OVER_CAP_BATCH, 2))
                stream_id += 2 * OVER_CAP_BATCH
                assert await raw.send(b"".join(raw.headers(i, request()) for i in ids))
                assert await raw.settled(*ids), (raw.goaway, len(raw.resets), cap.refused)
                assert {raw.resets.get(i) for i in ids} == {REFUSED_STREAM}
            assert time.monotonic() - start < 1.0 or cap.refused < 500  # within one window
            assert cap.refused == OVER_CAP_BATCH * OVER_CAP_BATCHES
            assert raw.goaway is None
            assert 1 not in raw.resets and not raw.eof.is_set()
        finally:
            await raw.close()


@pytest.mark.asyncio
async def test_refusals_a_client_never_reads_are_a_flood(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """The same refusals to a client that reads none of them: they would queue in this
    end's buffers for as long as it keeps sending. Once the socket pushes back (writing
    paused), each refusal counts, and past CONTROL_FRAME_LIMIT the connection is closed
    as a flood. Both ends' socket buffers are made small, so that the push-back comes
    after thousands of refusals, not millions."""
    async with echo_mesh(pki) as (client, _, _):
        cap = client.in_flight = InFlight(1, lambda: "workload default/web")
        assert client.outbound_address is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        # Each batch goes at once: with Nagle's algorithm it would wait for a delayed
        # ACK once the proxy has nothing left to send with one, and the batches pile up
        # into one read of more than the 256 streams a connection may open at once.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(10)
        encoder = hpack.Encoder()

        def headers(stream_id: int, path: bytes) -> bytes:
            return headers_frame(encoder, stream_id, request(path))

        def attack() -> str:
            """Streams, 50 at a time (well under the 256 one read may open), never
            reading; how it ended."""
            stream_id, deadline = 3, time.monotonic() + 30
            while stream_id < 2 * 100_000 and time.monotonic() < deadline:
                batch = b"".join(headers(i, b"/") for i in range(stream_id, stream_id + 100, 2))
                try:
                    sock.sendall(batch)
                except OSError as e:  # reset by the proxy once it gave up
                    return type(e).__name__
                stream_id += 100
                time.sleep(0.005)
            return "still open"

        try:
            await asyncio.to_thread(sock.connect, client.outbound_address)
            sock.sendall(PREFACE + SettingsFrame(0).serialize() + headers(1, b"/hang"))
            for _ in range(200):  # the held request takes the one place
                if cap.count == 1:
                    break
                await asyncio.sleep(0.01)
            [conn] = [c for c in client.h2_connections if not c.client_side]
            served = conn.transport.get_extra_info("socket")
            served.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            with caplog.at_level(logging.WARNING, logger="gossamer"):
                end = await asyncio.to_thread(attack)
        finally:
            sock.close()
        assert end != "still open", f"{cap.refused} refused, and the connection still open"
        assert "while the client read none of the refusals" in caplog.text
        # Not cut off by the rate of refusals: only once they queued.
        assert cap.refused > 1000


# ---- streams per connection ---------------------------------------------------------


@pytest.mark.asyncio
async def test_a_connection_is_drained_after_its_stream_cap(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After MAX_STREAMS_PER_CONNECTION streams the proxy says GOAWAY (NO_ERROR), answers
    what it took, refuses what comes after, and closes. The cap holds on the mesh link
    between the proxies too: the client proxy opens another and no request fails."""
    monkeypatch.setattr(http2, "MAX_STREAMS_PER_CONNECTION", 5)
    async with echo_mesh(pki) as (client, server, app):
        statuses = []
        for _ in range(3):
            raw = await open_to(pki, client, server, "outbound")
            try:
                for i in range(1, 9, 2):
                    statuses.append(await raw.get(i, request()))
                assert raw.goaway is None
                # The fifth stream, and a sixth the proxy reads before answering it.
                await raw.send(raw.headers(9, request()) + raw.headers(11, request()))
                assert await raw.settled(9, 11)
                statuses.append(raw.status(9))
                assert raw.goaway == (NO_ERROR, 9)
                assert raw.resets[11] == REFUSED_STREAM
                assert await raw.closed()
            finally:
                await raw.close()
        assert statuses == [200] * 15
        assert len(app.received) == 15


# ---- a GOAWAY from upstream -----------------------------------------------------------


class GoAwayApp:
    """An h2c app whose first connection says GOAWAY (NO_ERROR, last stream: the first it
    got) once two streams are open, then answers the first; later connections answer
    every stream at once."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection
        import h2.events

        self.connections += 1
        first = self.connections == 1
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        streams: list[int] = []
        said_goaway = False
        try:
            writer.write(conn.data_to_send())
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived) and event.stream_id:
                        streams.append(event.stream_id)
                        if not first:
                            conn.send_headers(event.stream_id, [(":status", "200")], True)
                writer.write(conn.data_to_send())
                if first and len(streams) >= 2 and not said_goaway:
                    said_goaway = True
                    # Made here: h2 itself sends nothing after a GOAWAY of its own.
                    writer.write(GoAwayFrame(0, last_stream_id=streams[0]).serialize())
                    conn.send_headers(streams[0], [(":status", "200")], end_stream=True)
                    writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.transport.abort()


@pytest.mark.asyncio
async def test_streams_an_upstream_took_before_its_goaway_finish(pki: Pki) -> None:
    """The app says GOAWAY with two of the proxy's streams open: the one it took is
    answered, the one it did not is refused: processed nowhere, it reaches the client as
    RST_STREAM REFUSED_STREAM (RFC 9113 8.1.4: the client may send it again; there is
    no other replica to send it to), and the next stream goes on a new connection."""
    app = GoAwayApp()
    port = await app.start()
    try:
        async with two_proxies(pki, port, "http2") as (client, _):
            assert client.outbound_address is not None
            raw = await RawH2.open(client.outbound_address)
            try:
                await raw.send(raw.headers(1, request(b"/")) + raw.headers(3, request(b"/")))
                assert await raw.settled(1, 3)
                answered = 1 if raw.status(1) == 200 else 3
                refused = 4 - answered
                assert raw.status(answered) == 200
                assert raw.status(refused) is None
                assert raw.resets.get(refused) == REFUSED_STREAM
                assert await raw.get(5, request(b"/")) == 200
                assert app.connections == 2
            finally:
                await raw.close()
    finally:
        await app.close()


@pytest.mark.asyncio
async def test_an_upstream_ending_every_answered_stream_with_rst_stream_is_not_a_flood() -> None:
    """nginx ends each stream it answered with RST_STREAM (NO_ERROR, RFC 9113 8.1) when
    the request's end had not been read: from an upstream, at any rate, that is bounded
    by the streams this proxy opened and is no flood (it was counted as one, and a gRPC
    benchmark against nginx lost 6% of its calls to it)."""
    hop, client, app = await _connected()
    answered = 0
    for _ in range(13):  # 650 streams, more than CONTROL_FRAME_LIMIT in well under 1 s
        sids = []
        for _ in range(50):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST, end_stream=True)
            sids.append(sid)
        hop.down.data_received(client.data_to_send())
        await _turn()
        upstream = [
            e.stream_id
            for e in app.receive_data(hop.up_pipe.take())
            if isinstance(e, h2.events.RequestReceived)
        ]
        assert len(upstream) == 50
        for sid in upstream:
            app.send_headers(sid, RESPONSE, end_stream=True)
        resets = b"".join(RstStreamFrame(sid, error_code=0).serialize() for sid in upstream)
        hop.up.data_received(app.data_to_send() + resets)
        await _turn()
        assert not hop.up_pipe.closed, f"the upstream connection was cut after {answered}"
        answered += sum(
            isinstance(e, h2.events.ResponseReceived)
            for e in client.receive_data(hop.down_pipe.take())
        )
    assert answered == 650
    assert http2.CONTROL_FRAME_LIMIT < 650
