"""The nghttp2_session engine (`_h2native.Session`, decision 0102) on its own, against h2.

The HTTP/2 suites (test_http2, test_h2spec, test_h2_hardening, test_h2_hooks, test_h2to1,
test_e2e_grpc) run over it through conftest's `h2_codec` parameter; here are what they
do not reach: the engine's API as h2's (events, exceptions), header fields both ways
(never-indexed ones kept), hostile bytes, and the limits it counts in C with
http2.py's values.
"""

from __future__ import annotations

import random
import struct

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest

from gossamer.proxy.wire import h2codec, http2

if h2codec.SESSION is None:
    pytest.fail(
        f"the nghttp2_session engine is not built: install {h2codec.BUILD_DEPS} and run "
        "`pip install -e .` (make test does)",
        pytrace=False,
    )
from gossamer.proxy.wire._h2native import Session

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]


def server() -> Session:
    """A server-side engine as H2Connection makes one (http2.py's limits)."""
    s = Session(
        False,
        initial_window=http2.STREAM_WINDOW,
        max_streams=http2.MAX_STREAMS,
        max_header_list=http2.MAX_HEADER_LIST_SIZE,
        control_limit=http2.CONTROL_FRAME_LIMIT,
        empty_limit=http2.EMPTY_FRAME_LIMIT,
        wu_per_data=http2.WINDOW_UPDATES_PER_DATA_FRAME,
        wu_base=http2.WINDOW_UPDATE_BASE,
        max_continuations=http2.MAX_CONTINUATIONS,
        flood=http2._Flood,
    )
    s.initiate_connection()
    return s


def h2_client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            # Fields as they are (h2 would strip a value's surrounding spaces).
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
    )
    c.initiate_connection()
    return c


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload
    )


def goaway_code(data: bytes) -> int | None:
    """The error code of the GOAWAY in `data`, if there is one."""
    view = memoryview(data)
    while len(view) >= 9:
        length = int.from_bytes(view[:3], "big")
        if view[3] == 0x7:
            return int.from_bytes(view[9 + 4 : 9 + 8], "big")
        view = view[9 + length :]
    return None


def test_a_request_and_its_answer_make_h2s_events_both_ways() -> None:
    srv, cli = server(), h2_client()
    sid = cli.get_next_available_stream_id()
    cli.send_headers(sid, REQUEST)
    cli.send_data(sid, b"hello", end_stream=True)
    events = srv.receive_data(cli.data_to_send())
    kinds = [type(e) for e in events]
    assert kinds == [
        h2.events.RemoteSettingsChanged,
        h2.events.RequestReceived,
        h2.events.DataReceived,
        h2.events.StreamEnded,
    ]
    request, data, ended = events[1], events[2], events[3]
    assert list(request.headers) == REQUEST and request.stream_ended is None
    assert data.data == b"hello" and data.flow_controlled_length == 5
    assert data.stream_ended is ended and ended.stream_id == sid
    srv.acknowledge_received_data(5, sid)
    srv.send_headers(sid, [(b":status", b"200")])
    srv.send_data(sid, b"world")
    srv.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    got = cli.receive_data(srv.data_to_send())
    by_kind = {type(e): e for e in got}
    assert list(by_kind[h2.events.ResponseReceived].headers) == [(b":status", b"200")]
    assert by_kind[h2.events.DataReceived].data == b"world"
    assert list(by_kind[h2.events.TrailersReceived].headers) == [(b"grpc-status", b"0")]
    assert h2.events.StreamEnded in by_kind


def test_random_header_blocks_arrive_as_sent_and_never_indexed_fields_stay_so() -> None:
    rng = random.Random(17)
    srv, cli = server(), h2_client()
    srv.receive_data(cli.data_to_send())
    cli.receive_data(srv.data_to_send())
    for _ in range(300):
        fields: list[tuple[bytes, bytes]] = list(REQUEST)
        for _ in range(rng.randrange(0, 12)):
            name = bytes(rng.choice(b"abcxyz-") for _ in range(rng.randrange(1, 12)))
            value = bytes(rng.randrange(0x20, 0x7F) for _ in range(rng.randrange(0, 40)))
            if rng.random() < 0.2:
                fields.append(hpack.NeverIndexedHeaderTuple(b"x" + name, value))
            else:
                fields.append((b"x" + name, value))
        sid = cli.get_next_available_stream_id()
        cli.send_headers(sid, fields, end_stream=True)
        (got,) = [e for e in srv.receive_data(cli.data_to_send()) if hasattr(e, "headers")]
        assert [tuple(f) for f in got.headers] == [tuple(f) for f in fields]
        sent_never = [isinstance(f, hpack.NeverIndexedHeaderTuple) for f in fields]
        assert [isinstance(f, hpack.NeverIndexedHeaderTuple) for f in got.headers] == sent_never
        # And back: the engine encodes, h2 decodes, never-indexed kept.
        answer = [(b":status", b"200"), *fields[4:]]
        srv.send_headers(sid, answer, end_stream=True)
        (resp,) = [e for e in cli.receive_data(srv.data_to_send()) if hasattr(e, "headers")]
        assert [tuple(f) for f in resp.headers] == [tuple(f) for f in answer]
        assert [isinstance(f, hpack.NeverIndexedHeaderTuple) for f in resp.headers] == [
            False,
            *sent_never[4:],
        ]


