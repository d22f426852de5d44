"""HTTP/2 (and so gRPC) carried stream by stream, with flow control end to end.

The `h2` package is the state machine; `H2Connection` here is a thin asyncio.Protocol
around it, for either end (a downstream client's connection, or one to a peer or the
app). Each request stream is a `StreamPair`: two `_Half`s, one on each connection.
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
  HTTP/2 (`http2`, `grpc`, `kubernetes.io/h2c`).

Headers and data are handed on as h2 decodes them (HPACK state is per connection, so
header blocks are re-encoded; DATA payloads are passed through uncopied). Trailers
(gRPC's `grpc-status`) travel as trailers. Bad input closes the connection with the
error code h2 names (PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR...); a flood
of control frames (SETTINGS, PING, RST_STREAM) gets ENHANCE_YOUR_CALM. A reset stream
is reset on its other half; other streams go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

log = logging.getLogger("gossamer.proxy")

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PREFACE_LINE: Final = PREFACE[:18]

# What this proxy lets a peer send ahead, per stream and per connection.
STREAM_WINDOW: Final = 256 * 1024
CONNECTION_WINDOW: Final = 4 * 1024 * 1024
MAX_STREAMS: Final = 256
# Control frames (SETTINGS, PING, RST_STREAM) a peer may send per second.
CONTROL_FRAME_LIMIT: Final = 500

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


def forwardable(headers: Headers, drop: frozenset[bytes] = frozenset()) -> Headers:
    """Headers that may be handed on: no connection-specific ones (RFC 9113 8.2.2)."""
    out = []
    for name, value in headers:
        if name in _HOP_BY_HOP or name in drop:
            continue
        if name == b"te" and value.lower() != b"trailers":
            continue
        out.append((name, value))
    return out


def header(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def replay_preface(data: bytes) -> bytes:
    """The bytes an HTTP/2 connection began with, given the read in which HTTP/1.1's
    reader stopped at the end of the preface's first line (see httpproxy)."""
    for k in range(len(_PREFACE_LINE), 0, -1):
        if data[:k] == _PREFACE_LINE[-k:]:
            return _PREFACE_LINE + data[k:]
    return _PREFACE_LINE + data


class StreamHandler(Protocol):
    """Where a server connection's new streams go (the outbound or inbound side)."""

    def new_stream(self, conn: H2Connection, stream_id: int, headers: Headers) -> None: ...


