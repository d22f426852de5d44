"""HTTP/2 (and so gRPC) carried stream by stream, with flow control end to end.

The state machine is libnghttp2's `nghttp2_session` (`_h2native.Session`, decision
0102) where the extension is built, or the `h2` package's (`_GuardedH2`), behind one
interface (`Engine`) that makes h2's events; `H2Connection` here is a thin
asyncio.Protocol around it, for either end (a downstream client's connection, or one to
a peer or the app). Each request stream is a `StreamPair`: two `_Half`s, one on each connection.
What arrives on one half is queued on the other and sent as that connection's flow
control window allows; only then is it acknowledged (WINDOW_UPDATE) to the sender. So
a stream holds at most one window of bytes, and a slow reader slows its writer, as if
the two were one connection.

Where HTTP/2 comes from and goes:

- outbound: the app's connection starts with the HTTP/2 preface (prior knowledge, h2c)
  on the same port as HTTP/1.1; `httpproxy.ServerConnection` notices it on the error
  path of its HTTP/1.1 reader (so HTTP/1.1 pays nothing) and hands the transport here.
  Streams are routed by `:authority` like Host, and carried to the peer over mTLS with
  ALPN ``gossamer/h2``, one multiplexed connection per endpoint.
- inbound: ALPN ``gossamer/h2``; after authorization, streams go to the app over one
  h2c connection per local port, when the port's appProtocol says the app speaks
  HTTP/2 (`http2`, `grpc`, `kubernetes.io/h2c`). Otherwise each stream's upstream half
  is an HTTP/1.1 exchange with the app (a `Carrier`, proxy.inbound.h2to1) rather than an
  HTTP/2 stream; gRPC, which needs HTTP/2, gets a gRPC error (`reply_grpc`).

Headers and data are handed on as h2 decodes them (HPACK state is per connection, so
header blocks are re-encoded; DATA payloads are passed through uncopied). Trailers
(gRPC's `grpc-status`) travel as trailers. Bad input closes the connection with the
error code h2 names (PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR...). A
malformed header block (`malformed`, checked here rather than by h2) resets its stream
with PROTOCOL_ERROR (RFC 9113 8.1.1: a stream error; a link between proxies carries
many callers' streams). A reset stream is reset on its other half; other streams go on.
What a stream still had queued when it ends early is acknowledged to its sender all
the same (`drop_pending`): the connection's window is shared by all its streams.

Abuse (docs/security.md), counted with plain integers as frames and streams arrive
(`_GuardedH2` sees each frame before h2 acts on it):

- floods: more than CONTROL_FRAME_LIMIT frames a second that carry nothing to a stream
  (SETTINGS, PING, RST_STREAM, PRIORITY, GOAWAY, unknown types, empty DATA, and from
  a client DATA or HEADERS that make nothing happen, as on a stream already reset),
  more than EMPTY_FRAME_LIMIT empty DATA frames in a row, or more WINDOW_UPDATE frames
  than WINDOW_UPDATES_PER_DATA_FRAME for each DATA frame this end sent (Envoy's rule,
  in `_GuardedH2`), close the connection with GOAWAY ENHANCE_YOUR_CALM (as nghttp2
  and Envoy do since CVE-2019-9518);
- rapid reset (CVE-2023-44487): a stream the client resets before its answer and
  within PREMATURE_RESET_LIFETIME is premature; when they are half of the streams
  (counted from PREMATURE_RESET_STREAMS on, as Envoy does) the connection drains
  with GOAWAY ENHANCE_YOUR_CALM;
- a connection carries at most MAX_STREAMS_PER_CONNECTION streams, then drains with
  GOAWAY NO_ERROR (and the client side opens no more on it), so that the client
  opens another;
- a request with more than MAX_HEADERS header (or trailer) fields is answered
  431 and its stream ended; the connection goes on.

Draining (`go_away`, or a GOAWAY from the peer): no new stream is taken or opened, the
streams open finish, then the connection closes. A stream the peer sends after this
end's GOAWAY is refused (REFUSED_STREAM: the client may send it again elsewhere) and
counted like a control frame, so a client that ignores the GOAWAY is cut off. A
stream this end opened that the peer refused (REFUSED_STREAM, or past its GOAWAY's last
stream id) reached no application: the pair is marked `refused` and the side sends the
request again on another connection whatever its method (RFC 9113 8.1.4; decision 0112).

Cost (decision 0044): what a read makes a connection send goes out in one write when
the read is handled (`flush`), and a request's end rides on its last DATA frame. HPACK
is libnghttp2's, through a C extension, where it was built (`h2codec`, decision 0097);
or the whole state machine is, `nghttp2_session` in place of h2 (`_h2native.Session`,
`GOSSAMER_H2_CODEC=session`, decision 0102), with the same events and the same limits.
The DATA a read brings for a stream goes on in as few frames as fit (`_coalesce`,
decision 0099), and DATA on a stream this end reset is ignored (decision 0098).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable
from time import monotonic, perf_counter
from typing import Any, Final, Protocol, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hpack
from h2.stream import StreamClosedBy
from hyperframe.exceptions import InvalidDataError
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from gossamer.proxy.wire import h2codec
from gossamer.proxy.wire.http1 import CLIENT_GONE, ORIG_PROTO_HEADER, SRC_SERVICE_HEADER
from gossamer.proxy.wire.limits import (
    GOAWAY_REFUSED,
    LOST,
    MAX_HEADERS,
    NOT_REFUSED,
    REPLAY_LIMIT,
    STREAM_REFUSED,
    InFlight,
    LimitedLog,
    close_soon,
    keep_open_at_eof,
    taken,
)

log = logging.getLogger("gossamer.proxy")

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# What is kept of a request without a retry policy, only so that a stream the peer
# refuses unprocessed can be sent again (decision 0112): a quarter of it, so that a
# connection's MAX_STREAMS streams hold at most CONNECTION_WINDOW in copies, the bound
# flow control already sets on what a client's connection may have queued here.
REFUSED_REPLAY_LIMIT: Final = 16 * 1024
# What this proxy lets a peer send ahead, per stream and per connection.
STREAM_WINDOW: Final = 256 * 1024
CONNECTION_WINDOW: Final = 4 * 1024 * 1024
MAX_STREAMS: Final = 256
# A connection this proxy opens (to a peer or the app) carries the streams of many
# callers, and a stream's credit goes back only once its DATA is passed on: a caller that
# stops reading holds up to STREAM_WINDOW of it. So that callers who stall cannot take the
# window of the others, it is the stream window times the most streams one connection
# carries at once (what Envoy does with its 256 MiB default). A client's own connection
# keeps CONNECTION_WINDOW: a stall there holds up only that client.
UPSTREAM_CONNECTION_WINDOW: Final = STREAM_WINDOW * MAX_STREAMS
# DATA `pump` hands the engine for one connection between two writes. The peer's
# windows do not bound what waits in the transport (a client may open them to 2^31 - 1
# and never read); the transport's high-water mark (pause_writing) does, but only at a
# write, and one loop turn may pump every stream of a connection. Past the budget the
# rest waits for the write, and then for the peer to read if it is not.
WRITE_BUDGET: Final = 256 * 1024
# SETTINGS_MAX_HEADER_LIST_SIZE this end sends and holds a peer to (an HPACK bomb stops
# here), and CONTINUATION frames after one HEADERS (h2's own limit; nghttp2's option).
MAX_HEADER_LIST_SIZE: Final = 64 * 1024
MAX_CONTINUATIONS: Final = 64
# Limits on what a peer may make the proxy do (see the module docstring). Frames that
# carry nothing to a stream (SETTINGS, PING, RST_STREAM, PRIORITY...) a peer may send
# per second, and empty DATA frames without END_STREAM it may send in a row (Envoy's
# max_consecutive_inbound_frames_with_empty_payload).
CONTROL_FRAME_LIMIT: Final = 500
EMPTY_FRAME_LIMIT: Final = 1
# WINDOW_UPDATE frames a peer may send for each DATA frame this end sent (Envoy's
# max_inbound_window_update_frames_per_data_frame_sent), beyond a few to begin with
# and two for each stream opened (see _GuardedH2). A peer that returns credit for what
# it received sends at most two per DATA frame (the stream's and the connection's);
# each one on the connection makes this end look at every open stream.
WINDOW_UPDATES_PER_DATA_FRAME: Final = 10
WINDOW_UPDATE_BASE: Final = 5
# Streams one connection carries before it drains (Envoy's max_requests_per_connection,
# which is unlimited there by default; this bounds what one connection may cost). A
# million: at 10,000 it made a busy gRPC client reconnect every two seconds (a TLS
# handshake on the mesh link each time), and stopped h2load, which does not reconnect.
MAX_STREAMS_PER_CONNECTION: Final = 1_000_000
# Premature resets: a client's reset of a stream not yet answered, within this many
# seconds of its start (Envoy: premature_reset_min_stream_lifetime_seconds). Half of a
# connection's streams may be, counted from this many streams on (before that, half
# of it: Envoy's premature_reset_total_stream_count, 500 there).
PREMATURE_RESET_LIFETIME: Final = 1.0
PREMATURE_RESET_STREAMS: Final = 100
# Fields in a request's header block or trailers: limits.MAX_HEADERS, as for HTTP/1.1.

H2_APP_PROTOCOLS: Final = frozenset(("http2", "grpc", "kubernetes.io/h2c", "h2c"))

Headers = list[tuple[bytes, bytes]]

_HOP_BY_HOP: Final = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    )
)


# The header block helpers in C (_h2native, _h2fields.c), where the extension is built;
# each gives False for a block it leaves to the Python (not a list of 2-tuples of bytes).
_malformed_in_c: Callable[[Headers, int], str | bool | None] | None
_forwardable_in_c: Callable[[Headers, frozenset[bytes]], Headers | bool] | None
_from_http1_in_c: Callable[[Iterable[tuple[bytes, bytes]]], Headers | bool] | None
try:
    from gossamer.proxy.wire._h2native import forwardable as _forwardable_in_c
    from gossamer.proxy.wire._h2native import from_http1 as _from_http1_in_c
    from gossamer.proxy.wire._h2native import malformed as _malformed_in_c
except ImportError:  # built without libnghttp2's headers: the Python
    _malformed_in_c = _forwardable_in_c = _from_http1_in_c = None


def forwardable(headers: Headers, drop: frozenset[bytes] = frozenset()) -> Headers:
    """Headers that may be handed on: no connection-specific ones (RFC 9113 8.2.2).
    In one call into C where the extension is built (decision 0115)."""
    if _forwardable_in_c is not None:
        fields = _forwardable_in_c(headers, drop)
        if fields is not False:
            return cast(Headers, fields)
    return forwardable_in_python(headers, drop)


def forwardable_in_python(headers: Headers, drop: frozenset[bytes] = frozenset()) -> Headers:
    """`forwardable`, in Python: where the extension is not built, and for blocks that
    are not a list of 2-tuples of bytes."""
    out = []
    for name, value in headers:
        if name in _HOP_BY_HOP or name in drop:
            continue
        if name == b"te" and value.lower() != b"trailers":
            continue
        out.append((name, value))
    return out


def from_http1(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """An HTTP/1.1 head's (or trailers') fields as HTTP/2 may carry them: names in lower
    case, no connection-specific fields, and no whitespace at a value's ends, which an
    HTTP/1.1 parser leaves at the end (RFC 9110 5.5: not part of the value) and which
    makes an HTTP/2 block malformed (RFC 9113 8.2.1). Every HTTP/1.1-to-HTTP/2 hop
    (h2to1's responses, h1to2's requests) converts through here; in C where built."""
    if _from_http1_in_c is not None:
        fields = _from_http1_in_c(headers)
        if fields is not False:
            return cast(Headers, fields)
    return from_http1_in_python(headers)


def from_http1_in_python(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """`from_http1`, in Python (see `forwardable_in_python`)."""
    return forwardable_in_python([(name.lower(), value.strip(b" \t")) for name, value in headers])


# RFC 9113 8.2.1: a field name is visible ASCII without uppercase letters or a colon
# (a pseudo-header's leading colon aside); a value holds no NUL, CR or LF and neither
# starts nor ends with a space or a tab.
_FIELD_NAME: Final = re.compile(rb"[\x21-\x39\x3b-\x40\x5b-\x7e]+").fullmatch
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z").search
_CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
# Names and values found well-formed already, so that the same ones (a gRPC call's
# content-type, te, user-agent, grpc-status...) are checked by a set lookup rather than
# a regular expression: about half of `malformed`'s time per block. Bounded: once full,
# no more are added (a peer sending ever-new fields only costs itself the regex).
_GOOD_NAMES: Final[set[bytes]] = set()
_GOOD_VALUES: Final[set[bytes]] = set()
_GOOD_MAX: Final = 1024
_GOOD_VALUE_LENGTH: Final = 128
REQUEST_PSEUDO: Final = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
RESPONSE_PSEUDO: Final = frozenset((b":status",))
TRAILER_PSEUDO: Final = frozenset[bytes]()
# The block kinds _h2native.malformed takes, by the identity of the set a caller gives.
_BLOCK_KINDS: Final = {id(REQUEST_PSEUDO): 0, id(RESPONSE_PSEUDO): 1, id(TRAILER_PSEUDO): 2}


def malformed(headers: Headers, pseudo: frozenset[bytes]) -> str | None:
    """Why a received header block is malformed (RFC 9113 8.2 and 8.3), or None.

    `pseudo` is what the block may carry: REQUEST_PSEUDO, RESPONSE_PSEUDO or
    TRAILER_PSEUDO. This is the check h2 makes with `validate_inbound_headers`, in
    one pass instead of seven chained generators per block, which cost a tenth of
    the proxy's time per gRPC call; in one call into C where the extension is built
    (`_h2native.malformed`: the same checks, order and reasons, decision 0115).
    """
    if _malformed_in_c is not None:
        kind = _BLOCK_KINDS.get(id(pseudo))
        if kind is not None:
            reason = _malformed_in_c(headers, kind)
            if reason is not False:
                return cast("str | None", reason)
    return malformed_in_python(headers, pseudo)


def malformed_in_python(headers: Headers, pseudo: frozenset[bytes]) -> str | None:
    """`malformed`, in Python: any block where the extension is not built, and blocks
    that are not a list of 2-tuples of bytes."""
    seen: set[bytes] = set()
    regular = False
    method = authority = host = length = None
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                return f"pseudo-header {name!r} after a regular field"
            if name not in pseudo or name in seen:
                return f"unexpected or repeated pseudo-header {name!r}"
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value:
                return "empty :path"
        else:
            regular = True
            if name not in _GOOD_NAMES:
                if _FIELD_NAME(name) is None:
                    return f"invalid field name {name!r}"
                if len(_GOOD_NAMES) < _GOOD_MAX:
                    _GOOD_NAMES.add(name)
            if name in _CONNECTION_SPECIFIC:
                return f"connection-specific field {name!r}"
            if name == b"te" and value.lower() != b"trailers":
                return f"te: {value!r} (only trailers is allowed)"
            if name == b"host" and pseudo is REQUEST_PSEUDO:  # RFC 9113 8.3.1
                if host is not None:
                    return "more than one host field"
                host = value
            elif name == b"content-length":
                # RFC 9110 8.6: digits only; repeated, the same value (else invalid, and
                # a downgrading hop that takes another value than ours would read the
                # rest of the body as a new request).
                if not value.isdigit() or not value.isascii():
                    return f"content-length: {value!r} is not a number"
                if length is not None and value != length:
                    return "content-length fields that differ"
                length = value
        if value and value not in _GOOD_VALUES:
            if _BAD_VALUE(value) is not None:
                return f"invalid characters or surrounding whitespace in the value of {name!r}"
            if len(value) <= _GOOD_VALUE_LENGTH and len(_GOOD_VALUES) < _GOOD_MAX:
                _GOOD_VALUES.add(value)
    if pseudo is RESPONSE_PSEUDO:
        return None if b":status" in seen else "no :status"
    if pseudo is not REQUEST_PSEUDO:
        return None
    if method is None:
        return "no :method"
    if method == b"CONNECT" and b":protocol" not in seen:
        if b":scheme" in seen or b":path" in seen:
            return "CONNECT with :scheme or :path"
    elif b":scheme" not in seen or b":path" not in seen:
        return "no :scheme or no :path"
    elif b":protocol" in seen and method != b"CONNECT":
        return ":protocol without CONNECT"
    if authority is None and host is None:
        return "neither :authority nor host"
    if authority is not None and host is not None and authority != host:
        return ":authority and host differ"
    return None


def header(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def is_grpc(headers: Headers) -> bool:
    """A gRPC call (content-type application/grpc, +proto, ...), which needs HTTP/2 to
    the app. gRPC-Web (application/grpc-web) is made for HTTP/1.1 and is carried."""
    ctype = (header(headers, b"content-type") or b"").lower()
    return ctype == b"application/grpc" or ctype[:17] in (
        b"application/grpc+",
        b"application/grpc;",
    )


def _grpc_message(text: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2, "Responses")."""
    return b"".join(
        bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
        for b in text.encode("utf-8")
    )