def test_sending_past_the_window_or_on_a_closed_stream_raises_what_h2_raises() -> None:
    srv, cli = server(), h2_client()
    sid = cli.get_next_available_stream_id()
    cli.send_headers(sid, REQUEST, end_stream=True)
    srv.receive_data(cli.data_to_send())
    srv.send_headers(sid, [(b":status", b"200")])
    window = srv.local_flow_control_window(sid)
    assert window == 65535  # h2's default: its SETTINGS widened nothing
    with pytest.raises(h2.exceptions.FlowControlError):
        srv.send_data(sid, b"x" * (window + 1))
    srv.send_data(sid, b"", end_stream=True)
    with pytest.raises(h2.exceptions.StreamClosedError):
        srv.send_data(sid, b"late")
    with pytest.raises(h2.exceptions.StreamClosedError):
        srv.send_headers(99, [(b":status", b"200")])
    with pytest.raises(h2.exceptions.StreamClosedError):
        srv.local_flow_control_window(99)


def test_a_control_frame_flood_raises_the_flood_error_with_http2s_limit() -> None:
    srv = server()
    pings = frame(0x6, 0, 0, b"12345678") * (http2.CONTROL_FRAME_LIMIT + 1)
    with pytest.raises(http2._Flood, match="control frames in a second") as err:
        srv.receive_data(PREFACE + frame(0x4, 0, 0) + pings)
    assert err.value.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    srv.close_connection(err.value.error_code)
    assert goaway_code(srv.data_to_send()) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert srv.terminated


def test_window_updates_beyond_the_allowance_are_a_flood() -> None:
    srv = server()
    allowance = http2.WINDOW_UPDATE_BASE  # no stream opened, no DATA sent
    updates = frame(0x8, 0, 0, struct.pack(">I", 1)) * (allowance + 1)
    with pytest.raises(http2._Flood, match="WINDOW_UPDATE frames for 0 DATA frames"):
        srv.receive_data(PREFACE + frame(0x4, 0, 0) + updates)


def test_a_header_list_over_the_setting_stops_where_it_passes_it() -> None:
    srv, cli = server(), h2_client()
    cli.local_settings.max_header_list_size = 1 << 20
    big = [*REQUEST, *((b"x-f%d" % i, b"v" * 1000) for i in range(80))]
    cli.send_headers(1, big, end_stream=True)
    with pytest.raises(h2.exceptions.DenialOfServiceError, match="header list over 65536"):
        srv.receive_data(cli.data_to_send())


@pytest.mark.parametrize(
    ("declared", "sent"), [(b"1", b"xyz"), (b"5", b"xyz"), (b"x1", b""), (b"", b"")]
)
def test_a_body_that_disagrees_with_content_length_is_a_protocol_error(
    declared: bytes, sent: bytes
) -> None:
    srv, cli = server(), h2_client()
    cli.send_headers(1, [*REQUEST, (b"content-length", declared)])
    cli.send_data(1, sent, end_stream=True)
    with pytest.raises(h2.exceptions.ProtocolError, match="content-length") as err:
        srv.receive_data(cli.data_to_send())
    assert err.value.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


