"""h2spec's cases that a proxy's server end must pass, ported to Python (RFC 9113, RFC 7541).

h2spec (github.com/summerwind/h2spec) is not packaged here, so its cases that concern
what the proxy refuses or answers are written out: each feeds frames, as bytes, to the
proxy's downstream `H2Connection` (the in-memory hop of tests/proxy/test_http2.py,
after the preface and SETTINGS) and checks what it writes back: a GOAWAY with the error
code h2spec requires, an RST_STREAM, or the answer (a PING ACK, a SETTINGS ACK). The
section numbers are h2spec's. tests/proxy/conftest.py runs the module over each HPACK
codec, so the HPACK cases check the native decoder as well as hpack.

Where h2spec accepts a stream error or a connection error, either passes here too.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import hpack
import pytest
from hyperframe.frame import Frame, GoAwayFrame, PingFrame, RstStreamFrame, SettingsFrame

from tests.proxy.test_http2 import REQUEST as GRPC_REQUEST
from tests.proxy.test_http2 import Hop, _connected, _turn

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
CANCEL = 0x8
FRAME_SIZE_ERROR = 0x6
COMPRESSION_ERROR = 0x9

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0,
    0x1,
    0x2,
    0x3,
    0x4,
    0x6,
    0x7,
    0x8,
    0x9,
)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"echo"),
    (b":path", b"/pkg.Echo/Unary"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream_id)
        + payload
    )


def block(fields: list[tuple[bytes, bytes]] = REQUEST, huffman: bool = True) -> bytes:
    # A fresh encoder per block: nothing in it refers to an entry of an earlier block.
    return hpack.Encoder().encode(fields, huffman=huffman)


def headers(stream_id: int, flags: int = END_HEADERS | END_STREAM, payload: bytes = b"") -> bytes:
    return frame(HEADERS, flags, stream_id, payload or block())


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


@dataclass
class Answer:
    """What the proxy wrote back, frame by frame."""

    goaway: list[int] = field(default_factory=list)  # error codes
    resets: dict[int, int] = field(default_factory=dict)  # stream id: error code
    pings: list[bytes] = field(default_factory=list)  # PING ACK payloads
    settings_acks: int = 0
    closed: bool = False

    def connection_error(self, *codes: int) -> bool:
        return bool(self.goaway) and self.goaway[-1] in codes and self.closed

    def stream_or_connection_error(self, stream_id: int, *codes: int) -> bool:
        return self.resets.get(stream_id) in codes or self.connection_error(*codes)


def read_frames(data: bytes) -> Answer:
    answer = Answer()
    view = memoryview(data)
    while len(view) >= 9:
        f, length = Frame.parse_frame_header(view[:9])
        f.parse_body(view[9 : 9 + length])
        view = view[9 + length :]
        if isinstance(f, GoAwayFrame):
            answer.goaway.append(f.error_code)
        elif isinstance(f, RstStreamFrame):
            answer.resets[f.stream_id] = f.error_code
        elif isinstance(f, PingFrame) and "ACK" in f.flags:
            answer.pings.append(bytes(f.opaque_data))
        elif isinstance(f, SettingsFrame) and "ACK" in f.flags:
            answer.settings_acks += 1
    return answer


async def exchange(*frames: bytes, preface: bytes = PREFACE) -> Answer:
    """The proxy's answer to the client preface, an empty SETTINGS, then `frames`."""
    hop = Hop()
    hop.down.data_received(preface + settings())
    hop.down_pipe.take()
    for data in frames:
        if hop.down_pipe.closed:
            break
        hop.down.data_received(data)
    await _turn()
    answer = read_frames(hop.down_pipe.take())
    answer.closed = hop.down_pipe.closed
    return answer


def connection(*codes: int) -> Callable[[Answer], bool]:
    return lambda a: a.connection_error(*codes)


def stream(stream_id: int, *codes: int) -> Callable[[Answer], bool]:
    return lambda a: a.stream_or_connection_error(stream_id, *codes)


def huffman_literal(name: bytes, encoded_value: bytes) -> bytes:
    """A literal field without indexing, new name, its value Huffman-coded as given."""
    return (
        b"\x00" + bytes((len(name),)) + name + bytes((0x80 | len(encoded_value),)) + encoded_value
    )