class Engine(Protocol):
    """What H2Connection uses of its HTTP/2 state machine: h2's connection (`_GuardedH2`)
    or nghttp2_session's (`_h2native.Session`, decision 0102), chosen by h2codec."""

    opened: int

    @property
    def server_side(self) -> bool: ...
    @property
    def terminated(self) -> bool: ...
    @property
    def max_outbound_frame_size(self) -> int: ...
    def initiate_connection(self) -> None: ...
    def receive_data(self, data: bytes) -> list[Any]: ...
    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None: ...
    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...
    def end_stream(self, stream_id: int) -> None: ...
    def reset_stream(self, stream_id: int, error_code: int = 0) -> None: ...
    def close_connection(self, error_code: int = 0) -> None: ...
    def data_to_send(self) -> bytes: ...
    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None: ...
    def increment_flow_control_window(
        self, increment: int, stream_id: int | None = None
    ) -> None: ...
    def local_flow_control_window(self, stream_id: int) -> int: ...
    def get_next_available_stream_id(self) -> int: ...
    def control_frame(self) -> None: ...


class StreamHandler(Protocol):
    """Where a server connection's new streams go (the outbound or inbound side)."""

    def new_stream(self, conn: H2Connection, stream_id: int, headers: Headers) -> None: ...


class Carrier(Protocol):
    """What carries a half that is not an HTTP/2 stream; such a half never has a
    `conn`. Upstream: an HTTP/1.1 exchange with the app (proxy.inbound.h2to1).
    Downstream: an HTTP/1.1 client's request, carried to a peer as this stream
    (`Receiver`, proxy.outbound.h1to2)."""

    def send(self) -> None:
        """More is queued on the half (DATA, trailers or its end)."""

    def sent(self, size: int) -> None:
        """`size` bytes queued by this carrier went out on the other half: room for more."""