def test_a_body_that_matches_content_length_over_several_frames_and_reads_passes() -> None:
    srv, cli = server(), h2_client()
    cli.send_headers(1, [*REQUEST, (b"content-length", b"7")])
    cli.send_data(1, b"abc")
    cli.send_data(1, b"defg", end_stream=True)
    wire = cli.data_to_send()
    events = []
    for i in range(0, len(wire), 5):  # a frame's payload split over reads
        events += srv.receive_data(wire[i : i + 5])
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"abcdefg"
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_hostile_bytes_give_a_protocol_error_or_events_never_a_crash() -> None:
    rng = random.Random(102)
    start = PREFACE + frame(0x4, 0, 0)
    kinds = list(range(0x0, 0xB))
    for _ in range(2000):
        srv = server()
        data = bytearray(start)
        for _ in range(rng.randrange(1, 6)):
            payload = rng.randbytes(rng.randrange(0, 40))
            data += frame(rng.choice(kinds), rng.randrange(256), rng.randrange(0, 8), payload)
        if rng.random() < 0.3:
            data += rng.randbytes(rng.randrange(1, 30))
        try:
            events = srv.receive_data(bytes(data))
        except h2.exceptions.ProtocolError as e:
            assert isinstance(e.error_code, int)
            if not srv.terminated:
                srv.close_connection(e.error_code)
            assert goaway_code(srv.data_to_send()) == e.error_code
        else:
            assert all(isinstance(e, h2.events.Event) for e in events)
            srv.data_to_send()


def test_the_session_engine_is_chosen_by_name() -> None:
    assert h2codec.choose("session") is h2codec.SESSION
    assert h2codec.SESSION is not None and h2codec.SESSION.session is Session


def test_an_end_of_stream_held_back_by_a_zero_window_goes_out_when_it_opens() -> None:
    # nghttp2 flow-controls even an empty DATA frame: at a zero window the END_STREAM
    # waits in its queue (h2 would send it at once), and goes when the peer gives credit.
    srv, cli = server(), h2_client()
    cli.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4})
    cli.send_headers(1, REQUEST, end_stream=True)
    srv.receive_data(cli.data_to_send())
    cli.receive_data(srv.data_to_send())
    srv.send_headers(1, [(b":status", b"200")])
    srv.send_data(1, b"abcd")
    assert srv.local_flow_control_window(1) == 0
    srv.end_stream(1)
    got = cli.receive_data(srv.data_to_send())
    assert [e.data for e in got if isinstance(e, h2.events.DataReceived)] == [b"abcd"]
    assert not any(isinstance(e, h2.events.StreamEnded) for e in got)
    cli.increment_flow_control_window(4, 1)
    srv.receive_data(cli.data_to_send())
    got = cli.receive_data(srv.data_to_send())
    assert any(isinstance(e, h2.events.StreamEnded) for e in got)


@pytest.mark.parametrize(
    ("kind", "stream_id", "payload"),
    [(0x16, 0, b"x"), (0xA, 0, b""), (0x2, 1, b"\x00\x00\x00\x00\x10")],
    ids=["an unknown type", "ALTSVC", "PRIORITY"],
)
def test_frames_nghttp2_ignores_are_counted_as_control_frames(
    kind: int, stream_id: int, payload: bytes
) -> None:
    # nghttp2 calls no callback at all for the frames it skips (unknown types, ALTSVC
    # to a server): the engine scans frame headers itself, before nghttp2 reads them.
    srv = server()
    flood = frame(kind, 0, stream_id, payload) * (http2.CONTROL_FRAME_LIMIT + 1)
    with pytest.raises(http2._Flood, match="control frames in a second"):
        srv.receive_data(
            PREFACE + frame(0x4, 0, 0) + frame(0x1, 0x5, 1, b"\x82\x86\x84A\x01a") + flood
        )


def test_data_on_a_stream_this_end_reset_is_counted_even_a_byte_at_a_time() -> None:
    # nghttp2 drops such DATA silently (decision 0098): each frame counts as one that
    # does nothing, however the reads split it.
    srv = server()
    srv.receive_data(PREFACE + frame(0x4, 0, 0) + frame(0x1, 0x4, 1, b"\x83\x86\x84A\x01a"))
    srv.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    srv.data_to_send()
    data = frame(0x0, 0, 1, b"x") * (http2.CONTROL_FRAME_LIMIT + 1)
    with pytest.raises(http2._Flood, match="control frames in a second"):
        for i in range(len(data)):
            srv.receive_data(data[i : i + 1])


