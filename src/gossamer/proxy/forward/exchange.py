"""HTTP/1.1 forwarding: downstream connections, exchanges, upstream connections, pools.

The hot path, in the order a request takes it:

- `ServerConnection` (an asyncio.Protocol) feeds bytes to a `RequestReader`; each
  request head becomes an `Exchange`, handed to the `Side` (outbound or inbound)
  to route.
- The side picks an endpoint's `Pool`; an idle `UpstreamConnection` is bound to the
  exchange at once, else one is opened (the only place a task is made).
- Request bytes are gathered per read and written to the upstream transport in one
  call; response bytes likewise the other way. Each direction applies backpressure:
  a full write buffer pauses reading on the other side.

Pipelined requests queue behind the one being answered, with reading paused, so
responses can never go out of order. Every response the proxy makes itself carries
`gossamer-error` and is logged with the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from gossamer.proxy.wire.http1 import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    CLIENT_GONE,
    ExtraBytes,
    Headers,
    Http2Preface,
    ProtocolError,
    RequestHead,
    RequestReader,
    ResponseHandler,
    ResponseHead,
    ResponseReader,
    chunk_header,
    chunked_end,
    error_response,
    response_framing,
    response_head_bytes,
)
from gossamer.proxy.wire.limits import (
    GOAWAY_REFUSED,
    LOST,
    NOT_REFUSED,
    REFUSED_RETRIES,
    REPLAY_LIMIT,
    close_soon,
    keep_open_at_eof,
    taken,
)
from gossamer.proxy.wire.splice import Splice

if TYPE_CHECKING:
    from gossamer.proxy.policy import Call
    from gossamer.proxy.policy.balancer import Balancer, EndpointLoad
    from gossamer.proxy.policy.resilience import Limits
    from gossamer.proxy.policy.routing import LocalRoute, Route
    from gossamer.proxy.wire.limits import InFlight
    from gossamer.telemetry.tracing import Span

log = logging.getLogger("gossamer.proxy")

_PREFACE_SIZE: Final = 24  # an HTTP/2 client's connection preface (RFC 9113 3.4)
# Why reading from a downstream connection is paused; reading resumes when none holds.
PAUSE_QUEUE: Final = 1  # a pipelined request waits for the responses before it
PAUSE_BUFFER: Final = 2  # request bytes are piling up while no upstream is ready
PAUSE_UPSTREAM: Final = 4  # the upstream connection's write buffer is full
PAUSE_ROUTE: Final = 8  # waiting for the control plane to learn about a host
PAUSE_BROKEN: Final = 16  # a malformed request waits for earlier responses to finish
PAUSE_TUNNEL: Final = 32  # a tunnel request waits for its answer (Exchange._open_tunnel)

BUFFER_LIMIT: Final = 256 * 1024
MAX_ATTEMPTS: Final = 3
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CRLF: Final = b"\r\n"
_SAFE_METHODS: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))
# What Exchange._end does with the upstream connection.
UPSTREAM_POOL: Final = 0
UPSTREAM_ABORT: Final = 1
UPSTREAM_TAKE: Final = 2


class ConnectError(Exception):
    """Opening an upstream connection failed; `status` and `reason` are what to answer."""

    def __init__(self, status: int, reason: str, *, eject: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.eject = eject


class Side(Protocol):
    """What differs between the outbound listener (app → mesh) and the inbound one."""

    loop: asyncio.AbstractEventLoop
    request_kinds: dict[bytes, int]
    splices: set[Splice]  # open tunnel ends, closed with the data plane

    @property
    def in_flight(self) -> InFlight | None:
        """The data plane's cap on requests at once (proxy.wire.limits), if it has one."""

    def connection_made(self, conn: ServerConnection) -> None: ...
    def connection_lost(self, conn: ServerConnection) -> None: ...
    def start(self, ex: Exchange) -> None:
        """Set `ex.head_bytes` and `ex.out` for a new exchange, or `ex.error`.

        It may not answer yet: an earlier pipelined request may still be in flight.
        """

    def dispatch(self, ex: Exchange) -> None:
        """Send the exchange on: bind it, start a connection, or fail it."""

    def serve_h2(self, conn: ServerConnection, data: bytes) -> bool:
        """Take over a connection that began with the HTTP/2 preface; False to refuse."""

    def record(self, ex: Exchange, status: int, seconds: float) -> None: ...

    @property
    def stream(self) -> Callable[[Exchange, Pool], None] | None:
        """Sends an exchange to `pool`'s endpoint as a stream on a multiplexed HTTP/2
        connection instead of on a connection of its own (proxy.outbound.h1to2), or
        None: this side's requests each take a connection."""
        return None


class ResponseSlot(Protocol):
    """Where an upstream's response goes: the exchange bound to it, or nowhere."""

    def set_handler(self, handler: ResponseHandler, head_only: bool) -> None: ...
    def expect_connect(self) -> None: ...


