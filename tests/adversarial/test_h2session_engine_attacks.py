"""The nghttp2_session engine (decision 0102), now the proxy's default, attacked as a client
and as a peer: what a hostile client or upstream can make the proxy hold, spend or pass
on. (Memory safety under ASan: tests/adversarial/test_h2session_attacks.py and the
differential fuzz below.)

End-to-end tests run real proxies (tests.proxy.test_h2_hardening's echo mesh and raw
hyperframe client); the rest drive `_h2native.Session` beside h2's H2Connection, which
the python engine is, where the RFC says what the answer must be. Every loop is bounded
in count and time.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
from hyperframe.frame import HeadersFrame, SettingsFrame, WindowUpdateFrame

from gossamer.proxy.wire import h2codec, http2
from tests.proxy.conftest import Pki
from tests.proxy.test_h2_hardening import (
    ENHANCE_YOUR_CALM,
    PREFACE,
    PROTOCOL_ERROR,
    RawH2,
    echo_mesh,
    open_to,
    request,
)

N = pytest.importorskip("gossamer.proxy.wire._h2native")


@pytest.fixture
def session_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Proxies started here use the nghttp2_session engine (the default where built)."""
    before = h2codec.active
    h2codec.use("session")
    monkeypatch.setenv(h2codec.ENV, "session")
    try:
        yield "session"
    finally:
        h2codec.active = before


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, sid) + payload


# ---- a client that never reads -----------------------------------------------------------

# What the proxy may hold for one client connection it cannot write to: a generous
# bound (asyncio's high-water mark is 64 KiB; the stream windows are 256 KiB).
WRITE_BUFFER_BOUND = 8 * 1024 * 1024


def _largest_downstream_write_buffer() -> int:
    """The largest write buffer of a client connection (server side) the proxies hold."""
    largest = 0
    for obj in gc.get_objects():
        if (
            isinstance(obj, http2.H2Connection)
            and obj.h2.server_side
            and obj.transport is not None
            and not obj.closed
        ):
            largest = max(largest, obj.transport.get_write_buffer_size())
    return largest


@pytest.mark.xfail(
    strict=True,
    reason="no backpressure from a client connection's socket: H2Connection.pump sends "
    "whatever the client's flow-control windows allow into the transport (write_paused is "
    "recorded, never read), and the upstream is credited as it goes, so a client that "
    "opens its windows and never reads makes the proxy buffer whole responses in memory",
)
@pytest.mark.asyncio
async def test_a_client_that_opens_its_windows_and_never_reads_costs_bounded_memory(
    pki: Pki, session_engine: str
) -> None:
    async with echo_mesh(pki) as (client, _server, _app):
        assert client.outbound_address is not None
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.connect(client.outbound_address)
            encoder = hpack.Encoder()
            out = PREFACE + SettingsFrame(0, settings={4: 2**31 - 1}).serialize()
            out += WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535).serialize()
            for i in range(6):  # 6 x 4 MB asked for, none of it read
                head = HeadersFrame(2 * i + 1, encoder.encode(request(b"/bytes?n=4000000")))
                head.flags.add("END_HEADERS")
                head.flags.add("END_STREAM")
                out += head.serialize()
            sock.sendall(out)
            largest = 0
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and largest <= WRITE_BUFFER_BOUND:
                await asyncio.sleep(0.2)
                largest = max(largest, _largest_downstream_write_buffer())
            assert largest <= WRITE_BUFFER_BOUND, f"{largest} bytes buffered for one client"
        finally:
            sock.close()


# ---- DATA frames that carry only padding --------------------------------------------------


def _padding_only(stream_id: int) -> bytes:
    """A DATA frame, PADDED, whose one byte is the pad length (0): no data at all."""
    return frame(0, 0x8, stream_id, b"\x00")


@pytest.mark.parametrize(
    "codec",
    [
        "python",
        pytest.param(
            "session",
            marks=pytest.mark.xfail(
                strict=True,
                reason="_h2session.c on_begin_frame counts a DATA frame as empty by its "
                "length (hd->length == 0), before the padding is read: a frame of only "
                "padding is not empty to it, so a flood of them is never cut (h2's "
                "engine counts frame.data, the payload without padding)",
            ),
        ),
    ],
)
@pytest.mark.asyncio
async def test_a_flood_of_data_frames_that_carry_only_padding_gets_goaway(
    pki: Pki, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = h2codec.active
    h2codec.use(codec)
    monkeypatch.setenv(h2codec.ENV, codec)
    try:
        async with echo_mesh(pki) as (client, server, _):
            raw = await open_to(pki, client, server, "outbound")
            try:
                await raw.send(raw.headers(1, request(b"/anything", b"POST"), end_stream=False))
                chunk = _padding_only(1) * 1000
                sent = 0
                for _ in range(100):  # at most 100,000 frames
                    if raw.goaway is not None or not await raw.send(chunk):
                        break
                    sent += 1000
                await raw.until(lambda: raw.goaway is not None, timeout=5)
                assert raw.goaway is not None, f"no GOAWAY after {sent} padding-only DATA frames"
                assert raw.goaway[0] in (ENHANCE_YOUR_CALM, PROTOCOL_ERROR)
            finally:
                await raw.close()
    finally:
        h2codec.active = before


# ---- a response's content-length ----------------------------------------------------------

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]