class _Half:
    """One stream of a pair, on one connection: what is still to be sent on it.

    An upstream half exists before its connection does (`conn` None): what the
    client sends meanwhile waits in `pending`, bounded by the stream window.
    """

    __slots__ = (
        "conn",
        "ended",
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
        self.other: _Half | None = None
        self.pending: deque[list[object]] = deque()  # [data, bytes to acknowledge]
        self.ended = False  # END_STREAM is owed once pending is sent
        self.trailers: Headers | None = None
        self.recv_end = False  # the peer ended its side of this stream
        self.sent_end = False  # and this proxy its own


class StreamPair:
    """A request stream carried from a downstream connection to an upstream one.

    `status` and `grpc_status` are what came back; `on_done` lets the side count it.
    """

    __slots__ = ("done", "down", "grpc_status", "on_done", "started", "status", "up")

    def __init__(self, down_conn: H2Connection, stream_id: int, started: float) -> None:
        self.down = _Half(down_conn, stream_id, self)
        self.up = _Half(None, 0, self)
        self.down.other, self.up.other = self.up, self.down
        self.started = started
        self.status = 0
        self.grpc_status: bytes | None = None
        self.on_done: Callable[[StreamPair], None] | None = None
        self.done = False
        down_conn.halves[stream_id] = self.down

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
        if whole:
            up.ended = False
            up.sent_end = True
        up_conn.pump(up)

    def reply(self, status: int, reason: str) -> None:
        """Answer the downstream stream with a proxy-made error (`gossamer-error`)."""
        down = self.down
        conn = down.conn
        assert conn is not None
        log.warning("%s", reason)
        up = self.up
        if up.conn is not None:
            up.conn.reset(up, h2.errors.ErrorCodes.CANCEL)
        up.pending.clear()
        down.other = None
        if self.status or conn.closed:
            conn.reset(down, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.finish()
            return
        self.status = status
        body = reason.encode("utf-8", "replace") + b"\n"
        try:
            conn.h2.send_headers(
                down.stream_id,
                [
                    (b":status", b"%d" % status),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"gossamer-error", reason.encode("ascii", "replace")),
                    (b"content-length", b"%d" % len(body)),
                ],
            )
        except h2.exceptions.H2Error:
            self.finish()
            return
        down.pending.append([body, 0])
        down.ended = True
        conn.pump(down)

    def finish(self) -> None:
        if not self.done:
            self.done = True
            if self.on_done is not None:
                self.on_done(self)


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
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
            },
        )
        self.handler = handler
        self.on_lost = on_lost
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.halves: dict[int, _Half] = {}
        self.closed = False
        self.write_paused = False
        self._control = 0
        self._control_since = 0.0

    # ---- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
            for event in events:
                self._event(event)
        except h2.exceptions.ProtocolError as e:
            code = getattr(e, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self.fail(code, f"HTTP/2 protocol error from {self.name}: {e}")
            return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        halves, self.halves = self.halves, {}
        for half in halves.values():
            pair = half.pair
            other = half.other
            if half is pair.up and not pair.status:
                pair.reply(502, f"upstream reset: {self.name} closed the connection")
            elif other is not None and other.conn is not None:
                other.conn.reset(other, h2.errors.ErrorCodes.CANCEL)
                pair.finish()
            else:
                pair.finish()
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    # ---- events ------------------------------------------------------------------------

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream_id = event.stream_id or 0
            half = self.halves.get(stream_id)
            other = half.other if half is not None else None
            if other is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
                return
            other.pending.append([event.data or b"", event.flow_controlled_length or 0])
            if other.conn is not None:
                other.conn.pump(other)
        elif isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            if self.handler is None:
                self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                return
            self.handler.new_stream(self, event.stream_id, list(event.headers))
        elif isinstance(event, h2.events.ResponseReceived):
            half = self.halves.get(event.stream_id or 0)
            if half is None or half.other is None or event.headers is None:
                return
            headers = list(event.headers)
            pair = half.pair
            status = header(headers, b":status")
            pair.status = int(status) if status and status.isdigit() else 502
            ended = event.stream_ended is not None
            if ended:
                pair.grpc_status = header(headers, b"grpc-status")
            other = half.other
            assert other.conn is not None
            try:
                other.conn.h2.send_headers(other.stream_id, forwardable(headers), end_stream=ended)
            except h2.exceptions.H2Error:
                # The client's stream is gone (reset meanwhile): only this one ends.
                other.conn.forget(other)
                self.reset(half, h2.errors.ErrorCodes.CANCEL)
                return
            if ended:
                other.sent_end = True
                other.conn._settle(other)
            other.conn.flush()
        elif isinstance(event, h2.events.TrailersReceived):
            half = self.halves.get(event.stream_id or 0)
            if half is None or half.other is None or event.headers is None:
                return
            trailers = forwardable(list(event.headers))
            if half.pair.up is half:
                half.pair.grpc_status = header(trailers, b"grpc-status")
            other = half.other
            other.trailers = trailers
            other.ended = True
            if other.conn is not None:
                other.conn.pump(other)
        elif isinstance(event, h2.events.StreamEnded):
            half = self.halves.get(event.stream_id or 0)
            if half is None:
                return
            half.recv_end = True
            other = half.other
            if other is not None and not other.ended and not other.sent_end:
                other.ended = True
                if other.conn is not None:
                    other.conn.pump(other)
            self._settle(half)
        elif isinstance(event, h2.events.StreamReset):
            self._control_frame()
            half = self.halves.pop(event.stream_id or 0, None)
            if half is not None:
                other = half.other
                if other is not None and other.conn is not None:
                    other.conn.reset(other, event.error_code or h2.errors.ErrorCodes.CANCEL)
                elif other is not None:
                    other.pending.clear()
                half.pair.finish()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                half = self.halves.get(event.stream_id)
                if half is not None:
                    self.pump(half)
            else:
                self._pump_all()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._control_frame()
            self._pump_all()
        elif isinstance(event, (h2.events.PingReceived, h2.events.SettingsAcknowledged)):
            self._control_frame()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def _control_frame(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._control_since > 1.0:
            self._control_since = now
            self._control = 0
        self._control += 1
        if self._control > CONTROL_FRAME_LIMIT:
            raise _Flood

    def forget(self, half: _Half) -> None:
        self.halves.pop(half.stream_id, None)

    def _settle(self, half: _Half) -> None:
        """Forget a stream both ends have ended; the pair is done when its client's is."""
        if half.recv_end and half.sent_end:
            self.halves.pop(half.stream_id, None)
            if half is half.pair.down:
                half.pair.finish()

    # ---- sending -----------------------------------------------------------------------

    def pump(self, half: _Half) -> None:
        """Send what is queued on `half` as far as the windows allow."""
        if self.closed or half.sent_end:
            return
        h2conn = self.h2
        stream_id = half.stream_id
        other = half.other
        try:
            pending = half.pending
            while pending:
                item = pending[0]
                data = cast(bytes, item[0])
                ack = cast(int, item[1])
                window = min(
                    h2conn.local_flow_control_window(stream_id), h2conn.max_outbound_frame_size
                )
                if window <= 0 and data:
                    break
                if len(data) > window:
                    h2conn.send_data(stream_id, data[:window])
                    item[0] = data[window:]
                    item[1] = max(ack - window, 0)
                    ack = min(ack, window)
                else:
                    if data:
                        h2conn.send_data(stream_id, data)
                    pending.popleft()
                if ack and other is not None and other.conn is not None and not other.conn.closed:
                    other.conn.h2.acknowledge_received_data(ack, other.stream_id)
                    other.conn.flush()
            if not pending and half.ended:
                half.ended = False
                half.sent_end = True
                if half.trailers is not None:
                    h2conn.send_headers(stream_id, half.trailers, end_stream=True)
                else:
                    h2conn.end_stream(stream_id)
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

    def reset(self, half: _Half, code: int) -> None:
        self.halves.pop(half.stream_id, None)
        half.pending.clear()
        half.sent_end = True
        half.pair.finish()
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.reset_stream(half.stream_id, code)
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def fail(self, code: int, reason: str) -> None:
        """Close the connection with GOAWAY `code`."""
        log.warning("%s", reason)
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.close_connection(error_code=code)
        self.flush()
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class _Flood(h2.exceptions.ProtocolError):
    error_code = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM

    def __init__(self) -> None:
        super().__init__(f"more than {CONTROL_FRAME_LIMIT} control frames in a second")