def test_data_frames_of_only_padding_are_empty_to_the_flood_count() -> None:
    # A PADDED DATA frame whose payload is its pad length alone carries nothing, as an
    # empty one does (h2's engine looks at frame.data): the second in a row is a flood.
    srv = server()
    srv.receive_data(PREFACE + frame(0x4, 0, 0) + frame(0x1, 0x4, 1, b"\x83\x86\x84A\x01a"))
    padded = frame(0x0, 0x8, 1, b"\x03abc")  # three bytes of padding, no data
    with pytest.raises(http2._Flood, match="2 empty DATA frames in a row"):
        srv.receive_data(padded + padded)
    srv = server()
    srv.receive_data(PREFACE + frame(0x4, 0, 0) + frame(0x1, 0x4, 1, b"\x83\x86\x84A\x01a"))
    with_data = frame(0x0, 0x8, 1, b"\x01x\x00")  # one byte of data, one of padding
    events = srv.receive_data(padded + with_data + padded + with_data)
    assert [e.data for e in events if isinstance(e, h2.events.DataReceived)] == [
        b"",
        b"x",
        b"",
        b"x",
    ]


def client_session(method: bytes = b"GET") -> Session:
    cli = Session(True)
    cli.initiate_connection()
    cli.send_headers(1, [(b":method", method), *REQUEST[1:]], end_stream=True)
    cli.data_to_send()
    return cli


def response(status: bytes, content_length: bytes, body: bytes) -> bytes:
    block = hpack.Encoder().encode([(b":status", status), (b"content-length", content_length)])
    return frame(0x4, 0, 0) + frame(0x1, 0x4, 1, block) + frame(0x0, 0x1, 1, body)


@pytest.mark.parametrize(
    ("content_length", "body"), [(b"5", b"x" * 20), (b"50", b"x" * 5)], ids=["longer", "shorter"]
)
def test_a_response_whose_data_is_not_its_content_length_is_a_protocol_error(
    content_length: bytes, body: bytes
) -> None:
    with pytest.raises(h2.exceptions.ProtocolError, match="content-length"):
        client_session().receive_data(response(b"200", content_length, body))


@pytest.mark.parametrize(
    ("method", "status"), [(b"HEAD", b"200"), (b"GET", b"304"), (b"GET", b"204")]
)
def test_a_response_to_head_or_a_304_or_204_has_no_body_whatever_its_content_length(
    method: bytes, status: bytes
) -> None:
    events = client_session(method).receive_data(response(status, b"1234", b""))
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_streams_refused_over_the_concurrent_limit_count_as_control_frames() -> None:
    # Before a client acknowledges MAX_CONCURRENT_STREAMS, nghttp2 refuses a stream
    # over it with RST_STREAM REFUSED_STREAM, a stream error it handles itself: each
    # made nothing happen, so a client that never acknowledges cannot open them forever.
    srv = server()
    head = b"\x83\x86\x84A\x01a"  # POST http / a, no END_STREAM: each stays open
    opens = b"".join(frame(0x1, 0x4, 2 * i + 1, head) for i in range(http2.MAX_STREAMS))
    srv.receive_data(PREFACE + frame(0x4, 0, 0) + opens)
    sid = 2 * http2.MAX_STREAMS + 1
    over = b"".join(
        frame(0x1, 0x4, sid + 2 * i, head) for i in range(http2.CONTROL_FRAME_LIMIT + 1)
    )
    with pytest.raises(http2._Flood, match="control frames in a second"):
        srv.receive_data(over)


def test_headers_on_a_skipped_stream_id_is_a_connection_error_within_the_ranges_kept() -> None:
    # Ids a client skips are closed by the higher one it opens (RFC 9113 5.1.1); nghttp2
    # cannot tell them from streams that were open, so the engine remembers the first
    # ranges. Past those, HEADERS on a gone stream is ignored (counted as a control
    # frame), as on a stream that was open: not every gone stream is taken for a skipped
    # one, which would end connections over trailers crossing this end's RST_STREAM.
    head = b"\x82\x86\x84A\x01a"  # GET http / a, with END_STREAM below
    for skips, late in ((1, 0), (40, 0), (40, 39)):
        srv = server()
        sids = [4 * i + 3 for i in range(skips)]  # 3, 7, 11...: 1, 5, 9... skipped
        opens = b"".join(frame(0x1, 0x5, sid, head) for sid in sids)
        srv.receive_data(PREFACE + frame(0x4, 0, 0) + opens)
        skipped = sids[late] - 2
        if late < 16:  # a range kept
            with pytest.raises(h2.exceptions.ProtocolError, match="lower than one already"):
                srv.receive_data(frame(0x1, 0x5, skipped, head))
        else:
            assert srv.receive_data(frame(0x1, 0x5, skipped, head)) == []
