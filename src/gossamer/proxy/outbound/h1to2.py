"""HTTP/1.1 requests from the app carried to a peer as HTTP/2 streams (decision 0111).

With `multiplex_http1` on (GOSSAMER_MULTIPLEX_HTTP1=1), an HTTP/1.1 request to a peer
goes as one stream on the same multiplexed mTLS connection (ALPN ``gossamer/h2``) that
HTTP/2 and gRPC use, as Linkerd carries it; the peer's inbound side hands it to the
app as HTTP/1.1 again (proxy.inbound.h2to1). Requests in flight together then share
TLS records and `write`s between the proxies, and one connection per peer serves
them all. It is off by default: measured on this project's benchmark it saves CPU per
request only with many requests in flight, costs more with few, and lengthens the
latency tail (decision 0111).

The exchange (proxy.forward.exchange) stays what it is, with its routing, retries,
timeouts, mirrors and metrics; only what it sends on changes. `StreamUpstream` stands
in for its `UpstreamConnection`, and is the carrier (`http2.Receiver`) of a
`StreamPair` whose downstream half has no connection:

- the request head becomes HEADERS: the method, target and Host as pseudo-headers,
  names lower-cased, the Content-Length kept; a request without a body ends with its
  HEADERS; body bytes become DATA as the exchange hands them on, its end END_STREAM;
- the response head becomes the `ResponseHead` an HTTP/1.1 upstream would have given
  (its length from content-length, else the end of the stream), its DATA the body,
  its trailers trailers;
- flow control holds end to end: request bytes queued on the stream past
  BUFFER_LIMIT pause reading from the client until half of them are sent; response
  DATA is acknowledged to the peer once handed to the client's connection, and held
  while that connection's buffer is full;
- a stream reset, or its connection lost, before the response head is, for the
  exchange, a connection lost before an answer (its retry rules apply); after, the
  response is cut short as on HTTP/1.1.

Not every request goes this way (`Exchange._streamable`): an Upgrade or CONNECT (a
tunnel), a chunked request body, and a service port under circuit breaking that counts
connections (maxConnections, maxPendingRequests) take a connection of their own, as
before. So does a request that finds its peer connection at MAX_STREAMS streams.
"""

from __future__ import annotations

import contextlib
import logging
from time import perf_counter
from typing import TYPE_CHECKING, Final, cast

import h2.errors
import h2.exceptions

from gossamer.proxy.forward.connect import PeerPool
from gossamer.proxy.forward.exchange import (
    BUFFER_LIMIT,
    DISCARD,
    PAUSE_UPSTREAM,
    ConnectError,
    Exchange,
    Pool,
)
from gossamer.proxy.wire.http1 import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    ORIG_PROTO_HEADER,
    SRC_SERVICE_HEADER,
    Headers,
    ResponseHandler,
    ResponseHead,
)
from gossamer.proxy.wire.http2 import (
    MAX_STREAMS,
    H2Connection,
    StreamPair,
    carry,
    drop_pending,
    from_http1,
)

if TYPE_CHECKING:
    from gossamer.proxy.forward.streams import Links
    from gossamer.proxy.outbound.plane import OutboundPlane

log = logging.getLogger("gossamer.proxy")

_NO_BODY_STATUS: Final = frozenset((204, 304))
_HTTP11: Final = b"HTTP/1.1"
_HTTP10: Final = b"HTTP/1.0"


class Streamer:
    """The outbound side's `stream`: sends an exchange to a peer as a stream on that
    peer's HTTP/2 connection (one per endpoint, shared with HTTP/2 from the app)."""

    __slots__ = ("dp", "links")

    def __init__(self, dp: OutboundPlane, links: Links) -> None:
        self.dp = dp
        self.links = links

    def __call__(self, ex: Exchange, pool: Pool) -> None:
        peer = cast(PeerPool, pool)
        link = self.links.conns.get(peer)
        if link is not None and not link.closed and not link.draining:
            self._bind(ex, peer, link)  # the common case: no callback, no task
            return
        attempt = ex.attempts

        def then(result: H2Connection | ConnectError) -> None:
            if ex.finished or ex.attempts != attempt:
                return  # the client went away, or a timeout moved the request on
            if isinstance(result, ConnectError):
                ex.connect_failed(result)
            else:
                self._bind(ex, peer, result)

        self.links.get(peer, peer.name, peer.open_link, then)

    def _bind(self, ex: Exchange, pool: PeerPool, link: H2Connection) -> None:
        if len(link.halves) >= MAX_STREAMS:
            # As many streams as the peer takes at once: this one would wait for a
            # place (or be refused); a connection of its own serves it now.
            ex.own_connection(pool)
            return
        # A small body is kept, so that a stream the peer refuses unprocessed (a GOAWAY
        # crossing it) can be sent again whatever the method (Exchange.upstream_lost).
        ex.keep_for_replay()
        ex.bind(StreamUpstream(link, pool, self.dp.table.src_service))


