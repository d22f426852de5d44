"""proxy/wire/http2.py without sockets: header checks, batched writes, END_STREAM on DATA.

One `H2Connection` pair (a downstream server end and an upstream client end joined
by `StreamPair`s, as the outbound and inbound sides join them) sits between an `h2`
client and an `h2` server, over in-memory transports.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import hpack
import pytest

from gossamer.proxy.wire import http2
from gossamer.proxy.wire.http2 import (
    REQUEST_PSEUDO,
    RESPONSE_PSEUDO,
    TRAILER_PSEUDO,
    H2Connection,
    Headers,
    StreamPair,
    forwardable,
    malformed,
)
from tests.proxy.conftest import Pki
from tests.proxy.test_e2e_grpc import PREFACE, SETTINGS
from tests.proxy.test_e2e_upgrade import two_proxies

REQUEST: Headers = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"echo"),
    (b":path", b"/pkg.Echo/Unary"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
RESPONSE: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def _with(headers: Headers, *extra: tuple[bytes, bytes]) -> Headers:
    return [*headers, *extra]


def _without(headers: Headers, name: bytes) -> Headers:
    return [(n, v) for n, v in headers if n != name]


GOOD = [
    ("a gRPC request", REQUEST, REQUEST_PSEUDO),
    (
        "a request naming its authority by host",
        _with(_without(REQUEST, b":authority"), (b"host", b"echo")),
        REQUEST_PSEUDO,
    ),
    ("a request whose host matches :authority", _with(REQUEST, (b"host", b"echo")), REQUEST_PSEUDO),
    (
        "a CONNECT with only an authority",
        [(b":method", b"CONNECT"), (b":authority", b"db:5432")],
        REQUEST_PSEUDO,
    ),
    (
        "an extended CONNECT",
        [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":path", b"/chat"),
            (b":authority", b"echo"),
        ],
        REQUEST_PSEUDO,
    ),
    ("a response", RESPONSE, RESPONSE_PSEUDO),
    ("trailers", [(b"grpc-status", b"0"), (b"grpc-message", b"")], TRAILER_PSEUDO),
    ("a value with inner spaces", _with(REQUEST, (b"x-note", b"a b\tc")), REQUEST_PSEUDO),
]

BAD = [
    ("an uppercase name", _with(REQUEST, (b"X-Upper", b"1")), REQUEST_PSEUDO, "invalid field name"),
    (
        "a name with a colon inside",
        _with(REQUEST, (b"x:y", b"1")),
        REQUEST_PSEUDO,
        "invalid field name",
    ),
    ("an empty name", _with(REQUEST, (b"", b"1")), REQUEST_PSEUDO, "invalid field name"),
    ("a name with a space", _with(REQUEST, (b"x y", b"1")), REQUEST_PSEUDO, "invalid field name"),
    (
        "a connection header",
        _with(REQUEST, (b"connection", b"close")),
        REQUEST_PSEUDO,
        "connection-specific",
    ),
    (
        "transfer-encoding",
        _with(REQUEST, (b"transfer-encoding", b"chunked")),
        REQUEST_PSEUDO,
        "connection-specific",
    ),
    (
        "te other than trailers",
        _with(_without(REQUEST, b"te"), (b"te", b"gzip")),
        REQUEST_PSEUDO,
        "te:",
    ),
    (
        "a pseudo-header after a regular field",
        _with(REQUEST, (b":path", b"/again")),
        REQUEST_PSEUDO,
        "after a regular field",
    ),
    ("a repeated :path", [REQUEST[3], *REQUEST], REQUEST_PSEUDO, "repeated"),
    ("an unknown pseudo-header", [(b":custom", b"1"), *REQUEST], REQUEST_PSEUDO, "unexpected"),
    (":status in a request", [(b":status", b"200"), *REQUEST], REQUEST_PSEUDO, "unexpected"),
    (":path in a response", [*RESPONSE[:1], (b":path", b"/")], RESPONSE_PSEUDO, "unexpected"),
    ("a pseudo-header in trailers", [(b":status", b"200")], TRAILER_PSEUDO, "unexpected"),
    ("no :method", _without(REQUEST, b":method"), REQUEST_PSEUDO, "no :method"),
    ("no :path", _without(REQUEST, b":path"), REQUEST_PSEUDO, "no :scheme or no :path"),
    ("no :scheme", _without(REQUEST, b":scheme"), REQUEST_PSEUDO, "no :scheme or no :path"),
    (
        "an empty :path",
        [(n, b"" if n == b":path" else v) for n, v in REQUEST],
        REQUEST_PSEUDO,
        "empty :path",
    ),
    (
        "a CONNECT with a :path",
        [(b":method", b"CONNECT"), (b":authority", b"db:5432"), (b":path", b"/")],
        REQUEST_PSEUDO,
        "CONNECT with",
    ),
    (
        ":protocol without CONNECT",
        [(b":protocol", b"websocket"), *REQUEST],
        REQUEST_PSEUDO,
        ":protocol without CONNECT",
    ),
    (
        "neither :authority nor host",
        _without(REQUEST, b":authority"),
        REQUEST_PSEUDO,
        "neither :authority nor host",
    ),
    (
        "two host fields",
        _with(REQUEST, (b"host", b"echo"), (b"host", b"echo")),
        REQUEST_PSEUDO,
        "more than one host",
    ),
    ("a host unlike :authority", _with(REQUEST, (b"host", b"other")), REQUEST_PSEUDO, "differ"),
    ("a response without :status", RESPONSE[1:], RESPONSE_PSEUDO, "no :status"),
    ("a NUL in a value", _with(REQUEST, (b"x-v", b"a\x00b")), REQUEST_PSEUDO, "invalid characters"),
    (
        "a CR LF in a value",
        _with(REQUEST, (b"x-v", b"a\r\nx-injected: 1")),
        REQUEST_PSEUDO,
        "invalid characters",
    ),
    ("a value with a leading space", _with(REQUEST, (b"x-v", b" a")), REQUEST_PSEUDO, "whitespace"),
    ("a value with a trailing tab", _with(REQUEST, (b"x-v", b"a\t")), REQUEST_PSEUDO, "whitespace"),
    (
        "a bad pseudo-header value",
        [(n, b"/a\nb" if n == b":path" else v) for n, v in REQUEST],
        REQUEST_PSEUDO,
        "invalid characters",
    ),
]


@pytest.mark.parametrize(("headers", "pseudo"), [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_a_well_formed_header_block_passes(headers: Headers, pseudo: frozenset[bytes]) -> None:
    assert malformed(headers, pseudo) is None


@pytest.mark.parametrize(
    ("headers", "pseudo", "reason"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_a_malformed_header_block_is_refused_with_its_reason(
    headers: Headers, pseudo: frozenset[bytes], reason: str
) -> None:
    found = malformed(headers, pseudo)
    assert found is not None and reason in found, found


def test_a_bad_block_is_refused_after_good_ones_filled_the_cache_of_checked_fields() -> None:
    """Names and values found good are remembered (http2._GOOD_NAMES/_GOOD_VALUES): a
    bad one is never among them, what is remembered is bounded, and each BAD block is
    still refused once every GOOD block and thousands of fresh fields were seen."""
    for _, headers, pseudo in GOOD:
        assert malformed(headers, pseudo) is None
    for i in range(3 * http2._GOOD_MAX):
        assert malformed([*REQUEST, (b"x-%d" % i, b"v%d" % i)], REQUEST_PSEUDO) is None
    assert len(http2._GOOD_NAMES) <= http2._GOOD_MAX
    assert len(http2._GOOD_VALUES) <= http2._GOOD_MAX
    assert all(len(v) <= http2._GOOD_VALUE_LENGTH for v in http2._GOOD_VALUES)
    for _, headers, pseudo, reason in BAD:
        found = malformed(headers, pseudo)
        assert found is not None and reason in found, found


def test_the_checks_refuse_what_h2s_own_validation_refuses() -> None:
    """Every BAD block is one h2 would refuse as well (so nothing got looser)."""
    from h2.exceptions import ProtocolError
    from h2.utilities import HeaderValidationFlags, validate_headers

    for name, headers, pseudo, _ in BAD:
        flags = HeaderValidationFlags(
            is_client=pseudo is not REQUEST_PSEUDO,
            is_trailer=pseudo is TRAILER_PSEUDO,
            is_response_header=pseudo is RESPONSE_PSEUDO,
            is_push_promise=False,
        )
        with pytest.raises(ProtocolError):
            list(validate_headers(headers, flags))
            pytest.fail(f"h2 accepts {name}")


# ---- one hop, in memory -------------------------------------------------------------


class Pipe(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def take(self) -> bytes:
        data = b"".join(self.writes)
        self.writes.clear()
        return data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0  # what is written is the test's to take at once


class Hop:
    """Streams from `down` are carried to `up`, unrouted."""

    def __init__(self) -> None:
        self.down = H2Connection(client_side=False, handler=self, name="client")
        self.up = H2Connection(client_side=True, name="app")
        self.down_pipe, self.up_pipe = Pipe(), Pipe()
        self.down.connection_made(self.down_pipe)
        self.up.connection_made(self.up_pipe)

    def new_stream(self, conn: H2Connection, stream_id: int, headers: Headers) -> None:
        StreamPair(conn, stream_id, 0.0).attach(self.up, forwardable(headers))


def _peer(client_side: bool) -> h2.connection.H2Connection:
    # Sending as written, so that a test can send what a careless peer would.
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    return conn


async def _turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def _connected() -> tuple[Hop, h2.connection.H2Connection, h2.connection.H2Connection]:
    hop, client, app = Hop(), _peer(True), _peer(False)
    hop.down.data_received(client.data_to_send())
    await _turn()
    client.receive_data(hop.down_pipe.take())
    app.receive_data(hop.up_pipe.take())
    hop.up.data_received(app.data_to_send())
    hop.down.data_received(client.data_to_send())
    await _turn()
    app.receive_data(hop.up_pipe.take())
    client.receive_data(hop.down_pipe.take())
    return hop, client, app


@pytest.mark.asyncio
async def test_many_streams_read_at_once_leave_in_one_write_per_connection() -> None:
    hop, client, app = await _connected()
    for _ in range(20):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, REQUEST)
        client.send_data(sid, b"\x00\x00\x00\x00\x01x", end_stream=True)
    hop.down.data_received(client.data_to_send())
    # Written when the read is handled, not a turn later, and once for all 20.
    assert len(hop.up_pipe.writes) == 1
    await _turn()
    assert len(hop.up_pipe.writes) == 1
    ended = [
        e for e in app.receive_data(hop.up_pipe.take()) if isinstance(e, h2.events.StreamEnded)
    ]
    assert len(ended) == 20


@pytest.mark.asyncio
async def test_the_end_of_a_request_rides_on_its_last_data_frame() -> None:
    hop, client, app = await _connected()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST)
    client.send_data(sid, b"\x00\x00\x00\x00\x01x", end_stream=True)
    hop.down.data_received(client.data_to_send())
    await _turn()
    events = app.receive_data(hop.up_pipe.take())
    kinds = [type(e).__name__ for e in events]
    # HEADERS, then one DATA frame with END_STREAM: no empty DATA frame for the end.
    assert kinds == ["RequestReceived", "DataReceived", "StreamEnded"]
    data = next(e for e in events if isinstance(e, h2.events.DataReceived))
    assert data.stream_ended is not None

    # The answer comes back whole, trailers as trailers.
    app.send_headers(1, RESPONSE)
    app.send_data(1, b"\x00\x00\x00\x00\x01y")
    app.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    hop.up.data_received(app.data_to_send())
    await _turn()
    events = client.receive_data(hop.down_pipe.take())
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert [list(t.headers or []) for t in trailers] == [[(b"grpc-status", b"0")]]
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


async def _one_good_call(hop: Any, client: Any, app: Any) -> int:
    """Another call on the same connections, answered 200: the status the client got."""
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST, end_stream=True)
    hop.down.data_received(client.data_to_send())
    await _turn()
    got = app.receive_data(hop.up_pipe.take())
    (request,) = [e for e in got if isinstance(e, h2.events.RequestReceived)]
    app.send_headers(request.stream_id, RESPONSE, end_stream=True)
    hop.up.data_received(app.data_to_send())
    await _turn()
    to_client = client.receive_data(hop.down_pipe.take())
    statuses = [
        int(dict(e.headers)[b":status"])
        for e in to_client
        if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid
    ]
    assert len(statuses) == 1, to_client
    return statuses[0]


@pytest.mark.asyncio
async def test_a_malformed_response_from_the_app_resets_its_stream_not_the_connection() -> None:
    """RFC 9113 8.1.1: a malformed response is a stream error. The upstream connection
    (between proxies, a link many callers share) goes on: the stream is reset
    PROTOCOL_ERROR, its client answered 502, and the next call on both connections is
    answered."""
    hop, client, app = await _connected()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST, end_stream=True)
    hop.down.data_received(client.data_to_send())
    await _turn()
    app.receive_data(hop.up_pipe.take())
    app.send_headers(1, [*RESPONSE, (b"connection", b"close")])
    hop.up.data_received(app.data_to_send())
    await _turn()
    events = app.receive_data(hop.up_pipe.take())
    resets = [(e.stream_id, e.error_code) for e in events if isinstance(e, h2.events.StreamReset)]
    assert resets == [(1, h2.errors.ErrorCodes.PROTOCOL_ERROR)]
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    assert not hop.up_pipe.closed
    to_client = client.receive_data(hop.down_pipe.take())
    (answer,) = [e for e in to_client if isinstance(e, h2.events.ResponseReceived)]
    headers = dict(answer.headers or [])
    assert headers[b":status"] == b"502"
    assert b"malformed header block" in headers[b"gossamer-error"]
    assert await _one_good_call(hop, client, app) == 200


@pytest.mark.asyncio
async def test_a_client_that_does_not_read_holds_the_answer_upstream_not_in_the_proxy() -> None:
    # While the client's transport is paused (its buffer full: the client is not
    # reading), DATA for it stays queued and unacknowledged, so the app stops at its
    # window; once the transport drains it goes on.
    hop, client, app = await _connected()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST, end_stream=True)
    hop.down.data_received(client.data_to_send())
    await _turn()
    app.receive_data(hop.up_pipe.take())
    hop.down.pause_writing()
    app.send_headers(1, RESPONSE)
    for last in (False, False, False, True):
        app.send_data(1, b"x" * 15_000, end_stream=last)
    hop.up.data_received(app.data_to_send())
    await _turn()
    to_client = client.receive_data(hop.down_pipe.take())
    assert not any(isinstance(e, h2.events.DataReceived) for e in to_client)
    held = hop.down.halves[sid].pending  # queued, so not yet acknowledged to the app
    assert sum(len(data) for data, _ in held) == 60_000  # type: ignore[arg-type]
    hop.down.resume_writing()
    await _turn()
    to_client = client.receive_data(hop.down_pipe.take())
    got = b"".join(e.data for e in to_client if isinstance(e, h2.events.DataReceived))
    assert got == b"x" * 60_000
    assert any(isinstance(e, h2.events.StreamEnded) for e in to_client)


@pytest.mark.asyncio
async def test_a_malformed_informational_response_resets_its_stream_not_passed_on() -> None:
    # A 1xx is a response head too (RFC 9113 8.1.1): a CR LF in one of its values is
    # malformed, and an intermediary must not forward it (it would split a field in an
    # HTTP/1.1 hop). A stream error: the connection carries the next call.
    hop, client, app = await _connected()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST, end_stream=True)
    hop.down.data_received(client.data_to_send())
    await _turn()
    app.receive_data(hop.up_pipe.take())
    app.send_headers(1, [(b":status", b"100"), (b"x-bad", b"a\r\nset-cookie: evil=1")])
    hop.up.data_received(app.data_to_send())
    await _turn()
    events = app.receive_data(hop.up_pipe.take())
    resets = [(e.stream_id, e.error_code) for e in events if isinstance(e, h2.events.StreamReset)]
    assert resets == [(1, h2.errors.ErrorCodes.PROTOCOL_ERROR)]
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    to_client = client.receive_data(hop.down_pipe.take())
    assert not any(isinstance(e, h2.events.InformationalResponseReceived) for e in to_client)
    assert await _one_good_call(hop, client, app) == 200


@pytest.mark.asyncio
async def test_malformed_requests_one_after_another_are_each_reset_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client's 60 malformed requests in a row: each stream is reset PROTOCOL_ERROR,
    the connection goes on, and the log gets one line for them (at most one a second
    per kind), not sixty."""
    caplog.set_level(logging.WARNING, logger="gossamer.proxy")
    hop, client, _ = await _connected()
    bad = _with(REQUEST, (b"X-Upper", b"1"))
    for _ in range(60):
        client.send_headers(client.get_next_available_stream_id(), bad, end_stream=True)
    hop.down.data_received(client.data_to_send())
    await _turn()
    events = client.receive_data(hop.down_pipe.take())
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert len(resets) == 60
    assert {e.error_code for e in resets} == {h2.errors.ErrorCodes.PROTOCOL_ERROR}
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    lines = [r for r in caplog.records if "malformed header block" in r.getMessage()]
    assert len(lines) <= 1