class Receiver(Carrier, Protocol):
    """The carrier of a downstream half: it also gets the response head (`response`)
    and the errors the pair would answer its client with (`fail`)."""

    def response(self, headers: Headers, ended: bool) -> None:
        """A downstream carrier's response head (pseudo-headers and all), checked."""

    def informational(self, headers: Headers) -> None:
        """A downstream carrier's 1xx response head (pseudo-headers and all), checked."""

    def fail(self, status: int, reason: str) -> None:
        """A downstream carrier's client is to be answered with a proxy-made error."""


class _Half:
    """One stream of a pair, on one connection: what is still to be sent on it.

    An upstream half exists before its connection does (`conn` None): what the
    client sends meanwhile waits in `pending`, bounded by the stream window. An
    upstream half carried as HTTP/1.1 has a `carrier` instead of a connection.
    """

    __slots__ = (
        "carrier",
        "conn",
        "ended",
        "moved",
        "other",
        "pair",
        "pending",
        "recv_end",
        "sent_end",
        "stream_id",
        "trailers",
    )

    def __init__(self, conn: H2Connection | None, stream_id: int, pair: StreamPair) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.pair = pair
        self.carrier: Carrier | None = None
        self.other: _Half | None = None
        self.pending: deque[list[object]] = deque()  # [data, bytes to acknowledge]
        self.ended = False  # END_STREAM is owed once pending is sent
        self.trailers: Headers | None = None
        self.recv_end = False  # the peer ended its side of this stream
        self.sent_end = False  # and this proxy its own
        self.moved = 0  # DATA bytes sent and received on it (H2Connection.sweep)


def _reset_other(half: _Half, code: int) -> None:
    """`half` is reset: so is the other end of its pair, or what it had queued goes."""
    other = half.other
    if other is not None and other.conn is not None:
        other.conn.reset(other, code)
    elif other is not None:
        drop_pending(other)


def drop_pending(half: _Half) -> None:
    """Forget what is queued on `half`, giving its flow control credit back to the
    connection it came from: that connection's window is shared by all its streams."""
    pending = half.pending
    if not pending:
        return
    owed = sum(cast(int, item[1]) for item in pending)
    pending.clear()
    other = half.other
    if owed and other is not None and other.conn is not None and not other.conn.closed:
        other.conn.h2.acknowledge_received_data(owed, other.stream_id)
        other.conn.flush()