CASES = [
    # 3.5: the connection preface
    # 4.1: frame format
    (
        "4.1/1 a frame of unknown type is ignored",
        [frame(0x16, 0, 0, b"x"), frame(PING, 0, 0, b"12345678")],
        lambda a: a.pings == [b"12345678"] and not a.goaway,
    ),
    (
        "4.1/2 undefined flags are ignored",
        [frame(PING, 0x16, 0, b"12345678")],
        lambda a: a.pings == [b"12345678"] and not a.goaway,
    ),
    # 4.2: frame size
    (
        "4.2/2 a DATA frame over SETTINGS_MAX_FRAME_SIZE",
        [headers(1, END_HEADERS), frame(DATA, 0, 1, b"x" * 16385)],
        stream(1, FRAME_SIZE_ERROR),
    ),
    (
        "4.2/3 a HEADERS frame over SETTINGS_MAX_FRAME_SIZE",
        [headers(1, END_HEADERS, block([*REQUEST, (b"x-big", b"v" * 16400)], huffman=False))],
        connection(FRAME_SIZE_ERROR),
    ),
    # 4.3: header compression
    (
        "4.3/1 an undecodable header block",
        [headers(1, END_HEADERS | END_STREAM, b"\x00\x05:path\x8f")],
        connection(COMPRESSION_ERROR),
    ),
    # 5.1: stream states
    ("5.1/1 DATA on an idle stream", [frame(DATA, 0, 1, b"x")], connection(PROTOCOL_ERROR)),
    (
        "5.1/2 RST_STREAM on an idle stream",
        [frame(RST_STREAM, 0, 1, struct.pack(">I", 8))],
        connection(PROTOCOL_ERROR),
    ),
    (
        "5.1/5 DATA on a stream half-closed (remote)",
        [headers(1), frame(DATA, 0, 1, b"x")],
        stream(1, STREAM_CLOSED),
    ),
    (
        "5.1/6 HEADERS on a stream half-closed (remote)",
        [headers(1), headers(1)],
        stream(1, STREAM_CLOSED),
    ),
    # 5.1.1: stream identifiers
    ("5.1.1/1 an even stream id from a client", [headers(2)], connection(PROTOCOL_ERROR)),
    (
        "5.1.1/2 a stream id lower than one already opened",
        [headers(5), headers(3)],
        connection(PROTOCOL_ERROR),
    ),
    # 5.3.1: stream dependencies
    (
        "5.3.1/1 a HEADERS frame depending on its own stream",
        [headers(1, END_HEADERS | END_STREAM | PRIORITY_FLAG, struct.pack(">IB", 1, 15) + block())],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "5.3.1/2 a PRIORITY frame depending on its own stream",
        [frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 15))],
        stream(1, PROTOCOL_ERROR),
    ),
    # 6.1: DATA
    ("6.1/1 DATA on stream 0", [frame(DATA, 0, 0, b"x")], connection(PROTOCOL_ERROR)),
    (
        "6.1/3 DATA with a pad length beyond its payload",
        [headers(1, END_HEADERS), frame(DATA, PADDED, 1, b"\x06xyz")],
        connection(PROTOCOL_ERROR),
    ),
    # 6.2: HEADERS
    (
        "6.2/1 a HEADERS without END_HEADERS followed by a PRIORITY",
        [headers(1, END_STREAM), frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 15))],
        connection(PROTOCOL_ERROR),
    ),
    ("6.2/2 HEADERS on stream 0", [headers(0)], connection(PROTOCOL_ERROR)),
    (
        "6.2/3 HEADERS with a pad length beyond its payload",
        [headers(1, END_HEADERS | END_STREAM | PADDED, b"\xff" + block())],
        connection(PROTOCOL_ERROR),
    ),
    # 6.3: PRIORITY
    (
        "6.3/1 PRIORITY on stream 0",
        [frame(PRIORITY, 0, 0, struct.pack(">IB", 1, 15))],
        connection(PROTOCOL_ERROR),
    ),
    (
        "6.3/2 a PRIORITY frame of 4 octets",
        [frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00")],
        stream(1, FRAME_SIZE_ERROR),
    ),
    # 6.4: RST_STREAM
    (
        "6.4/1 RST_STREAM on stream 0",
        [frame(RST_STREAM, 0, 0, struct.pack(">I", 8))],
        connection(PROTOCOL_ERROR),
    ),
    (
        "6.4/3 an RST_STREAM frame of 3 octets",
        [headers(1, END_HEADERS), frame(RST_STREAM, 0, 1, b"\x00\x00\x08")],
        connection(FRAME_SIZE_ERROR),
    ),
    # 6.5: SETTINGS
    (
        "6.5/1 a SETTINGS ACK with a payload",
        [frame(SETTINGS, ACK, 0, b"\x00\x01\x00\x00\x10\x00")],
        connection(FRAME_SIZE_ERROR),
    ),
    (
        "6.5/2 SETTINGS on a stream",
        [frame(SETTINGS, 0, 1, b"\x00\x01\x00\x00\x10\x00")],
        connection(PROTOCOL_ERROR),
    ),
    (
        "6.5/3 SETTINGS of a length not a multiple of 6",
        [frame(SETTINGS, 0, 0, b"\x00\x01\x00\x00\x10")],
        connection(FRAME_SIZE_ERROR),
    ),
    ("6.5.2/1 SETTINGS_ENABLE_PUSH of 2", [settings((0x2, 2))], connection(PROTOCOL_ERROR)),
    (
        "6.5.2/2 SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1",
        [settings((0x4, 2**31))],
        connection(FLOW_CONTROL_ERROR),
    ),
    (
        "6.5.2/3 SETTINGS_MAX_FRAME_SIZE under its initial value",
        [settings((0x5, 16383))],
        connection(PROTOCOL_ERROR),
    ),
    (
        "6.5.2/4 SETTINGS_MAX_FRAME_SIZE over its largest value",
        [settings((0x5, 2**24))],
        connection(PROTOCOL_ERROR),
    ),
    (
        "6.5.2/5 an unknown setting is ignored and acknowledged",
        [settings((0xFF, 1))],
        lambda a: a.settings_acks == 2 and not a.goaway,
    ),
    # 6.7: PING
    (
        "6.7/1 a PING is answered with its payload",
        [frame(PING, 0, 0, b"h2spec!!")],
        lambda a: a.pings == [b"h2spec!!"],
    ),
    (
        "6.7/2 a PING ACK is not answered",
        [frame(PING, ACK, 0, b"h2spec!!")],
        lambda a: a.pings == [] and not a.goaway,
    ),
    ("6.7/3 PING on a stream", [frame(PING, 0, 1, b"12345678")], connection(PROTOCOL_ERROR)),
    ("6.7/4 a PING of 6 octets", [frame(PING, 0, 0, b"123456")], connection(FRAME_SIZE_ERROR)),
    # 6.8: GOAWAY
    (
        "6.8/1 GOAWAY on a stream",
        [frame(GOAWAY, 0, 1, struct.pack(">II", 0, 0))],
        connection(PROTOCOL_ERROR),
    ),
    # 6.9: WINDOW_UPDATE
    (
        "6.9/1 a WINDOW_UPDATE of 0 on the connection",
        [frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0))],
        connection(PROTOCOL_ERROR),
    ),
    (
        "6.9/2 a WINDOW_UPDATE of 0 on a stream",
        [headers(1, END_HEADERS), frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "6.9/3 a WINDOW_UPDATE of 3 octets",
        [frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01")],
        connection(FRAME_SIZE_ERROR),
    ),
    (
        "6.9.1/2 the connection's window beyond 2^31-1",
        [
            frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)),
            frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)),
        ],
        connection(FLOW_CONTROL_ERROR),
    ),
    (
        "6.9.1/3 a stream's window beyond 2^31-1",
        [
            headers(1, END_HEADERS),
            frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1)),
        ],
        stream(1, FLOW_CONTROL_ERROR),
    ),
    # 6.10: CONTINUATION
    (
        "6.10/2 a CONTINUATION after a HEADERS with END_HEADERS",
        [headers(1, END_HEADERS), frame(CONTINUATION, END_HEADERS, 1, block([(b"x-a", b"1")]))],
        connection(PROTOCOL_ERROR),
    ),
    (
        "6.10/4 a CONTINUATION on stream 0",
        [headers(1, END_STREAM), frame(CONTINUATION, END_HEADERS, 0, b"")],
        connection(PROTOCOL_ERROR),
    ),
    (
        "6.10/5 a DATA frame between HEADERS and its CONTINUATION",
        [headers(1, 0), frame(DATA, 0, 1, b"x")],
        connection(PROTOCOL_ERROR),
    ),
    (
        "6.10/6 a CONTINUATION on another stream",
        [headers(1, END_STREAM), frame(CONTINUATION, END_HEADERS, 3, b"")],
        connection(PROTOCOL_ERROR),
    ),
    # RFC 7541 (h2spec's hpack section)
    (
        "hpack 2.3.3/1 an index beyond both tables",
        [headers(1, END_HEADERS | END_STREAM, b"\x82\x86\x84\xbe")],  # 62: empty dynamic table
        connection(COMPRESSION_ERROR),
    ),
    ("hpack 6.1/1 index 0", [headers(1, payload=b"\x80")], connection(COMPRESSION_ERROR)),
    (
        "hpack 4.2/1 a table size update over SETTINGS_HEADER_TABLE_SIZE",
        [headers(1, payload=b"\x3f\xe2\x1f" + block())],  # 4097 > 4096
        connection(COMPRESSION_ERROR),
    ),
    (
        "hpack 6.3/1 a table size update after a field",
        [headers(1, payload=b"\x82\x20" + block()[1:])],
        connection(COMPRESSION_ERROR),
    ),
    (
        "hpack 5.2/1 a Huffman string with EOS in it",
        [headers(1, payload=huffman_literal(b"x-a", b"\xff\xff\xff\xff"))],
        connection(COMPRESSION_ERROR),
    ),
    (
        "hpack 5.2/2 Huffman padding longer than 7 bits",
        [headers(1, payload=huffman_literal(b"x-a", b"\x1c\x64\xff\xff"))],
        connection(COMPRESSION_ERROR),
    ),
    (
        "hpack 5.2/3 Huffman padding that is not EOS's prefix",
        [headers(1, payload=huffman_literal(b"x-a", b"\x1c\x64\x00"))],  # "aa" then zeros
        connection(COMPRESSION_ERROR),
    ),
    # 8.1.2: HTTP message exchanges (RFC 9113 8.2, 8.3)
    (
        "8.1.2/1 an uppercase field name",
        [headers(1, payload=block([*REQUEST, (b"X-Upper", b"1")]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.1/1 an unknown pseudo-header",
        [headers(1, payload=block([*REQUEST, (b":foo", b"1")]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.1/2 a response pseudo-header in a request",
        [headers(1, payload=block([*REQUEST, (b":status", b"200")]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.1/3 a pseudo-header in trailers",
        [
            headers(1, END_HEADERS),
            headers(1, payload=block([(b":method", b"POST")])),
        ],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.1/4 a pseudo-header after a regular field",
        [headers(1, payload=block([*REQUEST[1:], REQUEST[0]]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.2/1 a connection-specific field",
        [headers(1, payload=block([*REQUEST, (b"connection", b"keep-alive")]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.2/2 TE other than trailers",
        [headers(1, payload=block([*REQUEST[:5], (b"te", b"trailers, deflate")]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.3/1 an empty :path",
        [headers(1, payload=block([*REQUEST[:3], (b":path", b""), *REQUEST[4:]]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.3/2 no :method",
        [headers(1, payload=block(REQUEST[1:]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.3/3 no :scheme",
        [headers(1, payload=block([REQUEST[0], *REQUEST[2:]]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.3/4 no :path",
        [headers(1, payload=block([*REQUEST[:3], *REQUEST[4:]]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.3/5 a repeated :method",
        [headers(1, payload=block([REQUEST[0], *REQUEST]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.3/7 a repeated :path",
        [headers(1, payload=block([*REQUEST, (b":path", b"/other")]))],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.6/1 DATA longer than content-length",
        [
            headers(1, END_HEADERS, block([*REQUEST, (b"content-length", b"1")])),
            frame(DATA, END_STREAM, 1, b"xyz"),
        ],
        stream(1, PROTOCOL_ERROR),
    ),
    (
        "8.1.2.6/2 DATA shorter than content-length",
        [
            headers(1, END_HEADERS, block([*REQUEST, (b"content-length", b"5")])),
            frame(DATA, END_STREAM, 1, b"xyz"),
        ],
        stream(1, PROTOCOL_ERROR),
    ),
]


@pytest.mark.parametrize(
    ("frames", "passes"),
    [(frames, passes) for _, frames, passes in CASES],
    ids=[name for name, _, _ in CASES],
)
@pytest.mark.asyncio
async def test_h2spec_case(frames: list[bytes], passes: object) -> None:
    answer = await exchange(*frames)
    assert callable(passes)
    assert passes(answer), answer


@pytest.mark.asyncio
async def test_h2spec_3_5_2_an_invalid_preface_ends_the_connection() -> None:
    answer = await exchange(preface=b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    assert answer.closed
    assert answer.goaway in ([], [PROTOCOL_ERROR])


@pytest.mark.asyncio
async def test_5_1_data_on_a_stream_this_end_reset_is_ignored_not_answered() -> None:
    # RFC 9113 5.1: after sending RST_STREAM, an endpoint MUST ignore the frames the peer
    # had already sent on the stream. The proxy's upstream end resets a stream when its
    # client goes away; a server stream's DATA already in flight must not each bring
    # another RST_STREAM (the peer counts those as a flood and closes the connection).
    hop, client, app = await _connected()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, GRPC_REQUEST, end_stream=True)
    hop.down.data_received(client.data_to_send())
    await _turn()
    app.receive_data(hop.up_pipe.take())
    app.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    hop.up.data_received(app.data_to_send())
    await _turn()
    client.receive_data(hop.down_pipe.take())
    client.reset_stream(sid)  # the client goes away: the proxy resets its upstream half
    hop.down.data_received(client.data_to_send())
    await _turn()
    first = read_frames(hop.up_pipe.take())
    assert first.resets == {1: CANCEL}
    for _ in range(50):  # what the app sent before it saw the reset
        app.send_data(1, b"\x00\x00\x00\x00\x01x")
    app.receive_data(b"")  # nothing: the app has not read the reset yet
    hop.up.data_received(app.data_to_send())
    await _turn()
    later = read_frames(hop.up_pipe.take())
    assert later.resets == {} and later.goaway == []
    assert not hop.up_pipe.closed
