"""HTTP/2 streams carried to an app that speaks only HTTP/1.1, as Envoy and Istio do.

A local port whose appProtocol does not say HTTP/2 (unset, `http`) gets each HTTP/2
stream from a peer as one HTTP/1.1 request, on the app pool's keep-alive connections
(the same ones HTTP/1.1 requests use):

- the pseudo-headers become the request line and Host; connection-specific headers
  and `te: trailers` stay on the HTTP/2 hop; split `cookie` fields are joined again
  (RFC 9113 8.2.3);
- the body is framed by the client's content-length, else by its size when the whole
  request was in before the head went out, else chunked (and request trailers go in
  the last chunk);
- the response head becomes HEADERS (names lower-cased, hop-by-hop headers gone), the
  body DATA, a chunked response's trailers trailers, and its end END_STREAM.

Flow control holds end to end, as between two HTTP/2 halves. Request DATA is
acknowledged to the client only once written to the app's connection and that
connection is below its high-water mark, so an upload is never held whole. Response
bytes wait on the stream's half until the client's window takes them; while more than
BUFFER_LIMIT of them wait, reading from the app is paused.

`H1Exchange` stands in for an `httpproxy.Exchange` towards its `UpstreamConnection`
(the calls that connection makes back: flush_response, fail, upstream_lost, and pause
and unpause on `conn`), so a connection goes back to the pool after either kind of
request and serves the next of either kind. A stream the client resets, or that ends
with the client's connection, aborts its exchange: the connection is closed, never
pooled. Errors reaching the app answer the stream with the HTTP/1.1 path's status and
`gossamer-error` reason (502 refused, reset or malformed, 504 connect timeout).

gRPC is not carried this way: it needs HTTP/2 trailers end to end (see
`proxy.wire.http2.is_grpc`; the inbound side answers such a call with a gRPC error
instead).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Final, cast

import h2.errors
import h2.exceptions

from gossamer.proxy.forward.exchange import BUFFER_LIMIT, ConnectError, UpstreamConnection
from gossamer.proxy.wire.http1 import (
    BODY_LENGTH,
    BODY_NONE,
    Headers,
    ProtocolError,
    ResponseHead,
    chunk_header,
    chunked_end,
    request_head_bytes,
)
from gossamer.proxy.wire.http2 import StreamPair, drop_pending, from_http1, header
from gossamer.proxy.wire.http2 import carry as carry_half

if TYPE_CHECKING:
    from gossamer.proxy.forward.exchange import Exchange
    from gossamer.proxy.inbound.http import AppPool

log = logging.getLogger("gossamer.proxy")

MAX_ATTEMPTS: Final = 3
_CRLF: Final = b"\r\n"
_SAFE_METHODS: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))
# Methods whose request carries a Content-Length even when empty (RFC 9110 8.6).
_BODY_METHODS: Final = frozenset((b"POST", b"PUT", b"PATCH"))
# Request headers the HTTP/1.1 head says in its own way, or that end at the HTTP/2 hop.
_HEAD_SAYS: Final = frozenset((b"host", b"te", b"trailer", b"content-length", b"expect", b"cookie"))
# A method is a token (RFC 9110 5.6.2); a target or authority may hold no space or
# control, where an HTTP/1.1 request line would split.
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
_SPLITS: Final = re.compile(rb"[\x00-\x20\x7f]").search


def carry(pair: StreamPair, headers: Headers, pool: AppPool) -> None:
    """Carry `pair`'s stream to the app behind `pool` as an HTTP/1.1 exchange.

    `headers` are the stream's as they go on (forwardable, x-forwarded-for and trace
    context already in). `pair.on_done` is still called when the stream ends.
    """
    method = header(headers, b":method") or b""
    if method == b"CONNECT":
        pair.reply(501, f"CONNECT over HTTP/2 is not carried to an HTTP/1.1 app ({pool.name})")
        return
    target = header(headers, b":path") or b""
    host = header(headers, b":authority") or header(headers, b"host")
    problem = _malformed(method, target, host)
    if problem is not None:
        pair.reply(400, f"malformed request: {problem}")
        return
    H1Exchange(pair, pool, method, target, host, headers)


def _malformed(method: bytes, target: bytes, host: bytes | None) -> str | None:
    """What would make the request line split (the HTTP/2 side has refused CR, LF and
    NUL in every field already), so that no second request can be smuggled in."""
    if _TOKEN(method) is None:
        return f"bad :method {method!r}"
    if not target or _SPLITS(target) is not None:
        return f"bad :path {target!r}"
    if host is not None and _SPLITS(host) is not None:
        return f"bad :authority {host!r}"
    return None


class H1Exchange:
    """One HTTP/2 stream's request and response, exchanged with the app as HTTP/1.1.

    It is the carrier of the pair's upstream half (`http2.Carrier`): the pair queues
    the request on that half as for an HTTP/2 upstream and calls `send`; response
    bytes are queued on the downstream half, and `sent` says when they went out.
    """

    __slots__ = (
        "attempts",
        "buffered",
        "chunked",
        "content_length",
        "expect_continue",
        "head_bytes",
        "headers",
        "host",
        "interim",
        "keep",
        "method",
        "on_done",
        "over",
        "owed",
        "pair",
        "pool",
        "replayable",
        "response_done",
        "target",
        "upstream",
    )

    def __init__(
        self,
        pair: StreamPair,
        pool: AppPool,
        method: bytes,
        target: bytes,
        host: bytes | None,
        headers: Headers,
    ) -> None:
        self.pair = pair
        self.pool = pool
        self.method = method
        self.target = target
        self.host = host
        plain: Headers = []
        cookies: list[bytes] = []
        self.content_length: bytes | None = None
        self.expect_continue = False
        for name, value in headers:
            if name[:1] == b":":
                continue
            if name in _HEAD_SAYS:
                if name == b"cookie":
                    cookies.append(value)
                elif name == b"content-length":
                    self.content_length = value
                elif name == b"expect":
                    if value.lower() == b"100-continue":
                        self.expect_continue = True  # answered here, as for HTTP/1.1
                    else:
                        plain.append((name, value))
                continue
            plain.append((name, value))
        if cookies:
            plain.append((b"cookie", b"; ".join(cookies)))
        self.headers = plain
        self.head_bytes = b""
        self.chunked = False
        self.replayable = False
        self.attempts = 0
        self.upstream: UpstreamConnection | None = None
        self.owed = 0  # request bytes written to the app, not yet acknowledged
        self.buffered = 0  # response bytes queued for the client, not yet sent
        self.interim = False
        self.keep = True
        self.response_done = False
        self.over = False  # the exchange with the app has ended, well or not
        self.on_done = pair.on_done
        pair.on_done = self._stream_done
        pair.up.carrier = self
        # The head goes out once the events of this read are in: a request that ended
        # with its HEADERS (or its few DATA frames) is framed by its size, not chunked.
        carry_half(pair.up)  # `send`, at the end of the read at hand: then `_dispatch`

    @property
    def conn(self) -> H1Exchange:
        """UpstreamConnection pauses and resumes "the exchange's connection" (see pause):
        this one. A property, not an attribute: a reference to itself would make every
        exchange garbage only the cyclic collector frees (decision 0111)."""
        return self

    # ---- the app connection ------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.over:
            return
        self.attempts += 1
        upstream = self.pool.take()
        if upstream is not None:
            self._bind(upstream)
            return
        pool = self.pool
        task = pool.loop.create_task(self._connect())
        pool.opening.add(task)
        task.add_done_callback(pool.opening.discard)

    async def _connect(self) -> None:
        try:
            upstream = await self.pool.open()
        except ConnectError as e:
            self._fail(e.status, e.reason)
            return
        except Exception as e:
            log.exception("proxy error connecting to %s", self.pool.name)
            self._fail(502, f"connect to {self.pool.name} failed: {e}")
            return
        if self.over:
            upstream.release()  # the client went away meanwhile; the connection is good
        else:
            self._bind(upstream)

    def _bind(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream
        self.pool.carried[self] = self.pool.loop.time()
        # The connection calls back what an Exchange offers it; see the module docstring.
        upstream.exchange = cast("Exchange", self)
        upstream.reader.set_handler(self, self.method == b"HEAD")
        if not self.head_bytes:
            self.head_bytes = self._head()
        if self.expect_continue and not self.pair.status:
            self.expect_continue = False
            self._informational(b"100")
        self._write(self.head_bytes)

    def _head(self) -> bytes:
        """The request head, framed by what is known of the body now."""
        up = self.pair.up
        if self.content_length is not None:
            framing = b"content-length: " + self.content_length + _CRLF
        elif up.ended:
            size = sum(len(cast(bytes, item[0])) for item in up.pending)
            self.replayable = size == 0 and self.method in _SAFE_METHODS
            framing = (
                b"content-length: %d\r\n" % size if size or self.method in _BODY_METHODS else b""
            )
        else:
            self.chunked = True
            framing = b"transfer-encoding: chunked\r\n"
        return request_head_bytes(self.method, self.target, self.host, self.headers, framing)

    def send(self) -> None:
        """More of the request is queued (http2.Carrier): write it, if connected. The
        first call, once the read that brought the head is handled, sends the exchange
        to the app."""
        if self.upstream is not None:
            self._write(b"")
        elif not self.attempts:
            self._dispatch()

    def _write(self, head: bytes) -> None:
        upstream = self.upstream
        assert upstream is not None
        up = self.pair.up
        parts = [head] if head else []
        if not up.sent_end:
            chunked = self.chunked
            owed = 0
            for item in up.pending:
                data = cast(bytes, item[0])
                if data:
                    if chunked:
                        parts.extend((chunk_header(len(data)), data, _CRLF))
                    else:
                        parts.append(data)
                owed += cast(int, item[1])
            up.pending.clear()
            self.owed += owed
            if up.ended:
                up.ended = False
                up.sent_end = True
                if self in self.pool.carried:  # the response timeout starts now
                    self.pool.carried[self] = self.pool.loop.time()
                if chunked:
                    parts.append(chunked_end(up.trailers))
        transport = upstream.transport
        # A transport the app just reset is closing before connection_lost says so.
        if parts and not transport.is_closing():
            transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        if not upstream.write_paused:
            self._acknowledge()

    def _acknowledge(self) -> None:
        """Give the client credit for the request bytes the app's connection took."""
        owed = self.owed
        if owed:
            self.owed = 0
            down = self.pair.down
            conn = down.conn
            if conn is not None and not conn.closed:
                conn.h2.acknowledge_received_data(owed, down.stream_id)
                conn.flush()

    def pause(self, reason: int) -> None:
        """The app's connection is full (UpstreamConnection.pause_writing): what is
        written from now on is acknowledged only on `unpause`."""

    def unpause(self, reason: int) -> None:
        self._acknowledge()

    # ---- the response (httpproxy's ResponseHandler) -------------------------------------

    def response_head(self, head: ResponseHead) -> None:
        status = head.status
        if status < 200:
            self.interim = True  # its end is not the response's
            if status not in (100, 101):
                # 102, 103 Early Hints...: passed on (RFC 9110 15.2). A 100 Continue is
                # this hop's to say (see _bind), and a 101 cannot happen here.
                fields = from_http1(head.headers)
                self._informational(b"%d" % status, fields)
            return
        pair = self.pair
        down = pair.down
        conn = down.conn
        assert conn is not None
        headers = [(b":status", b"%d" % status)]
        headers.extend(from_http1(head.headers))
        length = head.content_length
        if length is not None and (
            head.body == BODY_LENGTH or (head.body == BODY_NONE and status != 204)
        ):
            headers.append((b"content-length", length))
        self.keep = head.keep_alive
        pair.status = status
        self.pool.carried.pop(self, None)
        try:
            conn.h2.send_headers(down.stream_id, headers)
        except h2.exceptions.H2Error as e:
            raise ProtocolError(502, f"response head not sent to the client: {e}") from None
        conn.flush()

    def response_body(self, data: bytes) -> None:
        if not self.over:
            self.pair.down.pending.append([data, len(data)])
            self.buffered += len(data)

    def response_end(self, trailers: Headers | None) -> None:
        if self.interim:
            self.interim = False
            return
        if self.over:
            return
        down = self.pair.down
        if trailers:
            down.trailers = from_http1(trailers)
        down.ended = True
        self.response_done = True

    def response_upgrade(self, data: bytes) -> None:
        raise ProtocolError(502, "upstream switched protocols unasked")

    def flush_response(self) -> None:
        """After each read from the app: send on what it gave, as windows allow."""
        if self.over:
            return
        if self.response_done:
            self._release()
        down = self.pair.down
        if down.conn is not None:
            down.conn.pump(down)
        upstream = self.upstream
        if upstream is not None and self.buffered > BUFFER_LIMIT:
            upstream.pause_reading()

    def sent(self, size: int) -> None:
        """Response bytes went out to the client (http2.Carrier): read on, below half."""
        self.buffered -= size
        upstream = self.upstream
        if upstream is not None and upstream.read_paused and self.buffered <= BUFFER_LIMIT // 2:
            upstream.resume_reading()

    # ---- the end, well or not ------------------------------------------------------------

    def _release(self) -> None:
        """The whole response is read: the connection goes back to the pool if the
        whole request went out and the app keeps it alive, else it is closed."""
        self.over = True
        self.pool.carried.pop(self, None)
        upstream = self.upstream
        self.upstream = None
        if upstream is None:
            return
        upstream.exchange = None
        up = self.pair.up
        if up.sent_end and self.keep:
            upstream.release()
            return
        upstream.close()
        if not up.sent_end:
            # The app answered before the request ended: the rest is the client's to
            # send into nothing (acknowledged, dropped), as after any early answer.
            self.pair.down.other = None
            drop_pending(up)
            self._acknowledge()

    def upstream_lost(self, upstream: UpstreamConnection, reused: bool) -> None:
        """The app closed or reset its connection before the response ended."""
        if self.over:
            return
        self.upstream = None
        self.pool.carried.pop(self, None)
        if reused and self.replayable and not self.pair.status and self.attempts < MAX_ATTEMPTS:
            # A pooled connection the app had just closed: the request may never have
            # reached it, and one without a body is safe to send again.
            self._dispatch()
            return
        self._fail(502, f"upstream reset: {self.pool.name} closed the connection")

    def fail(self, status: int, reason: str) -> None:
        """A response the proxy cannot read (UpstreamConnection: a ProtocolError)."""
        self._fail(status, reason)

    def _fail(self, status: int, reason: str) -> None:
        if self.over:
            return
        self._abort()
        self.pair.reply(status, reason)

    def timed_out(self, seconds: float) -> None:
        """The app sent no response head within the response timeout (AppPool.sweep_carried)."""
        self.pool.carried.pop(self, None)
        if not self.pair.up.sent_end:
            self.pool.carried[self] = self.pool.loop.time()  # the request is still going out
        elif not self.pair.status:  # (a 1xx, passed on or not, is no answer)
            self._fail(504, f"upstream timeout: {self.pool.name} sent no response in {seconds:g}s")

    def _abort(self) -> None:
        self.over = True
        self.pool.carried.pop(self, None)
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.exchange = None
            upstream.abort()
        self._acknowledge()

    def _stream_done(self, pair: StreamPair) -> None:
        """The stream ended: reset by the client, its connection lost, or answered."""
        if not self.over:
            self._abort()
        if self.on_done is not None:
            self.on_done(pair)

    def _informational(self, status: bytes, fields: Headers | None = None) -> None:
        down = self.pair.down
        conn = down.conn
        if conn is not None and not conn.closed:
            try:
                conn.h2.send_headers(down.stream_id, [(b":status", status), *(fields or ())])
            except h2.exceptions.H2Error:
                conn.reset(down, h2.errors.ErrorCodes.INTERNAL_ERROR)
                return
            conn.flush()