class Upstream(Protocol):
    """What an exchange sends its request on and hears its response from: a connection
    of its own (`UpstreamConnection`), or a stream on a shared HTTP/2 connection
    (proxy.outbound.h1to2.StreamUpstream)."""

    exchange: Exchange | None
    # Whether any of a response came since the exchange was bound.
    answered: bool
    write_paused: bool

    @property
    def reader(self) -> ResponseSlot: ...
    def send_request(self, out: list[bytes], done: bool) -> None:
        """Send what `out` holds of the request (its head first, then body, as the
        exchange frames them); `done`: the request ends with it."""

    def release(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class ServerConnection(asyncio.Protocol):
    """One downstream HTTP/1.1 connection."""

    __slots__ = (
        "answering",
        "broken",
        "client_eof",
        "closing",
        "first_bytes",
        "last_active",
        "loop",
        "paused",
        "paused_at",
        "peer_address",
        "peer_identity",
        "peer_namespace",
        "queue",
        "reader",
        "reading",
        "reads",
        "reads_seen",
        "requests",
        "server_name",
        "side",
        "taken_at_pause",
        "transport",
        "tunnel_data",
        "write_paused",
    )

    def __init__(self, side: Side) -> None:
        self.side = side
        self.loop = side.loop
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(self, side.request_kinds)
        self.reading: Exchange | None = None
        self.answering: Exchange | None = None
        self.queue: deque[Exchange] | None = None
        self.paused = 0
        self.write_paused = False
        self.paused_at = 0.0  # when writing last paused: the client stopped reading
        # Reads from the client, and (reads, when) as the upkeep last saw them changed:
        # a request body that stops coming (`sweep`).
        self.reads = 0
        self.reads_seen = (0, 0.0)
        self.requests = 0  # request heads read
        self.first_bytes = b""  # (data_received: the start of an HTTP/2 preface)
        self.taken_at_pause = 0  # what the client had taken at the last look (limits.taken)
        self.closing = False
        self.client_eof = False
        self.broken: ProtocolError | None = None
        # Bytes a client sent after a tunnel request, held until the tunnel opens.
        self.tunnel_data: list[bytes] = []
        self.last_active = self.loop.time()
        # Filled in by the side when the connection is made.
        self.peer_address = b""
        self.peer_identity: str | None = None
        self.peer_namespace = ""
        self.server_name: str | None = None

    # ---- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.side.connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.reads += 1
        before = self.first_bytes
        if not self.requests and len(before) < _PREFACE_SIZE:
            # What the connection began with, as far as an HTTP/2 preface goes: llhttp
            # says it saw one only in the read that holds its last byte.
            self.first_bytes = before + data[:_PREFACE_SIZE]
        try:
            self.reader.feed(data)
        except Http2Preface as e:
            # Prior knowledge: HTTP/2 from a connection's first byte, not after HTTP/1.1
            # requests (RFC 9113 3.3), given everything the client sent (a preface may
            # come in pieces, valid or not).
            if self.requests or not self.side.serve_h2(self, before + e.data):
                self._protocol_error(e)
            return
        except ProtocolError as e:
            self._protocol_error(e)
            return
        except Exception:
            log.exception("proxy error handling a request; closing the connection")
            self.abort()
            return
        ex = self.reading
        if ex is not None and ex.out and ex.upstream is not None:
            ex.flush_request()

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.reading is not None:
            # A request cut short can never be completed: drop everything.
            log.warning("%s: client closed the connection mid-request", self.describe())
            self.abort()
            return False
        # A client's FIN means it has gone, also while a response is owed: its
        # exchange ends and gives back what it held (a circuit breaker's slot), as
        # HTTP/2 does when a stream's connection goes, and as Envoy and hyper (whose
        # http1_half_close is off by default) do. Closed here, not by the transport
        # (keep_open_at_eof says why).
        keep_open = keep_open_at_eof(self.transport)
        self.close()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.side.connection_lost(self)
        ex = self.answering
        self.answering = None
        if ex is not None:
            ex.downstream_lost()
        if self.queue:
            for queued in self.queue:
                queued._end(UPSTREAM_ABORT)
            self.queue.clear()
        self.let_go()

    def let_go(self) -> None:
        """The connection is lost, or its transport handed to another protocol (a
        tunnel, HTTP/2, a TCP splice): what it refers to, and what refers back to it,
        is let go, so that it is freed now, not by the cycle collector (limits.LOST
        says why that matters). Nothing is read on it after."""
        self.transport = LOST
        self.reading = None
        self.reader.release()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.paused_at = self.loop.time()
        if self.transport is not None:
            self.taken_at_pause = taken(self.transport)
        ex = self.answering
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.answering
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    # ---- RequestHandler ----------------------------------------------------------------

    def request_head(self, head: RequestHead) -> None:
        if self.closing:
            # The rest of a read after a response that closes the connection.
            self.reading = None
            return
        self.requests += 1
        ex = Exchange(self, head)
        self.reading = ex
        self.side.start(ex)
        if self.answering is None:
            self.answering = ex
            self._dispatch(ex)
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append(ex)
            self.pause(PAUSE_QUEUE)

    def request_body(self, data: bytes) -> None:
        ex = self.reading
        if ex is not None and ex.phase != Phase.FINISHED:
            ex.send_body(data)

    def request_end(self, trailers: Headers | None) -> None:
        ex = self.reading
        self.reading = None
        if ex is not None:
            ex.end_request(trailers)

    def request_upgrade(self, data: bytes) -> None:
        # Reading stays paused until the tunnel opens or is refused (and the
        # connection closed), so at most one read is held here.
        self.pause(PAUSE_TUNNEL)
        self.tunnel_data.append(data)

    # ---- flow control and closing -------------------------------------------------------

    def pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.paused |= reason

    def unpause(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            close_soon(self.transport)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _protocol_error(self, e: ProtocolError) -> None:
        ex = self.reading
        self.reading = None
        if ex is not None and ex.phase != Phase.FINISHED:
            if ex is self.answering:
                # The request being forwarded turned out malformed part-way (a bad chunk).
                ex.fail(e.status, e.reason)
                self.close()
                return
            # A pipelined request still queued: it goes nowhere, the error answers it.
            ex._end(UPSTREAM_ABORT)
            if self.queue is not None:
                self.queue.remove(ex)
        if self.answering is not None:
            # Earlier requests are still being answered; the error goes out after them.
            self.broken = e
            self.pause(PAUSE_BROKEN)
            return
        self._refuse(e)

    def _refuse(self, e: ProtocolError) -> None:
        log.warning("%s: %s", self.describe(), e.reason)
        self.side.record(Exchange(self, RequestHead()), e.status, 0.0)
        self.write(error_response(e.status, e.reason, close=True))
        self.close()

    def _dispatch(self, ex: Exchange) -> None:
        """Send the exchange on, now its turn has come: it takes a place under the data
        plane's cap on requests in flight, if it has one (a pipelined request waiting its
        turn holds none: one connection holds at most one place), or is answered 503."""
        limit = self.side.in_flight
        if limit is not None and ex.error is None:
            if limit.take():
                ex.in_flight = limit
            else:
                ex.error = ProtocolError(503, limit.reason)
        self.side.dispatch(ex)

    def exchange_finished(self, ex: Exchange) -> None:
        """`ex` has been answered (or failed): start on the next request, or close."""
        if self.answering is not ex:
            return
        self.answering = None
        self.unpause(PAUSE_UPSTREAM)
        self.last_active = self.loop.time()
        if self.closing:
            return
        if ex.close_after or not ex.request_done:
            self.close()
            return
        queue = self.queue
        if queue:
            nxt = queue.popleft()
            if not queue:
                self.unpause(PAUSE_QUEUE)
            self.answering = nxt
            self._dispatch(nxt)
        elif self.broken is not None:
            self._refuse(self.broken)
        elif self.client_eof:
            self.close()

    def sweep(self, now: float, idle_timeout: float, response_timeout: float) -> None:
        """Called about once a second: enforce the response and idle timeouts. A client
        that takes none of its response for `idle_timeout` (writing paused, and nothing
        acknowledged in the kernel since the last look) loses its connection, and the
        response its upstream (`idle_timeout` < 0: a drain closing what is idle, which
        this is not)."""
        if self.write_paused and idle_timeout >= 0:
            took = -1 if self.transport is None else taken(self.transport)
            if took != self.taken_at_pause:
                # It reads, if slowly (the buffer is not down to its low mark yet).
                self.paused_at, self.taken_at_pause = now, took
            elif now - self.paused_at > idle_timeout:
                who = self.describe()
                log.info("%s read none of its response for %gs: closed", who, idle_timeout)
                self.abort()
                return
        ex = self.answering
        if ex is None:
            if self.reading is None and now - self.last_active > idle_timeout:
                self.close()
            return
        if self.reading is ex and not self.paused and idle_timeout >= 0:
            # Its body is owed, and the proxy is reading: is it coming?
            reads, since = self.reads_seen
            if reads != self.reads:
                self.reads_seen = (self.reads, now)
            elif now - max(since, self.last_active) > idle_timeout:  # (pipelined: its turn)
                ex.fail(408, f"request body: nothing from the client for {idle_timeout:g}s")
                self.close()
                return
        if (
            ex.upstream is not None
            and ex.phase < Phase.RESPONDING
            and ex.request_done
            and now - ex.sent_at > response_timeout
        ):
            ex.fail(504, f"upstream timeout: {ex.peer} sent no response in {response_timeout:g}s")

    def describe(self) -> str:
        return self.peer_identity or self.peer_address.decode("latin-1") or "client"


class Phase:
    """Where an exchange is in its response, in order; the request arrives on its own
    (`Exchange.request_done`). An exchange only moves forward, except that a retry takes
    it back to WAITING from a response it dropped (or from a 1xx it let through)."""

    WAITING: Final = 0  # no response head yet: the request may still be arriving
    INTERIM: Final = 1  # a 1xx (or a tunnel's 101) came; the final head is still owed
    RESPONDING: Final = 2  # the final head is on its way down; its body follows
    RESPONDED: Final = 3  # the upstream's response ended: done at the next flush
    FINISHED: Final = 4  # answered, failed, made a tunnel or abandoned: see Exchange._end


class Exchange:
    """One request and its response, from head to end (see `Phase`)."""

    __slots__ = (
        "after_request",
        "attempts",
        "backend_timeout",
        "balancer",
        "call",
        "close_after",
        "conn",
        "deadline",
        "error",
        "head",
        "head_bytes",
        "in_flight",
        "load",
        "out",
        "out_size",
        "peer",
        "pending",
        "phase",
        "refusals",
        "replay",
        "request_done",
        "response_edit",
        "retry_ok",
        "rmode",
        "rout",
        "route",
        "sent_at",
        "started",
        "status",
        "switch",
        "trace",
        "tried",
        "try_began",
        "try_timer",
        "upstream",
        "upstream_keep",
    )

    def __init__(self, conn: ServerConnection, head: RequestHead) -> None:
        self.conn = conn
        self.head = head
        # Latency is timed with perf_counter: the loop's clock (uvloop's) ticks in
        # milliseconds, and many requests take less than one.
        self.started = perf_counter()
        self.sent_at = 0.0
        self.out: list[bytes] = []
        self.out_size = 0
        self.head_bytes = b""
        self.rout: list[bytes] = []
        # The service port (outbound) or local port (inbound) it went to, once known.
        self.route: Route[Any] | LocalRoute | None = None
        self.balancer: Balancer[Pool] | None = None
        self.load: EndpointLoad | None = None
        self.upstream: Upstream | None = None
        self.peer = "upstream"
        self.tried = -1
        self.attempts = 0
        self.refusals = 0  # tries a peer refused unprocessed, sent again (upstream_lost)
        self.try_began = 0  # `attempts` when the current try began (a refusal begins one)
        self.request_done = False
        # Called once the whole request has been read (a mirror waiting for its body).
        self.after_request: list[Callable[[], None]] | None = None
        self.phase = Phase.WAITING
        self.close_after = False
        self.upstream_keep = False
        # A request that may be sent again if a pooled connection turns out dead.
        self.retry_ok = head.body == BODY_NONE and head.method in _SAFE_METHODS
        self.rmode = BODY_NONE
        self.status = 0
        # The 101 (or 2xx to CONNECT) that turns this exchange into a tunnel.
        self.switch: ResponseHead | None = None
        # Set by Side.start for a request refused before routing; answered in turn.
        self.error: ProtocolError | None = None
        # The cap this request holds a place under, given back when it ends.
        self.in_flight: InFlight | None = None
        # Traffic management: the outbound side's policy decisions, when a route or
        # policy applies to the service (proxy.policy.call); None otherwise.
        self.call: Call[Any] | None = None
        self.response_edit: Callable[[Headers], Headers] | None = None
        self.pending = False  # counted in limits.pending while a connection opens
        self.deadline: asyncio.TimerHandle | None = None  # timeouts.request
        self.backend_timeout: float | None = None  # per try (the call's, or a mirror's)
        self.try_timer: asyncio.TimerHandle | None = None
        # A copy of a small request body, kept so that a retry can send it again.
        self.replay: list[bytes] | None = None
        # This hop's span, while tracing is on and the request is sampled (proxy.observe.hooks).
        self.trace: Span | None = None

    @property
    def finished(self) -> bool:
        """Answered, failed, made a tunnel or abandoned: nothing more happens to it."""
        return self.phase == Phase.FINISHED

    @property
    def retries(self) -> int:
        """Tries sent again (the hooks read it)."""
        return 0 if self.call is None else self.call.retries

    # ---- request direction -------------------------------------------------------------

    def send_body(self, data: bytes) -> None:
        if self.head.body == BODY_CHUNKED:
            self.out.extend((chunk_header(len(data)), data, _CRLF))
        else:
            self.out.append(data)
            if self.replay is not None:
                self.replay.append(data)
        if self.upstream is None:
            self.out_size += len(data)
            if self.out_size > BUFFER_LIMIT:
                self.conn.pause(PAUSE_BUFFER)

    def end_request(self, trailers: Headers | None) -> None:
        self.request_done = True
        after = self.after_request
        if after is not None:
            self.after_request = None
            for call in after:
                call()
        if self.phase >= Phase.RESPONDING:
            self.replay = None  # (see response_head)
        if self.phase == Phase.FINISHED:
            return
        if self.head.body == BODY_CHUNKED:
            self.out.append(chunked_end(trailers))
        if self.upstream is not None:
            self.flush_request()  # also with nothing left: a stream is told its end

    def flush_request(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        upstream.send_request(self.out, self.request_done)
        self.out.clear()

    def bind(self, upstream: Upstream) -> None:
        """Start sending on `upstream` (idle from a pool, or just opened)."""
        conn = self.conn
        self.upstream = upstream
        upstream.exchange = self
        upstream.answered = False
        if self.pending:
            self._unpend()
        upstream.reader.set_handler(self, self.head.method == b"HEAD")
        if self.head.tunnel and self.head.method == b"CONNECT":
            upstream.reader.expect_connect()
        load = self.load
        if load is not None:
            load.outstanding += 1
            if load.failures:
                load.connected()
        self.sent_at = conn.loop.time()
        if upstream.write_paused:
            conn.pause(PAUSE_UPSTREAM)
        if conn.write_paused:
            upstream.pause_reading()
        if self.head.expect_continue and self.phase < Phase.RESPONDING:
            # Once: a try sent again (a retry, a refused stream) has the body kept.
            self.head.expect_continue = False
            conn.write(CONTINUE)
        self.flush_request()
        self.out_size = 0
        conn.unpause(PAUSE_BUFFER)

    def forward(self, exclude: int = -1) -> None:
        """Pick an endpoint from `balancer` and send there."""
        balancer = self.balancer
        assert balancer is not None
        loop = self.conn.loop
        now = loop.time()
        i = balancer.pick(now, exclude=exclude)
        if i < 0:
            self.fail(503, f"no endpoints for {self.describe_route()}")
            return
        self.tried = i
        self.attempts += 1
        call = self.call
        if call is not None:
            call.connects += 1
        pool = balancer.items[i]
        self.load = balancer.loads[i]
        self.peer = pool.name
        if self.backend_timeout is not None:
            self._start_try_timer(self.backend_timeout)
        stream = self.conn.side.stream
        if stream is not None and self._streamable():
            stream(self, pool)
        else:
            self.own_connection(pool)

    def own_connection(self, pool: Pool) -> None:
        """Send on a connection of its own to `pool`'s endpoint: an idle one, else one
        opened for it (within the circuit breaker's limits)."""
        upstream = pool.take()
        if upstream is not None:
            self.bind(upstream)
            return
        call, balancer = self.call, self.balancer
        limits = None if call is None else call.limits
        if limits is not None and balancer is not None and not self._may_connect(limits, balancer):
            return
        pool.connect(self)

    def _streamable(self) -> bool:
        """Whether the request may go as a stream on a shared HTTP/2 connection: not a
        tunnel (an Upgrade or CONNECT needs a connection of its own), not chunked (its
        body is framed for HTTP/1.1 as it arrives), and not under circuit breaking
        that counts connections or requests waiting for one (decision 0111)."""
        head = self.head
        if head.tunnel or head.body == BODY_CHUNKED:
            return False
        call = self.call
        limits = None if call is None else call.limits
        return limits is None or (limits.max_connections is None and limits.max_pending is None)

    def _may_connect(self, limits: Limits, balancer: Balancer[Pool]) -> bool:
        """Circuit breaking: a new connection only within maxConnections, and a request
        waits for one only within maxPendingRequests; over either, a 503."""
        if limits.max_connections is not None:
            live = sum(pool.live for pool in balancer.items)
            if live >= limits.max_connections:
                self.fail(
                    503,
                    f"circuit breaker: {self.describe_route()} has {live} connections open "
                    f"(maxConnections {limits.max_connections})",
                )
                return False
        if limits.max_pending is not None and limits.pending >= limits.max_pending:
            self.fail(
                503,
                f"circuit breaker: {self.describe_route()} has {limits.pending} requests "
                f"waiting for a connection (maxPendingRequests {limits.max_pending})",
            )
            return False
        limits.pending += 1
        self.pending = True
        return True

    def _unpend(self) -> None:
        self.pending = False
        limits = None if self.call is None else self.call.limits
        if limits is not None:
            limits.pending -= 1

    # ---- timeouts and retries ---------------------------------------------------------

    def start_deadline(self, seconds: float) -> None:
        """timeouts.request: the whole exchange must be answered within `seconds`."""
        self.deadline = self.conn.loop.call_later(seconds, self._deadline_passed, seconds)

    def _deadline_passed(self, seconds: float) -> None:
        self.deadline = None
        if self.phase != Phase.FINISHED:
            self.fail(
                504, f"request timeout: {self.describe_route()} did not answer in {seconds:g}s"
            )

    def _start_try_timer(self, seconds: float) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
        self.try_timer = self.conn.loop.call_later(seconds, self._try_timed_out, seconds)

    def _try_timed_out(self, seconds: float) -> None:
        self.try_timer = None
        if self.phase >= Phase.RESPONDED:
            return
        self._outcome(failed=True)
        reason = f"backend request timeout: {self.peer} did not answer in {seconds:g}s"
        if self.phase < Phase.RESPONDING and (delay := self._retry_delay()) is not None:
            log.info("%s: %s; retrying", self.describe_route(), reason)
            self._drop_upstream()
            self._schedule_retry(delay)
            return
        self.fail(504, reason)

    def _retry_delay(self, unfinished: bool = False) -> float | None:
        """The backoff before sending the request again, or None: the call's retry
        policy, attempts and budget decide, for a request the proxy holds whole (no
        body, or one kept whole: see keep_for_replay).

        `unfinished`: also one whose body is still arriving, if it is kept whole for
        replay (the retry then waits for the rest)."""
        call = self.call
        if call is None:
            return None
        kept = self.head.body == BODY_NONE or self.replay is not None
        whole = kept and (self.request_done or (unfinished and self.replay is not None))
        return call.try_again(whole, self.conn.loop.time())

    def keep_for_replay(self) -> None:
        """Keep a copy of the request body for retries, if it is small enough to hold:
        a Content-Length body of at most REPLAY_LIMIT (Linkerd's 64 KiB). With
        `Expect: 100-continue` too: this hop answers the 100 itself, once (bind), and
        the body kept is what the client sends after it."""
        head = self.head
        if head.body != BODY_LENGTH or self.replay is not None:
            return
        length = head.content_length or b""
        if not length.isdigit() or int(length) > REPLAY_LIMIT:
            return
        out = self.out
        # What arrived before routing is in `out`, after the head.
        self.replay = out[1:] if out and out[0] is self.head_bytes else list(out)

    def _drop_upstream(self) -> None:
        """Let go of the current try's connection (mid-response: it cannot be reused)."""
        upstream = self.upstream
        self.upstream = None
        if self.pending:
            self._unpend()
        if upstream is not None:
            upstream.exchange = None
            upstream.reader.set_handler(DISCARD, False)
            upstream.abort()
            if self.load is not None:
                self.load.outstanding -= 1
        self.load = None

    def _schedule_retry(self, delay: float) -> None:
        self.phase = Phase.WAITING
        self.status = 0
        self.rout.clear()
        self.out = [self.head_bytes, *(self.replay or ())]
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if delay > 0:
            self.try_timer = self.conn.loop.call_later(delay, self._retry_now)
        else:
            self._retry_now()

    def _retry_when_whole(self, delay: float) -> None:
        if self.phase != Phase.FINISHED:
            self._schedule_retry(delay)

    def _retry_now(self) -> None:
        self.try_timer = None
        if self.phase != Phase.FINISHED:
            # Another endpoint if there is one; the same one is better than none.
            many = self.balancer is not None and len(self.balancer) > 1
            self.forward(exclude=self.tried if many else -1)

    def _outcome(self, failed: bool) -> None:
        """Outlier detection hears how the current try went."""
        call, load = self.call, self.load
        if call is not None and load is not None:
            call.outcome(load, failed, self.conn.loop.time(), self.peer)

    def connect_failed(self, err: ConnectError) -> None:
        if self.phase == Phase.FINISHED:
            return
        if self.pending:
            self._unpend()
        load = self.load
        now = self.conn.loop.time()
        if err.eject and load is not None:
            load.connect_failed(now)
            self._outcome(failed=True)
        log.warning("%s: %s", self.describe_route(), err.reason)
        # Nothing was sent, so the request may go to another endpoint: as the call's
        # retry policy says, else up to MAX_ATTEMPTS endpoints.
        balancer, call = self.balancer, self.call
        if balancer is None:
            again = False
        elif call is None:
            again = self.attempts - self.try_began < min(MAX_ATTEMPTS, len(balancer))
        else:
            again = call.connect_failed(len(balancer), now)
        if again:
            self.forward(exclude=self.tried)
        else:
            self.fail(err.status, err.reason, logged=True)

    def describe_route(self) -> str:
        route = self.route
        return route.label if route is not None else self.peer

    # ---- response direction (ResponseHandler) ------------------------------------------

    def response_head(self, head: ResponseHead) -> None:
        status = head.status
        req = self.head
        if status < 200 or req.tunnel:
            if req.tunnel and (200 <= status < 300 if req.method == b"CONNECT" else status == 101):
                self.switch = head  # the tunnel opens in response_upgrade
                if status == 101:
                    self.phase = Phase.INTERIM
                return
            if status < 200:
                self.phase = Phase.INTERIM
                if status != 101 and req.http11:
                    self.rout.append(response_head_bytes(status, head.reason, head.headers, b""))
                return
        load = self.load
        if load is not None:
            now = self.conn.loop.time()
            load.observe(now - self.sent_at, now)
        call = self.call
        if call is not None:
            self._outcome(failed=status >= 500)
            if call.retries_status(status) and (delay := self._retry_delay()) is not None:
                log.info("%s: %s answered %d; retrying", self.describe_route(), self.peer, status)
                self._drop_upstream()
                self._schedule_retry(delay)
                return
        self.phase = Phase.RESPONDING
        self.status = status
        if self.request_done:
            # No more tries (a response that has begun is not sent again), and a mirror
            # has had its copy: the body kept for them goes (until the request's end, if
            # the answer came first: see end_request).
            self.replay = None
        if self.response_edit is not None:
            head.headers = self.response_edit(head.headers)
        mode, framing = response_framing(head, req.http11)
        self.rmode = mode
        self.upstream_keep = head.keep_alive
        close = not req.keep_alive or mode == BODY_UNTIL_CLOSE or self.conn.client_eof
        self.close_after = close
        if close:
            if req.http11:
                framing += b"connection: close\r\n"
        elif not req.http11:
            framing += b"connection: keep-alive\r\n"
        self.rout.append(response_head_bytes(status, head.reason, head.headers, framing))

    def response_body(self, data: bytes) -> None:
        if self.rmode == BODY_CHUNKED:
            self.rout.extend((chunk_header(len(data)), data, _CRLF))
        else:
            self.rout.append(data)

    def response_end(self, trailers: Headers | None) -> None:
        if self.phase == Phase.INTERIM:
            self.phase = Phase.WAITING
            return
        if self.rmode == BODY_CHUNKED:
            self.rout.append(chunked_end(trailers))
        self.phase = Phase.RESPONDED

    def response_upgrade(self, data: bytes) -> None:
        if self.switch is None:
            raise ProtocolError(502, "upstream switched protocols unasked")
        self.rout.clear()
        self._open_tunnel(self.switch, data)

    def _open_tunnel(self, head: ResponseHead, data: bytes) -> None:
        """Upgrades and CONNECT: answer with `head`, then splice the two connections;
        `data` came after it.

        A request with `Connection: upgrade` and `Upgrade: <protocol>` (WebSocket, say),
        or a CONNECT, is forwarded like any other request, with its Upgrade header kept.
        When the answer is a 101 (or a 2xx to CONNECT) both connections stop being HTTP:
        their transports are handed to a pair of `Splice` ends (proxy.wire.splice) that
        carry bytes both ways with backpressure until either side closes. The exchange
        is recorded then, with the switching status, like any finished request.

        Any other answer is forwarded as a normal response, and the client's connection
        is closed after it (bytes it sent after the request may already belong to the
        protocol it asked for). Neither connection goes back to a pool once it carried
        a tunnel."""
        conn = self.conn
        if self.phase == Phase.FINISHED or self.upstream is None or conn.transport is None:
            return
        self.status = head.status
        upstream = self._end(UPSTREAM_TAKE, head.status)
        assert isinstance(upstream, UpstreamConnection)  # a tunnel is never a stream
        # The upstream connection leaves its pool for good.
        upstream.closed = True
        upstream.pool.live -= 1
        upstream.pool.discard(upstream)
        # And the downstream one leaves the side's connections (no more HTTP sweeps).
        conn.answering = None
        conn.closing = True
        conn.side.connection_lost(conn)

        req = self.head
        extra = b""
        if req.upgrade is not None:
            extra = b"connection: upgrade\r\nupgrade: " + req.upgrade + b"\r\n"
        down_transport = conn.transport
        down_transport.write(response_head_bytes(head.status, head.reason, head.headers, extra))
        if data:
            down_transport.write(data)
        up_transport = upstream.transport
        for piece in conn.tunnel_data:
            up_transport.write(piece)
        conn.tunnel_data = []

        registry = conn.side.splices
        down = Splice(registry=registry)
        up = Splice(registry=registry)
        call = self.call
        if call is not None:
            # The call holds its circuit-breaker request and bulkhead slots while the
            # tunnel is open, as a long request would (Envoy counts an upgraded stream
            # as an active request for its life); the latency an adaptive limit learns
            # is the upgrade's answer, not the tunnel's life. Set before either end is
            # made, so that no way the tunnel ends misses it.
            loop = conn.loop
            status = head.status
            answered = loop.time() - call.admitted_at

            def over() -> None:
                call.finish(status, loop.time(), answered)

            down.on_lost = up.on_lost = over
        down_transport.set_protocol(down)
        down.connection_made(down_transport)
        up_transport.set_protocol(up)
        up.connection_made(up_transport)
        down.join(up)
        conn.side.record(self, head.status, perf_counter() - self.started)
        # The splices own the transports now; the connections let them go (limits.LOST).
        conn.let_go()
        upstream.transport = LOST
        upstream.reader.release()

    def flush_response(self) -> None:
        out = self.rout
        if out:
            self.conn.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self.phase == Phase.RESPONDED:
            self._complete()

    def _end(self, upstream_to: int, status: int = 0) -> Upstream | None:
        """The one way an exchange ends, whatever ended it: FINISHED, its timers
        stopped, its place among the pending and the call's in-flight count given
        back, the endpoint's outstanding count with the upstream connection; and that
        connection let go as `upstream_to` says (UPSTREAM_POOL: back to its pool if both
        ends allow it, else closed; UPSTREAM_ABORT; UPSTREAM_TAKE: handed to the caller,
        which makes a tunnel of it). `status` is what the call ended with (0: no
        answer), for the TrafficControls (proxy.policy.control). Then the caller
        answers, records and hands the downstream connection on (`_done`)."""
        self.phase = Phase.FINISHED
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.pending:
            self._unpend()
        if self.in_flight is not None:
            self.in_flight.give()
            self.in_flight = None
        if self.call is not None and upstream_to != UPSTREAM_TAKE:
            # (A tunnel's call ends when the tunnel does: `_open_tunnel`.)
            self.call.finish(status, self.conn.loop.time())
        upstream = self.upstream
        if upstream is None:
            return None
        self.upstream = None
        upstream.exchange = None
        if self.load is not None:
            self.load.outstanding -= 1
        if upstream_to == UPSTREAM_TAKE:
            return upstream
        if upstream_to == UPSTREAM_ABORT:
            upstream.abort()
        elif self.request_done and self.upstream_keep:
            upstream.release()
        else:
            upstream.close()
        return None

    def _done(self, status: int) -> None:
        """Record the ended exchange and let its connection go on to the next request."""
        conn = self.conn
        conn.side.record(self, status, perf_counter() - self.started)
        conn.exchange_finished(self)

    def _complete(self) -> None:
        self._end(UPSTREAM_POOL, self.status)
        self._done(self.status)

    # ---- failures ----------------------------------------------------------------------

    def fail(
        self, status: int, reason: str, *, logged: bool = False, retry_after: bytes | None = None
    ) -> None:
        """Answer with a proxy-made error (or cut the response short if one started);
        `retry_after`: seconds for a `retry-after` header (a TrafficControl's refusal)."""
        if self.phase == Phase.FINISHED:
            return
        started = self.phase >= Phase.RESPONDING
        self._end(UPSTREAM_ABORT, self.status if started else status)
        conn = self.conn
        if not logged:
            log.warning("%s: %s", self.describe_route(), reason)
        if started:
            # Too late for an error response: closing is the only way to say the
            # response is incomplete.
            conn.abort()
            self._done(self.status)
            return
        close = self._closes()
        conn.write(
            error_response(
                status,
                reason,
                close=close,
                head_only=self.head.method == b"HEAD",
                retry_after=retry_after,
            )
        )
        self._done(status)

    def reply(self, status: int, headers: Headers, reason: str) -> None:
        """Answer with a response the proxy makes by design (a redirect), bodiless."""
        if self.phase == Phase.FINISHED:
            return
        self._end(UPSTREAM_ABORT, status)
        log.debug("%s", reason)
        close = self._closes()
        extra = b"content-length: 0\r\n" + (b"connection: close\r\n" if close else b"")
        self.conn.write(response_head_bytes(status, b"", headers, extra))
        self._done(status)

    def _closes(self) -> bool:
        """Whether the downstream connection closes after an answer the proxy makes."""
        conn = self.conn
        close = not self.request_done or not self.head.keep_alive or conn.client_eof
        self.close_after = close
        return close

    def upstream_lost(self, upstream: Upstream, reused: bool, refused: int = NOT_REFUSED) -> None:
        """The upstream connection closed or reset before the response ended.
        `refused`: how a peer refused the stream unprocessed (limits.GOAWAY_REFUSED,
        STREAM_REFUSED): sent again whatever its method, up to REFUSED_RETRIES times,
        when the request is held whole (RFC 9113 8.1.4; decision 0112): past a GOAWAY
        at once, after a REFUSED_STREAM (the peer at its limit) only to another
        endpoint; else, unless the retry policy tries again, a 503."""
        if self.phase == Phase.FINISHED:
            return
        self.upstream = None
        if self.load is not None:
            self.load.outstanding -= 1
        if upstream.answered:
            # Some of a response came (a 1xx, part of a head): the request reached the
            # upstream, which may have acted on it; it is not sent again.
            self.load = None
            self.fail(502, f"upstream reset: {self.peer} closed the connection mid-response")
            return
        kept = self.head.body == BODY_NONE or self.replay is not None
        many = self.balancer is not None and len(self.balancer) > 1
        if (
            refused
            and kept
            and self.refusals < REFUSED_RETRIES
            and (refused == GOAWAY_REFUSED or many)
        ):
            self.refusals += 1
            self.try_began = self.attempts
            self.load = None
            if self.call is not None:
                self.call.refused()
            log.info(
                "%s: %s refused the request unprocessed; sending it again",
                self.describe_route(),
                self.peer,
            )
            if self.request_done:
                self._schedule_retry(0.0)
            else:
                if self.after_request is None:
                    self.after_request = []
                self.after_request.append(lambda: self._retry_when_whole(0.0))
            return
        call = self.call
        if call is not None and call.retries_reset():
            self._outcome(failed=True)
            delay = self._retry_delay(unfinished=True)
            if delay is not None:
                log.info("%s: %s reset the connection; retrying", self.describe_route(), self.peer)
                self.load = None
                if self.request_done:
                    self._schedule_retry(delay)
                else:
                    # The rest of the body is on its way (and kept): the retry sends
                    # the request whole once it is in.
                    if self.after_request is None:
                        self.after_request = []
                    self.after_request.append(lambda: self._retry_when_whole(delay))
                return
        if refused:
            self.load = None
            how = "said GOAWAY" if refused == GOAWAY_REFUSED else "is at its limit of streams"
            self.fail(503, f"upstream refused the request unprocessed: {self.peer} {how}")
            return
        if self.retry_ok and reused and self.attempts < MAX_ATTEMPTS:
            # A pooled connection the peer had just closed: the request never reached
            # it, and a request without a body can be sent again.
            self.out = [self.head_bytes]
            self.load = None
            self.forward()
            return
        self.load = None
        self.fail(502, f"upstream reset: {self.peer} closed the connection")

    def downstream_lost(self) -> None:
        """The client went away before its answer: the upstream aborted, and the
        exchange counted as CLIENT_GONE (nginx's 499), so a service whose callers give
        up on it shows in the golden metrics instead of vanishing from them."""
        if self.phase != Phase.FINISHED:
            self._end(UPSTREAM_ABORT)
            self.conn.side.record(self, CLIENT_GONE, perf_counter() - self.started)


class UpstreamConnection(asyncio.Protocol):
    """A client connection to a peer's inbound listener or to the local app."""

    __slots__ = (
        "answered",
        "broken",
        "closed",
        "exchange",
        "idle_since",
        "pool",
        "read_paused",
        "reader",
        "served",
        "transport",
        "write_paused",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.reader = ResponseReader(_NO_HANDLER)
        self.exchange: Exchange | None = None
        # Whether any byte has come since the exchange was bound (Exchange.bind): a
        # request whose connection resets before that may be sent again.
        self.answered = False
        self.idle_since = 0.0
        self.served = 0
        self.closed = False
        # Its response could not be read as HTTP (or more came after it): closed, never
        # given back to its pool.
        self.broken = False
        self.read_paused = False
        self.write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.pool.live += 1

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # Bytes nobody asked for: the connection's state is unknown, drop it.
            self.close()
            return
        self.answered = True
        try:
            self.reader.feed(data)
        except ProtocolError as e:
            # What was read of a response goes on, but the connection is in a state no
            # one knows: never pooled again (`release` closes it). Bytes after a whole
            # response answer no request: the next request on this connection, maybe
            # for another service, must not get them.
            self.broken = True
            if isinstance(e, ExtraBytes):
                log.warning("%s sent bytes after its response: closed", self.pool.name)
            if self.exchange is not ex:
                return  # let go during the read (a retry): nothing of it is owed to `ex`
            ex.flush_response()
            ex.fail(e.status, f"{e.reason} from {self.pool.name}")
            return
        except Exception:
            self.broken = True
            log.exception("proxy error handling a response from %s", self.pool.name)
            if self.exchange is ex:
                ex.fail(502, f"proxy error reading the response from {self.pool.name}")
            return
        ex.flush_response()

    def eof_received(self) -> bool:
        ex = self.exchange
        if ex is not None and self.reader.eof():
            ex.flush_response()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.live -= 1
        self.pool.discard(self)
        self.transport = LOST  # freed now, not by the cycle collector (limits.LOST)
        ex = self.exchange
        if ex is not None:
            if exc is None and self.reader.eof():
                ex.flush_response()  # that was the end of a close-delimited response
            else:
                self.exchange = None
                ex.flush_response()
                ex.upstream_lost(self, self.served > 0)
        self.reader.release()

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.exchange
        if ex is not None:
            ex.conn.pause(PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.exchange
        if ex is not None:
            ex.conn.unpause(PAUSE_UPSTREAM)

    def send_request(self, out: list[bytes], done: bool) -> None:
        if out:
            transport = self.transport
            # A transport the peer just reset is closed before connection_lost says so;
            # writing to it would raise, and connection_lost will fail the exchange.
            if not transport.is_closing():
                transport.write(out[0] if len(out) == 1 else b"".join(out))

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def release(self) -> None:
        if self.broken:
            self.close()
            return
        self.served += 1
        self.resume_reading()
        self.pool.release(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.discard(self)
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.discard(self)
            self.transport.abort()


class _Discard:
    """Reads the rest of a response that a retry has replaced, into nowhere; also what a
    stream with no exchange bound hands its response to (proxy.outbound.h1to2)."""

    def response_head(self, head: ResponseHead) -> None:
        pass

    def response_body(self, data: bytes) -> None:
        pass

    def response_end(self, trailers: Headers | None) -> None:
        pass

    def response_upgrade(self, data: bytes) -> None:
        raise ProtocolError(502, "upstream switched protocols unasked")


DISCARD: Final = _Discard()


class _NoHandler:
    def response_head(self, head: ResponseHead) -> None:
        raise ProtocolError(502, "response without a request")

    def response_body(self, data: bytes) -> None:
        raise ProtocolError(502, "response without a request")

    def response_end(self, trailers: Headers | None) -> None:
        raise ProtocolError(502, "response without a request")

    def response_upgrade(self, data: bytes) -> None:
        raise ProtocolError(502, "response without a request")


_NO_HANDLER: Final = _NoHandler()


class Pool:
    """Keep-alive connections to one endpoint (a peer's inbound listener, or the app).

    Subclasses say how to open a connection; `open` raises ConnectError.
    """

    __slots__ = ("closed", "idle", "live", "loop", "max_idle", "name", "opening")

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, max_idle: int = 256) -> None:
        self.loop = loop
        self.name = name
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle
        self.closed = False
        self.live = 0  # connections made and not yet lost (circuit breaking counts them)
        self.opening: set[asyncio.Task[None]] = set()

    async def open(self) -> UpstreamConnection:
        raise NotImplementedError

    def take(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            upstream = idle.pop()
            if not upstream.closed and not upstream.transport.is_closing():
                return upstream
        return None

    def release(self, upstream: UpstreamConnection) -> None:
        if self.closed or len(self.idle) >= self.max_idle:
            upstream.close()
            return
        upstream.idle_since = self.loop.time()
        self.idle.append(upstream)

    def discard(self, upstream: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(upstream)

    def connect(self, ex: Exchange) -> None:
        task = self.loop.create_task(self._connect(ex, ex.attempts))
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    async def _connect(self, ex: Exchange, attempt: int) -> None:
        try:
            upstream = await self.open()
        except ConnectError as e:
            if ex.attempts == attempt:
                ex.connect_failed(e)
            return
        except Exception as e:
            log.exception("proxy error connecting to %s", self.name)
            if ex.attempts == attempt:
                ex.connect_failed(ConnectError(502, f"connect to {self.name} failed: {e}"))
            return
        if upstream.closed:
            # Lost between its handshake and now (the peer closed it at once): nothing
            # can be sent on it, and its reader is released (limits.LOST).
            if ex.attempts == attempt:
                ex.connect_failed(ConnectError(502, f"{self.name} closed the connection at once"))
            return
        if ex.phase == Phase.FINISHED or ex.attempts != attempt:
            # The client went away meanwhile, or a timeout moved the request on to
            # another try; the connection is still good to keep.
            upstream.release()
        else:
            # Also when the pool was closed meanwhile (its endpoint left the snapshot):
            # the request goes on the connection opened for it, which is closed after.
            ex.bind(upstream)

    def sweep(self, now: float, idle_timeout: float) -> None:
        if not self.idle:
            return
        keep = []
        for upstream in self.idle:
            if now - upstream.idle_since > idle_timeout:
                upstream.closed = True
                upstream.transport.close()
            else:
                keep.append(upstream)
        self.idle = keep

    def close(self) -> None:
        """Close the idle connections; those in use close when their exchange ends.

        Connections being opened are left to finish: each has a request waiting for
        it, which would otherwise never be answered. Whoever closes the data plane
        cancels them (see `opening`)."""
        self.closed = True
        idle, self.idle = self.idle, []
        for upstream in idle:
            upstream.close()