def _headers_frame(headers: Headers, stream_id: int = 1) -> bytes:
    block = hpack.Encoder().encode(headers)
    # HEADERS, flags END_STREAM | END_HEADERS.
    return len(block).to_bytes(3, "big") + b"\x01\x05" + stream_id.to_bytes(4, "big") + block


async def _frames_after(address: tuple[str, int], data: bytes) -> tuple[list[int], int | None]:
    """Send `data` on a fresh connection, then a PING, and another once that is answered
    (so that all the proxy did about `data` was written before the second ACK); read
    raw frames until that ACK (the connection went on) or the connection's end: the
    error codes of the RST_STREAMs on stream 1, and that of a GOAWAY (None if none)."""
    reader, writer = await asyncio.open_connection(*address)
    ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00"
    resets: list[int] = []
    try:
        writer.write(data + ping + b"liveness")
        buf = b""
        while True:
            got = await asyncio.wait_for(reader.read(65536), 5.0)
            if not got:
                return resets, None
            buf += got
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                size = int.from_bytes(buf[:3], "big")
                kind, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big")
                payload, buf = buf[9 : 9 + size], buf[9 + size :]
                if kind == 0x3 and sid == 1:
                    resets.append(int.from_bytes(payload, "big"))
                elif kind == 0x7:
                    return resets, int.from_bytes(payload[4:8], "big")
                elif kind == 0x6 and flags & 0x1 and payload == b"liveness":
                    writer.write(ping + b"and more")
                elif kind == 0x6 and flags & 0x1 and payload == b"and more":
                    return resets, None
    finally:
        writer.transport.abort()


@pytest.mark.parametrize(
    "headers",
    [
        _with(REQUEST, (b"X-Upper", b"1")),
        _with(REQUEST, (b":path", b"/again")),
        _without(REQUEST, b":method"),
    ],
    ids=["an uppercase name", "a pseudo-header out of place", "no :method"],
)
@pytest.mark.asyncio
async def test_a_malformed_request_through_the_listener_gets_its_stream_reset_protocol_error(
    pki: Pki, headers: Headers
) -> None:
    """RFC 9113 8.1.1: a stream error (RST_STREAM PROTOCOL_ERROR); the connection goes
    on and answers the PING sent after it."""
    async with two_proxies(pki, 1, "grpc") as (client, _):
        assert client.outbound_address is not None
        data = PREFACE + SETTINGS + _headers_frame(headers)
        resets, goaway = await _frames_after(client.outbound_address, data)
        assert (resets, goaway) == ([1], None)