class StreamPair:
    """A request stream carried from a downstream connection to an upstream one.

    `status` and `grpc_status` are what came back; `on_done` lets the side count it.
    """

    __slots__ = (
        "client_gone",
        "done",
        "down",
        "grpc_status",
        "in_flight",
        "interim",
        "on_done",
        "on_reset",
        "on_response",
        "own_answer",
        "refused",
        "replay",
        "replay_limit",
        "replay_size",
        "response_edit",
        "started",
        "status",
        "up",
    )

    def __init__(self, down_conn: H2Connection | None, stream_id: int, started: float) -> None:
        """`down_conn` None: the downstream half is carried (its `carrier` set by the
        caller), as an HTTP/1.1 request is to a peer (proxy.outbound.h1to2)."""
        self.down = _Half(down_conn, stream_id, self)
        self.up = _Half(None, 0, self)
        self.down.other, self.up.other = self.up, self.down
        self.started = started
        self.status = 0
        self.grpc_status: bytes | None = None
        # The client reset its stream, or its connection went, before any answer.
        self.client_gone = False
        self.on_done: Callable[[StreamPair], None] | None = None
        self.done = False
        # Retries (proxy.forward.streams): the request's DATA kept to send again, while it fits
        # REPLAY_LIMIT (None: not kept), and a look at each response head before it
        # goes downstream, which may take the response over (True) to try again.
        self.replay: list[bytes] | None = None
        self.replay_size = 0
        self.replay_limit = REPLAY_LIMIT
        self.on_response: Callable[[StreamPair, int, bytes | None], bool] | None = None
        # The upstream stream was reset, or its connection lost, before an answer:
        # True when the side sent the request again instead.
        self.on_reset: Callable[[StreamPair], bool] | None = None
        # Set before `on_reset` when the upstream refused the stream unprocessed
        # (GOAWAY_REFUSED, STREAM_REFUSED) before anything of its answer came: the
        # request reached no application and may be sent again whatever its method
        # (RFC 9113 8.1.4).
        self.refused = NOT_REFUSED
        # A 1xx of the upstream's was passed on: the request reached something that
        # answered, so a refusal after it is not taken at its word.
        self.interim = False
        # A route's ResponseHeaderModifier: applied to the response head's fields.
        self.response_edit: Callable[[Headers], Headers] | None = None
        # The proxy answers the client itself (`reply`, `reply_grpc`).
        self.own_answer = False
        # The place the stream took under its connection's cap, if it has one.
        self.in_flight: InFlight | None = None
        if down_conn is not None:
            self.in_flight = down_conn.in_flight
            down_conn.halves[stream_id] = self.down

    def start_keeping(self, limit: int = REPLAY_LIMIT) -> None:
        """Keep the request's DATA for a retry from now on, with what already came and
        waits to be sent (a call held by a fault's delay or a TrafficControl's queue
        got its body before a retry policy was adopted), while it fits `limit`."""
        self.replay = []
        self.replay_size = 0
        self.replay_limit = limit
        for data, _ in self.up.pending:
            assert isinstance(data, bytes | bytearray | memoryview)
            self.keep(bytes(data))

    def keep(self, data: bytes) -> None:
        """Keep a copy of request DATA for a retry, or give up keeping when too big."""
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size > self.replay_limit:
                self.replay = None
            else:
                replay.append(data)

    def restart_upstream(self) -> None:
        """Cancel the upstream stream (the pair goes on) and queue the whole request
        again, for `attach` to another (or the same) connection: a retry."""
        replay = self.replay
        assert replay is not None
        old = self.up
        drop_pending(old)
        if old.conn is not None:
            old.conn.halves.pop(old.stream_id, None)
            if not old.conn.closed:
                with contextlib.suppress(h2.exceptions.H2Error):
                    old.conn.h2.reset_stream(old.stream_id, h2.errors.ErrorCodes.CANCEL)
                old.conn.flush()
        old.other = None
        up = self.up = _Half(None, 0, self)
        up.other, self.down.other = self.down, up
        # Acknowledged to the client when first sent: nothing to acknowledge again.
        up.pending.extend([data, 0] for data in replay)
        up.ended = self.down.recv_end
        self.status = 0
        self.grpc_status = None
        self.refused = NOT_REFUSED

    def attach(self, up_conn: H2Connection, headers: Headers) -> None:
        """Open the upstream stream and send the request head (and what is queued)."""
        if self.done:
            return
        up = self.up
        h2conn = up_conn.h2
        try:
            stream_id = h2conn.get_next_available_stream_id()
            whole = up.ended and not up.pending and up.trailers is None
            h2conn.send_headers(stream_id, headers, end_stream=whole)
        except h2.exceptions.H2Error as e:
            self.reply(503, f"cannot open a stream to {up_conn.name}: {e}")
            return
        up.conn = up_conn
        up.stream_id = stream_id
        up_conn.halves[stream_id] = up
        up_conn.streams += 1
        h2conn.opened += 1
        if up_conn.streams >= MAX_STREAMS_PER_CONNECTION:
            # Its last: the peer would say GOAWAY after it (its own cap, if it is a
            # proxy like this one), and a stream sent meanwhile would be refused.
            up_conn.draining = True
        if whole:
            up.ended = False
            up.sent_end = True
            # Nothing is left for pump to send, and it writes nothing: the HEADERS go
            # out with the next flush, which outside a read (a retry after its backoff)
            # nothing else would schedule.
            up_conn.flush()
        else:
            up_conn.pump(up)

    def _take_over(
        self, reason: str, status: int, grpc_status: bytes | None
    ) -> H2Connection | None:
        """Stop the upstream stream so that the proxy answers the client itself: the
        client's connection to answer on, or None when a response had begun (the
        client's stream is reset instead)."""
        down = self.down
        conn = down.conn
        assert conn is not None
        log.warning("%s", reason)
        started = self.status or conn.closed
        if not started:
            # Set first: cancelling upstream may end the pair, which counts it.
            self.status = status
            self.grpc_status = grpc_status
        up = self.up
        if up.conn is not None:
            up.conn.reset(up, h2.errors.ErrorCodes.CANCEL)
        drop_pending(up)
        down.other = None
        if started:
            conn.reset(down, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.finish()
            return None
        self.own_answer = True
        return conn

    def reply(self, status: int, reason: str, retry_after: bytes | None = None) -> None:
        """Answer the downstream stream with a proxy-made error (`gossamer-error`, and
        `retry-after` in seconds when given)."""
        carrier = self.down.carrier
        if carrier is not None:
            up = self.up
            if up.conn is not None:
                up.conn.reset(up, h2.errors.ErrorCodes.CANCEL)
            drop_pending(up)
            cast(Receiver, carrier).fail(status, reason)
            return
        conn = self._take_over(reason, status, None)
        if conn is None:
            return
        down = self.down
        body = reason.encode("utf-8", "replace") + b"\n"
        headers = [
            (b":status", b"%d" % status),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"gossamer-error", reason.encode("ascii", "replace")),
            (b"content-length", b"%d" % len(body)),
        ]
        if retry_after:
            headers.append((b"retry-after", retry_after))
        try:
            conn.h2.send_headers(down.stream_id, headers)
        except h2.exceptions.H2Error:
            self.finish()
            return
        down.pending.append([body, 0])
        down.ended = True
        conn.pump(down)

    def reply_grpc(self, code: int, reason: str, retry_after: bytes | None = None) -> None:
        """Answer a gRPC call with a proxy-made error, the way gRPC clients read one: a
        trailers-only response (HTTP 200, `grpc-status`, `grpc-message`), with
        `gossamer-error` as well. A stream already opened upstream is cancelled.
        `retry_after` (seconds) becomes gRPC's `grpc-retry-pushback-ms`."""
        grpc_status = b"%d" % code
        conn = self._take_over(reason, 200, grpc_status)
        if conn is None:
            return
        down = self.down
        headers = [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", grpc_status),
            (b"grpc-message", _grpc_message(reason)),
            (b"gossamer-error", reason.encode("ascii", "replace")),
        ]
        if retry_after:
            headers.append((b"grpc-retry-pushback-ms", b"%d" % (int(retry_after) * 1000)))
        try:
            conn.h2.send_headers(down.stream_id, headers, end_stream=True)
        except h2.exceptions.H2Error:
            self.finish()
            return
        down.sent_end = True
        conn._settle(down)
        conn.flush()

    @property
    def outcome(self) -> int:
        """The status a finished stream is counted with: its answer's, else 499 (nginx's
        client-closed-request, as an HTTP/1.1 exchange counts it) when the client left
        first, else 502."""
        return self.status or (CLIENT_GONE if self.client_gone else 502)

    def finish(self) -> None:
        if not self.done:
            self.done = True
            if self.in_flight is not None:
                self.in_flight.give()
            if self.on_done is not None:
                self.on_done(self)
            self._unlink()

    def _unlink(self) -> None:
        """Break the pair's reference cycles (half to pair, half to half, pair to its
        owner's callbacks and carriers), so that it is freed when its last reference
        goes rather than by the cyclic garbage collector: with a stream per request,
        collecting them cost 3-4 us of CPU per request per proxy (decision 0111).

        A half still open on its connection (the proxy answered before the client ended
        its request) then reads as one whose pair is over: what comes on it is
        acknowledged and dropped, its end forgets it."""
        self.on_done = self.on_reset = self.on_response = None
        self.response_edit = None
        for half in (self.down, self.up):
            half.other = None
            half.carrier = None
            half.pair = _ENDED


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection, either end; see the module docstring."""

    def __init__(
        self,
        *,
        client_side: bool,
        handler: StreamHandler | None = None,
        on_lost: Callable[[H2Connection], None] | None = None,
        name: str = "peer",
    ) -> None:
        self.h2: Engine
        session = h2codec.active.session
        if session is not None:
            # nghttp2_session (decision 0102): the per-frame limits _GuardedH2 counts
            # are counted in C, with these values.
            self.h2 = session(
                client_side,
                initial_window=STREAM_WINDOW,
                max_streams=MAX_STREAMS,
                max_header_list=MAX_HEADER_LIST_SIZE,
                control_limit=CONTROL_FRAME_LIMIT,
                empty_limit=EMPTY_FRAME_LIMIT,
                wu_per_data=WINDOW_UPDATES_PER_DATA_FRAME,
                wu_base=WINDOW_UPDATE_BASE,
                max_continuations=MAX_CONTINUATIONS,
                flood=_Flood,
            )
        else:
            config = h2.config.H2Configuration(
                client_side=client_side,
                header_encoding=None,
                # Checked by `malformed` instead: the same rules at about half the cost.
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
            guarded = _GuardedH2(config)
            guarded.local_settings = h2.settings.Settings(
                client=client_side,
                initial_values={
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
                },
            )
            self.h2 = guarded
        self.handler = handler
        self.on_lost = on_lost
        self.name = name
        self.client_side = client_side
        # DATA handed to the engine since the last write, and whether `pump` left some
        # for after it (WRITE_BUDGET).
        self._unwritten = 0
        self._deferred = False
        # The data plane's cap on requests at once (proxy.wire.limits): a new stream
        # from the client takes a place, its StreamPair gives it back.
        self.in_flight: InFlight | None = None
        self.transport: asyncio.Transport | None = None
        self.halves: dict[int, _Half] = {}
        self.closed = False
        self.write_paused = False
        # A GOAWAY went one way or the other: no new streams; closed once idle.
        self.draining = False
        self.streams = 0  # opened on this connection, by either end
        self._premature = 0  # streams the client reset early (server side)
        self._unread_refusals = 0  # streams refused while writing was paused
        # For `sweep`: since when the connection has had no stream (None: it has one),
        # since when writing is paused, and each stalled stream's (bytes sent, since).
        self._idle_since: float | None = None
        self._paused_at = 0.0
        self._taken_at_pause = 0  # what the client had taken at the last look (limits.taken)
        self._stalls: dict[int, tuple[int, float]] = {}
        self._last_taken = 0  # the last stream the peer opened that was taken
        # A write is owed: what h2 has to send goes out once, at the end of this loop
        # turn, not once per event (see `flush`).
        self._flush_scheduled = False
        self._call_soon: Callable[[Callable[[], None]], object] | None = None  # (flush)
        # Whether the peer's first SETTINGS came, and who waits for it (streams.Links:
        # a new connection takes streams once it is known how many).
        self.peer_settings = False
        self.settled: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        window = UPSTREAM_CONNECTION_WINDOW if self.client_side else CONNECTION_WINDOW
        self.h2.increment_flow_control_window(window - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        outermost = _owed is None
        if outermost:
            _begin_read()
        try:
            events = self.h2.receive_data(data)
            for event in events:
                self._event(event)
        except h2.exceptions.ProtocolError as e:
            self.fail(_error_code(e), f"HTTP/2 protocol error from {self.name}: {e}")
        else:
            self.flush()
        finally:
            if outermost:
                _end_read()

    def eof_received(self) -> bool:
        # The peer will send nothing more (a FIN, or TLS close_notify): HTTP/2 has no
        # half-close, so the connection ends. Closed here, within DELAYED_CLOSE, not by
        # the transport (keep_open_at_eof says why).
        keep_open = keep_open_at_eof(self.transport)
        self.close()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.settled is not None and not self.settled.done():
            self.settled.set_result(None)  # the waiter sees `closed`
        halves, self.halves = self.halves, {}
        for half in halves.values():
            _lost(half, f"upstream reset: {self.name} closed the connection")
        if self.on_lost is not None:
            self.on_lost(self)
        self.transport = LOST  # freed now, not by the cycle collector (limits.LOST)

    def pause_writing(self) -> None:
        # The peer is not reading: `pump` stops handing its streams' queues to the
        # engine, so their senders get no more credit and stop at their windows.
        # Without this a client that opened its windows and never read made the proxy
        # buffer whole responses (megabytes) in the transport.
        self.write_paused = True
        self._paused_at = monotonic()
        if self.transport is not None:
            self._taken_at_pause = taken(self.transport)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._unread_refusals = 0
        if not self.closed:
            self._pump_all()

    # ---- events ------------------------------------------------------------------------

    def _event(self, event: h2.events.Event) -> None:
        handler = _EVENT_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        """DATA: on to the other half, as its window allows."""
        stream_id = event.stream_id or 0
        half = self.halves.get(stream_id)
        other = half.other if half is not None else None
        if half is None or other is None:
            self.h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
            return
        data = event.data or b""
        half.moved += len(data)
        other.pending.append([data, event.flow_controlled_length or 0])
        pair = other.pair
        if pair.replay is not None and other is pair.up:
            pair.keep(data)
        if other.conn is not None:
            if event.stream_ended is not None and not other.sent_end:
                # The end rides on this DATA frame: send it on the last one too,
                # not as an empty DATA frame of its own (StreamEnded comes next).
                other.ended = True
            if _pumps is None:
                other.conn.pump(other)
            elif len(other.pending) == 1:
                # Sent when the read is handled: what else it brings for this stream
                # goes in the same DATA frame (`pump`).
                _pumps.append(other)
        elif other.carrier is not None:
            carry(other)

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        """A new stream from a client: checked, counted, handed to the side."""
        stream_id = event.stream_id
        assert stream_id is not None and event.headers is not None
        if self.draining:
            self.h2.control_frame()
            with contextlib.suppress(h2.exceptions.H2Error):  # reset meanwhile
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self.streams += 1
        self._last_taken = stream_id
        self._idle_since = None  # busy since the last sweep, if only between sweeps
        headers = list(event.headers)
        if len(headers) > MAX_HEADERS and (fields := _fields(headers)) > MAX_HEADERS:
            self._too_many_fields(stream_id, fields, event.stream_ended is not None)
        elif (reason := malformed(headers, REQUEST_PSEUDO)) is not None:
            self._malformed(stream_id, reason)
        else:
            if self.handler is None:
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                return
            limit = self.in_flight
            if limit is not None and not limit.take():
                # Not processed: the client may send it again (RFC 9113 8.7).
                self._refuse_over_cap(stream_id)
                return
            self.handler.new_stream(self, stream_id, headers)
        if self.streams >= MAX_STREAMS_PER_CONNECTION:
            self.go_away(
                h2.errors.ErrorCodes.NO_ERROR,
                f"{self.name}: {self.streams} streams on one connection: GOAWAY, for "
                "the client to open another",
            )

    def _refuse_over_cap(self, stream_id: int) -> None:
        """REFUSED_STREAM for a stream over the data plane's cap on requests in flight.

        A refusal the client reads costs this end less than a 404 (no routing, no
        upstream): a client proxy in front of a busy workload may meet hundreds a
        second, and its shared link must not be cut off as a flood for them (it was,
        at CONTROL_FRAME_LIMIT a second). What a refusal must not do is queue here:
        while the client reads nothing (writing paused), each one counts, and more
        than CONTROL_FRAME_LIMIT of them queued is a flood (Envoy's bound on queued
        control frames, `max_outbound_control_frames`)."""
        if self.write_paused:
            self._unread_refusals += 1
            if self._unread_refusals > CONTROL_FRAME_LIMIT:
                raise _Flood(
                    f"{self._unread_refusals} streams refused (over the cap on requests "
                    "in flight) while the client read none of the refusals"
                )
        self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        """A response head from upstream: the side may take it over (a retry); else on."""
        if event.headers is None:
            return
        headers = list(event.headers)
        if (reason := malformed(headers, RESPONSE_PSEUDO)) is not None:
            self._malformed(event.stream_id or 0, reason)
            return
        half = self.halves.get(event.stream_id or 0)
        if half is None or half.other is None:
            return
        pair = half.pair
        status = header(headers, b":status")
        pair.status = int(status) if status and status.isdigit() else 502
        ended = event.stream_ended is not None
        if ended:
            pair.grpc_status = header(headers, b"grpc-status")
        hook = pair.on_response
        if hook is not None and hook(pair, pair.status, pair.grpc_status):
            return  # tried again: this response goes nowhere
        pair.replay = None  # no more tries: the copy of the request is not needed
        other = half.other
        if other.conn is None:
            if other.carrier is not None:
                cast(Receiver, other.carrier).response(headers, ended)
            return
        fwd = forwardable(headers)
        edit = pair.response_edit
        if edit is not None:
            pseudo = [(n, v) for n, v in fwd if n[:1] == b":"]
            plain = edit([(n, v) for n, v in fwd if n[:1] != b":"])
            fwd = pseudo + [(n.lower(), v) for n, v in plain]
        try:
            other.conn.h2.send_headers(other.stream_id, fwd, end_stream=ended)
        except h2.exceptions.H2Error:
            # The client's stream is gone (reset meanwhile): only this one ends.
            other.conn.forget(other)
            self.reset(half, h2.errors.ErrorCodes.CANCEL)
            return
        if ended:
            other.sent_end = True
            other.conn._settle(other)
        other.conn.flush()

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        """Trailers (gRPC's status among them), sent on after the last DATA."""
        if event.headers is None:
            return
        trailers = list(event.headers)
        half = self.halves.get(event.stream_id or 0)
        if len(trailers) > MAX_HEADERS and half is not None and half is half.pair.down:
            half.pair.reply(
                431,
                f"request trailers have {len(trailers)} fields, more than {MAX_HEADERS}",
            )
            return
        if (reason := malformed(trailers, TRAILER_PSEUDO)) is not None:
            self._malformed(event.stream_id or 0, reason)
            return
        if half is None or half.other is None:
            return
        trailers = forwardable(trailers)
        if half.pair.up is half:
            half.pair.grpc_status = header(trailers, b"grpc-status")
        else:
            half.pair.replay = None  # request trailers: not sent again
        other = half.other
        other.trailers = trailers
        other.ended = True
        if other.conn is not None:
            other.conn.pump(other)
        elif other.carrier is not None:
            carry(other)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        """This end of the stream is done: the other half ends once its queue is sent."""
        half = self.halves.get(event.stream_id or 0)
        if half is None:
            return
        half.recv_end = True
        other = half.other
        if other is not None and not other.ended and not other.sent_end:
            other.ended = True
            if other.conn is not None:
                other.conn.pump(other)
            elif other.carrier is not None:
                carry(other)
        self._settle(half)

    def _on_stream_reset(self, event: h2.events.StreamReset) -> None:
        """The peer reset a stream: its pair ends, unless the side tries again."""
        half = self.halves.pop(event.stream_id or 0, None)
        if half is not None:
            pair = half.pair
            if half is pair.down and not pair.status:
                pair.client_gone = True
                if perf_counter() - pair.started < PREMATURE_RESET_LIFETIME:
                    self._premature_reset()
            code = event.error_code or h2.errors.ErrorCodes.CANCEL
            if half is pair.up and code == h2.errors.ErrorCodes.REFUSED_STREAM:
                if pair.status or pair.interim:
                    # Answered, then "refused": the request was processed, whatever
                    # the code says; passed on as such, the client would send it again.
                    code = h2.errors.ErrorCodes.INTERNAL_ERROR
                else:
                    pair.refused = STREAM_REFUSED
            on_reset = pair.on_reset if half is pair.up and not pair.status else None
            if on_reset is not None and on_reset(pair):
                return
            _reset_other(half, code)
            half.pair.finish()

    def _on_window_updated(self, event: h2.events.WindowUpdated) -> None:
        """More window: send what waited for it."""
        if event.stream_id:
            half = self.halves.get(event.stream_id)
            if half is not None:
                self.pump(half)
        else:
            self._pump_all()

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        """New settings may open windows: send what waited. The first says how many
        streams the peer takes (until then the engine assumes 100): see `settled`."""
        if not self.peer_settings:
            self.peer_settings = True
            if self.settled is not None and not self.settled.done():
                self.settled.set_result(None)
        self._pump_all()

    def _on_terminated(self, event: h2.events.ConnectionTerminated) -> None:
        """GOAWAY (see _went_away)."""
        self._went_away(event.last_stream_id or 0, event.error_code or 0)

    def _on_informational(self, event: h2.events.InformationalResponseReceived) -> None:
        """A 1xx (100 Continue to a request that expects it): checked as a response head
        is (a malformed one ends its stream), then passed on as it is."""
        if event.headers is None:
            return
        headers = list(event.headers)
        if (reason := malformed(headers, RESPONSE_PSEUDO)) is not None:
            self._malformed(event.stream_id or 0, reason)
            return
        half = self.halves.get(event.stream_id or 0)
        if half is None or half.other is None:
            return
        other = half.other
        if other.conn is not None:
            half.pair.interim = True
            with contextlib.suppress(h2.exceptions.H2Error):
                other.conn.h2.send_headers(other.stream_id, forwardable(headers))
            other.conn.flush()
        elif other.carrier is not None:
            half.pair.interim = True
            cast(Receiver, other.carrier).informational(headers)

    def _malformed(self, stream_id: int, reason: str) -> None:
        """A malformed header block (RFC 9113 8.1.1): a stream error, PROTOCOL_ERROR on
        that stream only. A link between proxies carries many callers' streams, and one
        app's bad response (or request) must not end the others'. The pair goes as if
        the peer had reset the stream: a client still waiting for its answer gets a 502
        (or the retry policy's try on `reset`). Counted like a control frame, so a peer
        that sends nothing else is cut off as a flood."""
        _per_stream_log.warning(
            "malformed",
            "malformed header block from %s (stream %d): %s",
            self.name,
            stream_id,
            reason,
        )
        self.h2.control_frame()
        with contextlib.suppress(h2.exceptions.H2Error):  # reset meanwhile
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        half = self.halves.pop(stream_id, None)
        if half is not None:
            half.sent_end = half.recv_end = True
            drop_pending(half)
            _lost(
                half,
                f"{self.name} sent a malformed header block: {reason}",
                h2.errors.ErrorCodes.INTERNAL_ERROR,  # gRPC: INTERNAL, not CANCELLED
            )

    def _premature_reset(self) -> None:
        self._premature += 1
        premature = self._premature
        if 2 * premature >= max(PREMATURE_RESET_STREAMS, self.streams):
            self.go_away(
                h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                f"{self.name} reset {premature} of its {self.streams} streams before "
                "their answers (rapid reset): GOAWAY",
            )

    def _too_many_fields(self, stream_id: int, count: int, ended: bool) -> None:
        """Answer a request whose header block is too long 431, and end its stream."""
        reason = f"request has {count} header fields, more than {MAX_HEADERS}"
        _per_stream_log.warning("too many fields", "%s from %s", reason, self.name)
        with contextlib.suppress(h2.exceptions.H2Error):  # the client reset it meanwhile
            self.h2.send_headers(
                stream_id,
                [(b":status", b"431"), (b"gossamer-error", reason.encode())],
                end_stream=True,
            )
            if not ended:
                # The rest of the request is not wanted (RFC 9113 8.1: a complete
                # answer, then RST_STREAM NO_ERROR).
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def go_away(self, code: int, reason: str, level: int = logging.WARNING) -> None:
        """Say GOAWAY and take no new streams: the open ones finish, then the connection
        closes. h2 sends nothing at all after a GOAWAY of its own, so the frame is made
        here and h2 goes on for the streams that are left."""
        if self.draining or self.closed or self.transport is None:
            return
        log.log(level, "%s", reason)
        self._write_out()  # what h2 has queued goes first
        self.draining = True
        # Not h2's highest_inbound_stream_id: h2 has read the whole read's frames, and
        # streams after this event's are refused, not taken.
        last = self._last_taken
        if not self.transport.is_closing():
            self.transport.write(GoAwayFrame(0, last_stream_id=last, error_code=code).serialize())
        self.flush()  # and closes the connection if no stream is open

    def _went_away(self, last_stream_id: int, code: int) -> None:
        """The peer said GOAWAY: the streams this end opened after `last_stream_id` were
        not taken, and fail as if the connection were lost (or are tried again); the
        others finish, then the connection closes."""
        self.draining = True
        if code:
            log.warning("%s said GOAWAY with error %d", self.name, code)
        mine = 0 if self.h2.server_side else 1
        refused = [
            half for sid, half in self.halves.items() if sid > last_stream_id and sid % 2 == mine
        ]
        for half in refused:
            del self.halves[half.stream_id]
            if not half.pair.status and not half.pair.interim:
                half.pair.refused = GOAWAY_REFUSED
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.reset_stream(half.stream_id, h2.errors.ErrorCodes.CANCEL)
            _lost(half, f"upstream refused the stream: {self.name} said GOAWAY")
        self.flush()

    def forget(self, half: _Half) -> None:
        self.halves.pop(half.stream_id, None)

    def _settle(self, half: _Half) -> None:
        """Forget a stream both ends have ended; the pair is done when its client's is."""
        if half.recv_end and half.sent_end:
            self.halves.pop(half.stream_id, None)
            if half is half.pair.down:
                half.pair.finish()
        elif half.sent_end and half.pair.own_answer and half is half.pair.down:
            # The proxy answered the client itself (a 404, a 403, a 503: `_take_over`)
            # before the client ended its request: the pair is over (counted, its place
            # under the data plane's cap given back) though the stream stays open until
            # the client ends it, its DATA acknowledged and dropped (`other` is None), as
            # MAX_STREAMS bounds. Not RST_STREAM NO_ERROR (RFC 9113 8.1): nghttp2 sends an
            # RST_STREAM ahead of the HEADERS still queued, and gRPC clients then see the
            # reset, not the status.
            half.pair.finish()

    # ---- sending -----------------------------------------------------------------------

    def pump(self, half: _Half) -> None:
        """Send what is queued on `half` as far as the windows allow."""
        if self.closed or half.sent_end or self.write_paused:
            return  # (paused: `resume_writing` pumps every stream again)
        h2conn = self.h2
        stream_id = half.stream_id
        other = half.other
        try:
            pending = half.pending
            while pending:
                if self._unwritten >= WRITE_BUDGET:
                    # Enough for one write: the rest after it (`_write_out`), or once
                    # the peer reads again (`resume_writing`).
                    self._deferred = True
                    break
                item = pending[0]
                data = cast(bytes, item[0])
                ack = cast(int, item[1])
                window = min(
                    h2conn.local_flow_control_window(stream_id), h2conn.max_outbound_frame_size
                )
                if window <= 0 and data:
                    break
                if len(pending) > 1 and len(data) < window:
                    # Many small DATA frames came in one read (a stream of gRPC
                    # messages): as many as fit go on in one frame, which h2 costs
                    # as much to send as each of them would.
                    item = _coalesce(pending, window)
                    data = cast(bytes, item[0])
                    ack = cast(int, item[1])
                if len(data) > window:
                    h2conn.send_data(stream_id, data[:window])
                    self._unwritten += window
                    half.moved += window
                    item[0] = data[window:]
                    item[1] = max(ack - window, 0)
                    ack = min(ack, window)
                else:
                    # The last DATA carries END_STREAM when no trailers follow.
                    last = half.ended and half.trailers is None and len(pending) == 1
                    if data or last:
                        h2conn.send_data(stream_id, data, end_stream=last)
                        self._unwritten += len(data)
                        half.moved += len(data)
                    pending.popleft()
                    if last:
                        half.ended = False
                        half.sent_end = True
                if ack and other is not None and other.conn is not None and not other.conn.closed:
                    other.conn.h2.acknowledge_received_data(ack, other.stream_id)
                    other.conn.flush()
                elif ack and other is not None and other.carrier is not None:
                    other.carrier.sent(ack)
            if not pending and half.ended:
                half.ended = False
                half.sent_end = True
                if half.trailers is not None:
                    h2conn.send_headers(stream_id, half.trailers, end_stream=True)
                else:
                    h2conn.end_stream(stream_id)
            if half.sent_end:
                self._settle(half)
        except h2.exceptions.StreamClosedError:
            self.halves.pop(stream_id, None)
            half.pair.finish()
        except h2.exceptions.H2Error as e:
            log.debug("HTTP/2 stream %d to %s: %s", stream_id, self.name, e)
            self.reset(half, h2.errors.ErrorCodes.INTERNAL_ERROR)
        self.flush()

    def _pump_all(self) -> None:
        for half in list(self.halves.values()):
            if half.pending or half.ended:
                self.pump(half)

    def sweep(self, now: float, idle_timeout: float, stream_idle_timeout: float) -> None:
        """Called about once a second on a client's connection: the timeouts no frame
        would ever fire (decision 0114). A client that reads none of what is sent to it
        for `idle_timeout` loses its connection, and a connection with no stream for as
        long is closed with GOAWAY NO_ERROR (Envoy's connection idle timeout). A stream
        on which nothing moves for `stream_idle_timeout` while something is owed is
        reset (CANCEL, and its upstream with it: it holds an upstream and a place under
        the cap on requests in flight): its data waits for a window the client keeps
        shut, or its request is not over and no answer has begun (a body announced and
        not sent). (Envoy's stream idle timeout: a gRPC stream may be quiet longer than
        a connection may be idle.)"""
        if self.closed:
            return
        if self.write_paused:
            took = -1 if self.transport is None else taken(self.transport)
            if took != self._taken_at_pause:
                # It reads, if slowly (the buffer is not down to its low mark yet).
                self._paused_at, self._taken_at_pause = monotonic(), took
            elif monotonic() - self._paused_at > idle_timeout:
                log.info("%s read nothing for %gs: closed", self.name, idle_timeout)
                if self.transport is not None:
                    self.transport.abort()
                return
        halves = self.halves
        if not halves:
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since > idle_timeout:
                self.go_away(
                    h2.errors.ErrorCodes.NO_ERROR,
                    f"{self.name}: no stream for {idle_timeout:g}s: GOAWAY, closed",
                    logging.INFO,
                )
                self.close()
            return
        self._idle_since = None
        stalls, self._stalls = self._stalls, {}
        for stream_id, half in list(halves.items()):
            owed_out = half.pending and not half.sent_end and not self.write_paused
            owed_in = not half.recv_end and not half.pair.status and not half.pair.done
            if not owed_out and not owed_in:
                continue
            moved, since = stalls.get(stream_id, (-1, now))
            if moved != half.moved:
                since = now  # it moved since the last look
            elif now - since > stream_idle_timeout:
                log.info(
                    "%s: stream %d: nothing moved for %gs (%s): reset",
                    self.name,
                    stream_id,
                    stream_idle_timeout,
                    "its window shut" if owed_out else "its request body not coming",
                )
                _reset_other(half, h2.errors.ErrorCodes.CANCEL)  # before `reset` unlinks it
                self.reset(half, h2.errors.ErrorCodes.CANCEL)
                continue
            self._stalls[stream_id] = (half.moved, since)

    def reset(self, half: _Half, code: int) -> None:
        self.halves.pop(half.stream_id, None)
        drop_pending(half)
        half.sent_end = True
        half.pair.finish()
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.reset_stream(half.stream_id, code)
        self.flush()

    def flush(self) -> None:
        """Have what h2 has to send written once, after the work at hand.

        One read can hold many streams' frames, and each event queues frames here or on
        a stream's other connection; writing per event cost a write (and on TLS a
        record) each. During a read, the write waits for the read's end, so every
        connection it touched gets one write (see `_end_read`); otherwise (a callback,
        a connect completing) for the end of this loop turn (`call_soon`). Writing at
        the read's end rather than at the turn's lets the next hop start sooner: with
        calls in flight through two proxies sharing cores, that kept more of them busy
        (1.16x the calls/s at the same CPU per call; decision 0044).
        """
        if self._flush_scheduled or self.closed:
            return
        self._flush_scheduled = True
        if _owed is not None:
            _owed.append(self)
        else:
            soon = self._call_soon
            if soon is None:
                # Looked up once: get_running_loop() makes a getpid() system call each
                # time (twice a request on the stream path, which writes outside reads).
                soon = self._call_soon = asyncio.get_running_loop().call_soon
            soon(self._write_out)

    def _write_out(self) -> None:
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)  # (may call pause_writing)
        self._unwritten = 0
        if self._deferred and not self.write_paused and not self.closed:
            self._deferred = False
            self._pump_all()
        if self.draining and not self.halves:
            self.close()

    def fail(self, code: int, reason: str) -> None:
        """Close the connection with GOAWAY `code` (unless h2 has already sent one)."""
        log.warning("%s", reason)
        if not self.h2.terminated:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.close_connection(error_code=code)
        self.close()

    def close(self) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            self.closed = True
            data = self.h2.data_to_send()  # what is owed (a GOAWAY) goes before the close
            if data and not transport.is_closing():
                transport.write(data)
            close_soon(transport)