def request_headers(ex: Exchange, src_service: bytes) -> Headers:
    """The exchange's request head as an HTTP/2 header list (RFC 9113 8.3.1): what the
    HTTP/1.1 head would say, its fields as `from_http1` makes them (lower-cased names,
    no connection-specific fields, no whitespace at a value's ends)."""
    head = ex.head
    headers = [
        (b":method", head.method),
        (b":scheme", b"http"),
        (b":authority", head.host or b""),
        (b":path", head.target),
    ]
    headers.extend(from_http1(head.headers))
    if head.body == BODY_LENGTH:
        headers.append((b"content-length", head.content_length or b"0"))
    if src_service:
        headers.append((SRC_SERVICE_HEADER, src_service))
    headers.append((ORIG_PROTO_HEADER, _HTTP11 if head.http11 else _HTTP10))
    return headers


class StreamUpstream:
    """One try of an exchange, as a stream on a peer's HTTP/2 connection (see the
    module docstring): the exchange's `Upstream`, and its pair's downstream carrier."""

    __slots__ = (
        "answered",
        "closed",
        "conn",
        "exchange",
        "handler",
        "head_only",
        "held",
        "pair",
        "pool",
        "read_paused",
        "reused",
        "src_service",
        "started",
        "unsent",
        "write_paused",
    )

    def __init__(self, conn: H2Connection, pool: PeerPool, src_service: bytes) -> None:
        self.conn = conn
        self.pool = pool
        self.src_service = src_service
        self.exchange: Exchange | None = None
        self.answered = False
        self.write_paused = False
        self.read_paused = False
        self.closed = False
        self.started = False  # HEADERS sent
        self.handler: ResponseHandler = DISCARD
        self.head_only = False
        self.held = 0  # response bytes handed on while the client's buffer was full
        self.unsent = 0  # request bytes queued on the stream, not yet sent
        # A stream lost before its answer on a connection that had carried others may
        # be sent again (Exchange.upstream_lost), as a request on a pooled connection.
        self.reused = conn.streams > 0
        pair = StreamPair(None, 0, perf_counter())
        pair.down.carrier = self
        pair.on_reset = self._lost_before_answer
        pair.on_done = self._ended
        self.pair = pair

    # ---- the exchange's side (proxy.forward.exchange.Upstream) --------------------------

    @property
    def reader(self) -> StreamUpstream:
        return self

    def set_handler(self, handler: ResponseHandler, head_only: bool) -> None:
        self.handler = handler
        self.head_only = head_only

    def expect_connect(self) -> None:
        raise AssertionError("a CONNECT takes a connection of its own (Exchange._streamable)")

    def send_request(self, out: list[bytes], done: bool) -> None:
        ex = self.exchange
        up = self.pair.up
        if self.closed or ex is None or up.sent_end:
            return
        queued = False
        for i, data in enumerate(out):
            if i == 0 and not self.started and data is ex.head_bytes:
                continue  # the HTTP/1.1 head: the HEADERS say it
            if data:
                up.pending.append([data, len(data)])
                self.unsent += len(data)
                queued = True
        if done or ex.head.body == BODY_NONE:
            up.ended = True
        if not self.started:
            self.started = True
            self.pair.attach(self.conn, request_headers(ex, self.src_service))
        elif queued or up.ended:
            self.conn.pump(up)
        if self.unsent > BUFFER_LIMIT and not self.write_paused and not self.closed:
            self.write_paused = True
            ex.conn.pause(PAUSE_UPSTREAM)

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        """The exchange is done with the stream: cancel it if either end is still open."""
        if self.closed:
            return
        self.closed = True
        # What the peer sent for this stream counts against the shared connection's
        # window until acknowledged: what was handed to the client while its buffer was
        # full, and what still waits here. A client that stopped reading and left must
        # not shrink every other stream's window for good.
        held, self.held = self.held, 0
        drop_pending(self.pair.down)
        self._acknowledge(held)
        up = self.pair.up
        if up.conn is not None and not (up.recv_end and up.sent_end):
            up.conn.reset(up, h2.errors.ErrorCodes.CANCEL)
        else:
            self.pair.finish()

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            held, self.held = self.held, 0
            self._acknowledge(held)

    # ---- the pair's side (http2.Receiver) -----------------------------------------------

    def response(self, headers: Headers, ended: bool) -> None:
        ex = self.exchange
        if ex is None or self.closed:
            return
        self.answered = True
        status = 502
        length: bytes | None = None
        fields: Headers = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":status" and value.isdigit():
                    status = int(value)
            elif name == b"content-length":
                length = value
            else:
                fields.append((name, value))
        if length is not None and (
            not length.isdigit()
            or (ended and int(length) and not self.head_only and status not in _NO_BODY_STATUS)
        ):
            # What an HTTP/1.1 client must not be given: a length that is no number, or
            # a head whose stream ended while its length says a body follows (the
            # nghttp2 engine ends such a connection; the pure-Python one lets it by).
            ex.fail(502, f"malformed response from {self.pool.name}: content-length {length!r}")
            return
        head = ResponseHead(status, b"", fields)
        head.content_length = length
        if self.head_only or status in _NO_BODY_STATUS:
            head.body = BODY_NONE
        elif length is not None:
            head.body = BODY_LENGTH
        elif ended:
            head.content_length = b"0"
        else:
            head.body = BODY_CHUNKED  # framed by the stream's end: chunked to the client
        if ended:
            # The stream's end came with its head (StreamEnded follows): known now, so
            # that the exchange, done at once, does not cancel a finished stream.
            self.pair.up.recv_end = True
        self.handler.response_head(head)
        if ended and self.exchange is ex:
            self.pair.down.sent_end = True
            self.handler.response_end(None)
        if self.exchange is ex:
            carry(self.pair.down)  # written to the client with the DATA that follows

    def informational(self, headers: Headers) -> None:
        """A 1xx (102, 103 Early Hints...): on to an HTTP/1.1 client as an HTTP/1.1
        upstream's would go (Exchange.response_head); a 100 Continue is the exchange's
        own to say, when the request asked for it (Exchange.bind)."""
        ex = self.exchange
        if ex is None or self.closed:
            return
        self.answered = True  # the request reached the peer: it is not sent again
        status = 0
        fields: Headers = []
        for name, value in headers:
            if name == b":status":
                status = int(value) if value.isdigit() else 0
            elif name[:1] != b":":
                fields.append((name, value))
        if status in (0, 100, 101) or not 100 <= status < 200:
            return
        self.handler.response_head(ResponseHead(status, b"", fields))
        self.handler.response_end(None)  # the 1xx's end, not the response's
        if self.exchange is ex:
            carry(self.pair.down)

    def send(self) -> None:
        """Response DATA, trailers or its end are queued on the downstream half."""
        down = self.pair.down
        ex = self.exchange
        if ex is None or self.closed:
            drop_pending(down)
            return
        handler = self.handler
        pending = down.pending
        owed = 0
        while pending:
            data, ack = pending.popleft()
            if data:
                handler.response_body(cast(bytes, data))
            owed += cast(int, ack)
        if down.ended and not down.sent_end:
            down.ended = False
            down.sent_end = True
            self.pair.up.recv_end = True  # (trailers come before their StreamEnded)
            handler.response_end(down.trailers)
        if self.exchange is ex:
            ex.flush_response()
        if self.read_paused:
            self.held += owed
        else:
            self._acknowledge(owed)

    def sent(self, size: int) -> None:
        """Request bytes went out on the stream: read more from the client, below half."""
        self.unsent -= size
        ex = self.exchange
        if self.write_paused and self.unsent <= BUFFER_LIMIT // 2:
            self.write_paused = False
            if ex is not None:
                ex.conn.unpause(PAUSE_UPSTREAM)

    def fail(self, status: int, reason: str) -> None:
        """The stream could not be opened (StreamPair.attach)."""
        ex = self.exchange
        self.closed = True
        if ex is not None:
            ex.fail(status, reason)

    def _acknowledge(self, size: int) -> None:
        up = self.pair.up
        conn = self.conn
        if size and not conn.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                conn.h2.acknowledge_received_data(size, up.stream_id)
            conn.flush()

    def _lost_before_answer(self, pair: StreamPair) -> bool:
        """The stream was reset, or its connection lost, before a response head (or
        refused unprocessed: sent again, see Exchange.upstream_lost)."""
        ex = self.exchange
        self.closed = True
        self.exchange = None
        if ex is not None:
            ex.upstream_lost(self, self.reused, pair.refused)
        return True

    def _ended(self, pair: StreamPair) -> None:
        """The pair ended early: reset after a response began, or its connection lost."""
        ex = self.exchange
        if ex is None or self.closed:
            return
        self.closed = True
        self.exchange = None
        ex.flush_response()  # what came of the response goes first, as on HTTP/1.1
        ex.upstream_lost(self, self.reused)