def _h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, validate_inbound_headers=False)
    )
    conn.initiate_connection()
    conn.send_headers(1, GET, end_stream=True)
    conn.data_to_send()
    return conn


def _session_client() -> object:
    conn = N.Session(True)
    conn.initiate_connection()
    conn.send_headers(1, GET, end_stream=True)
    conn.data_to_send()
    return conn


def _response(content_length: bytes, body: bytes) -> bytes:
    block = hpack.Encoder().encode([(b":status", b"200"), (b"content-length", content_length)])
    return frame(4, 0, 0) + frame(1, 0x4, 1, block) + frame(0, 0x1, 1, body)


RESPONSES = [
    ("more DATA than its content-length", b"5", b"x" * 20),
    ("less DATA than its content-length", b"50", b"x" * 5),
]


@pytest.mark.parametrize(
    ("content_length", "body"), [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES]
)
def test_the_h2_engine_refuses_a_response_whose_data_is_not_its_content_length(
    content_length: bytes, body: bytes
) -> None:
    with pytest.raises(h2.exceptions.ProtocolError):
        _h2_client().receive_data(_response(content_length, body))


@pytest.mark.xfail(
    strict=True,
    reason="_h2session.c checks a content-length on requests only (body_length runs "
    "server side): a response whose DATA is longer or shorter than its content-length "
    "is passed on, where RFC 9113 8.1.1 makes it malformed and says an intermediary "
    "must not forward it (h2's engine raises InvalidBodyLengthError)",
)
@pytest.mark.parametrize(
    ("content_length", "body"), [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES]
)
def test_the_session_engine_refuses_a_response_whose_data_is_not_its_content_length(
    content_length: bytes, body: bytes
) -> None:
    conn = _session_client()
    with pytest.raises(h2.exceptions.ProtocolError):
        conn.receive_data(_response(content_length, body))  # type: ignore[attr-defined]


# ---- what held ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_preface_and_a_request_split_byte_by_byte_are_answered(
    pki: Pki, session_engine: str
) -> None:
    async with echo_mesh(pki) as (client, _server, _):
        assert client.outbound_address is not None
        reader, writer = await asyncio.open_connection(*client.outbound_address)
        raw = RawH2(reader, writer)
        try:
            data = PREFACE + SettingsFrame(0).serialize() + raw.headers(1, request())
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
            assert await raw.settled(1)
            assert raw.status(1) == 200
        finally:
            await raw.close()


@pytest.mark.asyncio
async def test_a_header_block_of_endless_continuations_gets_goaway(
    pki: Pki, session_engine: str
) -> None:
    """HEADERS without END_HEADERS and then empty CONTINUATION frames (CVE-2024-27316's
    kind): cut at nghttp2's max_continuations, not read for ever."""
    async with echo_mesh(pki) as (client, server, _):
        raw = await open_to(pki, client, server, "outbound")
        try:
            block = hpack.Encoder().encode(request())
            await raw.send(frame(1, 0x1, 1, block))  # END_STREAM, no END_HEADERS
            sent = 0
            for _ in range(100):  # at most 10,000 frames
                if not await raw.send(frame(9, 0, 1) * 100):
                    break
                sent += 100
            assert await raw.closed()
            assert raw.goaway is not None, f"no GOAWAY after {sent} CONTINUATION frames"
            assert sent < 10_000
        finally:
            await raw.close()


def test_a_hpack_bomb_stops_at_the_header_list_limit() -> None:
    """One 4 KiB field in the dynamic table, then a block of indexes to it: the list is
    counted as it is decoded and refused at 64 KiB, not built to megabytes."""
    conn = N.Session(False, max_header_list=65536)
    conn.initiate_connection()
    big = hpack.Encoder()
    first = big.encode([*GET, (b"x-big", b"v" * 4000)])
    data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, first)
    # Index 62 is the newest dynamic entry (x-big): 2,000 of them would be 8 MB.
    bomb = big.encode(GET) + b"\xbe" * 2000
    data += frame(1, 0x5, 3, bomb)
    with pytest.raises(h2.exceptions.DenialOfServiceError):
        conn.receive_data(data)