# What an ended pair's halves point to (StreamPair._unlink): a pair that is done.
_ENDED: Final = StreamPair(None, 0, 0.0)
_ENDED.done = True


# What a header block may carry besides MAX_HEADERS fields: the pseudo-headers, and the
# mesh's own fields a peer proxy adds (an HTTP/1.1 request the app sent with MAX_HEADERS
# fields passes between proxies as a stream as it does as HTTP/1.1).
_NOT_COUNTED: Final = frozenset((SRC_SERVICE_HEADER, ORIG_PROTO_HEADER))


def _fields(headers: Headers) -> int:
    """The header fields a request's limit counts (MAX_HEADERS, as for HTTP/1.1)."""
    return sum(1 for name, _ in headers if name[:1] != b":" and name not in _NOT_COUNTED)


def _lost(half: _Half, reason: str, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
    """`half`'s stream is gone with its connection (or was refused by a GOAWAY, or
    ended for a malformed block): the other half is answered 502 if no answer began
    (REFUSED_STREAM, for its client to send it again, if the upstream refused it
    unprocessed), else reset with `code`."""
    pair = half.pair
    other = half.other
    if half is pair.down and not pair.status:
        pair.client_gone = True
    if half is pair.up and not pair.status:
        if pair.on_reset is not None and pair.on_reset(pair):
            return
        if pair.refused and other is not None and other.conn is not None:
            other.conn.reset(other, h2.errors.ErrorCodes.REFUSED_STREAM)
            pair.finish()
            return
        pair.reply(502, reason)
    elif other is not None and other.conn is not None:
        other.conn.reset(other, code)
        pair.finish()
    else:
        pair.finish()


# h2's own frame handling and sending, called directly rather than through super(),
# which would make an object per frame.
_h2_receive_frame: Final = h2.connection.H2Connection._receive_frame
_h2_send_data: Final = h2.connection.H2Connection.send_data
_h2_end_stream: Final = h2.connection.H2Connection.end_stream
_h2_terminate: Final = h2.connection.H2Connection._terminate_connection
_h2_data_on_closed: Final = h2.connection.H2Connection._handle_data_on_closed_stream


class _Stream(h2.stream.H2Stream):
    """h2's stream, but a 304's content-length is the size of what was not sent (RFC
    9110 8.6, 15.4.5): no body is expected, as for a response to HEAD, which h2 knows.
    An HTTP/1.1 app's 304 often says its length; without this, h2 took the 304 ending
    with its HEADERS for a body cut short and ended the whole connection (a link between
    proxies, with everyone's streams). nghttp2 knows 304s itself."""

    def _initialize_content_length(self, headers: Iterable[Any]) -> None:
        super()._initialize_content_length(headers)
        if self._expected_content_length:
            for name, value in headers:
                if name == b":status":
                    if value == b"304":
                        self._expected_content_length = 0
                    break


class _GuardedH2(h2.connection.H2Connection):
    """h2's connection, with each frame received counted before h2 acts on it.

    The flood limits count frames, not h2's events: a DATA or HEADERS frame on a stream
    already reset makes no event (h2 answers it with an RST_STREAM), a PING ACK or a
    frame of an unknown type makes one that nothing would count, and a HEADERS frame
    with a priority makes the same event as a PRIORITY frame. Per frame this is a type
    check and, for DATA, a look at its payload: no allocation.

    WINDOW_UPDATE frames are limited as Envoy limits them
    (`ProtocolConstraints::checkInboundFrameLimits`): more than
    WINDOW_UPDATE_BASE + 2 x (streams opened + WINDOW_UPDATES_PER_DATA_FRAME x DATA
    frames sent) over the connection's life is a flood. A peer sends them to return
    credit for DATA this end sent, and perhaps once for the connection and once per
    stream to widen a window, so no honest peer comes near: the counts are of frames,
    not bytes, and each DATA frame sent (however small) earns twenty.

    A GOAWAY is not given to h2, which would refuse every frame after it, even those
    of the streams the GOAWAY lets finish; it becomes a ConnectionTerminated event
    here, and H2Connection drains the connection.
    """

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        h2codec.install(self)  # HPACK in C where it was built (decision 0097)
        self.server_side = not config.client_side
        self.control = 0  # control frames since control_since
        self.control_since = 0.0
        self.empty = 0  # empty DATA frames in a row
        self.window_updates = 0  # WINDOW_UPDATE frames received
        self.data_sent = 0  # DATA frames sent
        # Streams opened, by either end: a peer's when its HEADERS frame is read (not
        # when its event is handled: a WINDOW_UPDATE for a stream may follow the
        # stream's HEADERS in the same read, before any event is), this end's by
        # H2Connection when it sends one.
        self.opened = 0
        self._peer_opened = 0  # the highest stream id the peer opened
        self._reset_before = False  # the DATA frame being read is on a stream this end reset

    def _begin_new_stream(
        self, stream_id: int, allowed_ids: h2.connection.AllowedStreamIDs
    ) -> h2.stream.H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = _Stream
        return stream

    @property
    def terminated(self) -> bool:
        """This end sent GOAWAY (h2 sends nothing after it)."""
        return self.state_machine.state is h2.connection.ConnectionState.CLOSED

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        if isinstance(frame, HeadersFrame) and frame.stream_id > self._peer_opened:
            opener = frame.stream_id % 2 == (1 if self.server_side else 0)
            if opener:
                self._peer_opened = frame.stream_id
                self.opened += 1
        if isinstance(frame, (DataFrame, HeadersFrame)):
            # Envoy's rule: a DATA frame with neither payload nor END_STREAM is empty;
            # any other DATA or HEADERS frame ends a run of them.
            if isinstance(frame, HeadersFrame) or frame.data or "END_STREAM" in frame.flags:
                self.empty = 0
            else:
                self.empty += 1
                if self.empty > EMPTY_FRAME_LIMIT:
                    raise _Flood(f"{self.empty} empty DATA frames in a row")
                self.control_frame()
            # Reset by this end before this frame came (not by h2 because of it).
            self._reset_before = (
                isinstance(frame, DataFrame)
                and self._stream_closed_by(frame.stream_id) is StreamClosedBy.SEND_RST_STREAM
            )
            events = _h2_receive_frame(self, frame)
            if not events and self.server_side:
                # It made nothing happen: no better than a PING. Not counted from an
                # upstream, whose frames in flight when this proxy cancels a stream
                # (a client went away) are many more than a client's are.
                self.control_frame()
            return events
        if isinstance(frame, WindowUpdateFrame):
            self.window_updates += 1
            if self.window_updates > WINDOW_UPDATE_BASE + 2 * (
                self.opened + WINDOW_UPDATES_PER_DATA_FRAME * self.data_sent
            ):
                raise _Flood(
                    f"{self.window_updates} WINDOW_UPDATE frames for {self.data_sent} DATA "
                    f"frames sent and {self.opened} streams opened (more than "
                    f"{WINDOW_UPDATES_PER_DATA_FRAME} per DATA frame)"
                )
            return _h2_receive_frame(self, frame)
        if isinstance(frame, RstStreamFrame) and not self.server_side:
            # An upstream may end every stream it answered with RST_STREAM (NO_ERROR:
            # "stop sending the body", RFC 9113 8.1; nginx does, at any rate): they are
            # bounded by the streams this proxy opens, so not counted as a flood.
            return _h2_receive_frame(self, frame)
        self.control_frame()
        if isinstance(frame, GoAwayFrame):
            event = h2.events.ConnectionTerminated()
            event.error_code = frame.error_code
            event.last_stream_id = frame.last_stream_id
            event.additional_data = frame.additional_data
            return [event]
        return _h2_receive_frame(self, frame)

    def send_data(
        self,
        stream_id: int,
        data: bytes | memoryview,
        end_stream: bool = False,
        pad_length: int | None = None,
    ) -> None:
        _h2_send_data(self, stream_id, data, end_stream, pad_length)
        self.data_sent += 1

    def end_stream(self, stream_id: int) -> None:
        _h2_end_stream(self, stream_id)  # an empty DATA frame with END_STREAM
        self.data_sent += 1

    def _handle_data_on_closed_stream(
        self,
        events: list[h2.events.Event],
        exc: h2.exceptions.StreamClosedError,
        frame: DataFrame,
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        # DATA on a stream this end reset: h2 credits the connection's window and answers
        # every such frame with another RST_STREAM. RFC 9113 5.1 says to ignore them: the
        # peer sent them before it saw the reset. A server stream cancelled with a window
        # of DATA in flight made a thousand RST_STREAMs, which the peer proxy rightly
        # counted as a flood and closed the link, every other stream on it with it.
        frames, events = _h2_data_on_closed(self, events, exc, frame)
        if self._reset_before:
            frames = [f for f in frames if not isinstance(f, RstStreamFrame)]
        return frames, events

    def _terminate_connection(self, error_code: h2.errors.ErrorCodes) -> None:
        # h2 calls this in its `except ProtocolError` when a received frame is bad, to
        # send its GOAWAY: the error in hand may deserve a more precise code.
        err = sys.exception()
        if isinstance(err, h2.exceptions.ProtocolError):
            error_code = _error_code(err)
        _h2_terminate(self, error_code)

    def control_frame(self) -> None:
        """Count a frame that carries nothing to a stream; too many a second are a flood."""
        now = monotonic()
        if now - self.control_since > 1.0:
            self.control_since = now
            self.control = 0
        self.control += 1
        if self.control > CONTROL_FRAME_LIMIT:
            raise _Flood(f"more than {CONTROL_FRAME_LIMIT} control frames in a second")


# What each event of h2 does: a type lookup per event, not a chain of isinstance.
_EVENT_HANDLERS: Final[dict[type[h2.events.Event], Callable[[H2Connection, Any], None]]] = {
    h2.events.DataReceived: H2Connection._on_data,
    h2.events.RequestReceived: H2Connection._on_request,
    h2.events.ResponseReceived: H2Connection._on_response,
    h2.events.TrailersReceived: H2Connection._on_trailers,
    h2.events.StreamEnded: H2Connection._on_stream_ended,
    h2.events.StreamReset: H2Connection._on_stream_reset,
    h2.events.WindowUpdated: H2Connection._on_window_updated,
    h2.events.RemoteSettingsChanged: H2Connection._on_settings,
    h2.events.ConnectionTerminated: H2Connection._on_terminated,
    h2.events.InformationalResponseReceived: H2Connection._on_informational,
}


def _error_code(e: h2.exceptions.ProtocolError) -> h2.errors.ErrorCodes:
    """The GOAWAY code for a peer's error, where h2 names a vaguer one than RFC 9113.

    h2 ends the connection with PROTOCOL_ERROR for a header block that cannot be
    decoded (the HPACK codec's error is the cause), where RFC 9113 4.3 says
    COMPRESSION_ERROR, and for a SETTINGS ACK with a payload, where 6.5 says
    FRAME_SIZE_ERROR (hyperframe refuses it with InvalidDataError). h2spec checks both
    (tests/proxy/test_h2spec.py). An oversized header list stays h2's
    ENHANCE_YOUR_CALM.
    """
    code = h2.errors.ErrorCodes(getattr(e, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR))
    cause = e.__cause__
    if code == h2.errors.ErrorCodes.PROTOCOL_ERROR and cause is not None:
        if isinstance(cause, hpack.HPACKError):
            return h2.errors.ErrorCodes.COMPRESSION_ERROR
        if isinstance(cause, InvalidDataError) and "ack frame must not have payload" in str(cause):
            return h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    return code


# What a peer can make happen once per stream (a malformed block, too many fields) is
# logged at most once a second per kind: 500 streams a second on each of many
# connections would otherwise be as many lines.
_per_stream_log: Final = LimitedLog()

# The connections owed a write while a read is handled (None: no read is).
# One event loop per process, so one list will do; a read handled within another
# adds to the outer one's list.
_owed: list[H2Connection] | None = None


# The stream halves DATA was queued on during the read, pumped at its end.
_pumps: list[_Half] | None = None


def _begin_read() -> None:
    global _owed, _pumps
    _owed = []
    _pumps = []


def _end_read() -> None:
    global _owed, _pumps
    pumps, _pumps = _pumps, None
    for half in pumps or ():
        if half.conn is not None:
            half.conn.pump(half)
        elif half.carrier is not None:
            half.carrier.send()
    owed, _owed = _owed, None
    for conn in owed or ():
        conn._write_out()


def carry(half: _Half) -> None:
    """Hand what is queued on a carried half (DATA, trailers, its end, a response head)
    to its carrier: when the read at hand is handled, if there is one, so that all it
    brought the stream goes on in one write; else now."""
    pumps = _pumps
    if pumps is None:
        cast(Carrier, half.carrier).send()
    elif not pumps or pumps[-1] is not half:
        pumps.append(half)


def _coalesce(pending: deque[list[object]], limit: int) -> list[object]:
    """Join the queued chunks at the head of `pending` into one of at most `limit`
    bytes (with the flow-control credit they owe together), in its place."""
    parts: list[bytes] = []
    size = owed = 0
    for chunk, ack in pending:
        length = len(cast(bytes, chunk))
        if parts and size + length > limit:
            break
        parts.append(cast(bytes, chunk))
        size += length
        owed += cast(int, ack)
    for _ in parts:
        pending.popleft()
    item: list[object] = [b"".join(parts), owed]
    pending.appendleft(item)
    return item


class _Flood(h2.exceptions.ProtocolError):
    """Too many frames that carry nothing: the connection ends with ENHANCE_YOUR_CALM."""

    error_code = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
