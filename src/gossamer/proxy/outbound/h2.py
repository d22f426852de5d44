"""HTTP/2 streams from the local app, routed through the mesh to a peer.

A stream is routed by `:authority` as HTTP/1.1 is by Host, to an endpoint picked by
the service port's balancer, over one multiplexed mTLS connection per endpoint (ALPN
``gossamer/h2``). Its policies are a `Call`'s (proxy.policy.call), as for HTTP/1.1.
Every stream is counted in the same request metrics as HTTP/1.1, and tapped, logged and
traced like it (proxy.observe.hooks) when those are on.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING

from gossamer.proxy.forward.connect import PeerPool
from gossamer.proxy.forward.exchange import ConnectError
from gossamer.proxy.forward.streams import grpc_status_label, observe, observed, serve
from gossamer.proxy.observe.hooks import APP_CALLER, StreamRequest
from gossamer.proxy.policy import Answer, Call, failed
from gossamer.proxy.policy.call import proceed
from gossamer.proxy.policy.routematch import chain_edits
from gossamer.proxy.policy.routing import NoRoute, Route
from gossamer.proxy.wire.http1 import ORIG_PROTO_HEADER, SRC_SERVICE_HEADER
from gossamer.proxy.wire.http2 import (
    REFUSED_REPLAY_LIMIT,
    H2Connection,
    Headers,
    StreamPair,
    forwardable,
    header,
    is_grpc,
)
from gossamer.proxy.wire.limits import GOAWAY_REFUSED, NOT_REFUSED, REFUSED_RETRIES, REPLAY_LIMIT

if TYPE_CHECKING:
    from gossamer.proxy.forward.plane import Plane
    from gossamer.proxy.outbound.plane import OutboundPlane
    from gossamer.proxy.policy.balancer import EndpointLoad

log = logging.getLogger("gossamer.proxy")

_DROP_FROM_APP = frozenset((SRC_SERVICE_HEADER, ORIG_PROTO_HEADER, b"proxy-authorization"))


class OutboundH2:
    """Routes HTTP/2 streams from the local app (h2c prior knowledge)."""

    def __init__(self, dp: OutboundPlane) -> None:
        self.dp = dp
        # Shared with HTTP/1.1 carried as streams (proxy.outbound.h1to2).
        self.links = dp.peer_links

    def serve(self, transport: asyncio.BaseTransport, data: bytes, peer: str) -> None:
        """Take over a connection from the local app that began with the preface."""
        serve(self.dp, transport, self, data, f"app client {peer}")

    def new_stream(self, conn: H2Connection, stream_id: int, headers: Headers) -> None:
        pair = StreamPair(conn, stream_id, perf_counter())
        request = None
        if self.dp.hooks is not None:
            request, headers = observe(self.dp, "outbound", pair, headers, APP_CALLER)
        authority = header(headers, b":authority") or header(headers, b"host") or b""
        found = self.lookup(authority)
        if isinstance(found, str):
            self.dp.await_interest(
                found, lambda: self._route(pair, headers, authority, True, request)
            )
            return
        self._route(pair, headers, authority, False, request)

    def lookup(self, authority: bytes) -> Route[PeerPool] | NoRoute | str:
        """Where a stream for `authority` goes (see RouteTable.lookup_host). A TCP
        upstream's listener names its service port instead (proxy.tcp)."""
        if not authority:
            return NoRoute(400, "malformed request: no :authority to route by")
        return self.dp.table.lookup_host(authority)

    def _route(
        self,
        pair: StreamPair,
        headers: Headers,
        authority: bytes,
        waited: bool,
        request: StreamRequest | None = None,
    ) -> None:
        if pair.done:
            return
        found = self.lookup(authority)
        if isinstance(found, Route):
            _OutboundStream(self, pair, found, headers, request).start()
            return
        _count_unrouted(self.dp, pair, request)
        if isinstance(found, NoRoute):
            pair.reply(found.status, found.reason)
        else:
            pair.reply(503, f"no route for host {authority.decode('latin-1')}")


# gRPC status codes the proxy answers with (grpc/doc/statuscodes.md).
GRPC_DEADLINE_EXCEEDED = 4
GRPC_UNAVAILABLE = 14


def _grpc_code_for(status: int) -> int:
    """The gRPC status for an HTTP status the proxy answers a gRPC call with, as gRPC
    maps them (doc/http-grpc-status-mapping.md): 429, 502, 503 and 504 are UNAVAILABLE,
    and the rest UNKNOWN-like codes; a timeout has its own."""
    return {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}.get(status, 2)


def _count_unrouted(dp: Plane, pair: StreamPair, request: StreamRequest | None) -> None:
    """A stream the proxy answers before it knows the service: counted as HTTP/1.1's
    are, to destination "unknown"."""

    def done(p: StreamPair) -> None:
        dp.table.unrouted_stats(p.outcome).observe(perf_counter() - p.started)
        if request is not None:
            observed(dp, "outbound", request, p)

    pair.on_done = done


class _OutboundStream:
    """One stream from the app to a service port. Its policies are a `Call`'s
    (proxy.policy.call), decided as for HTTP/1.1: FaultPolicy, the HTTPRoutes or
    GRPCRoutes (match, header edits, weighted backend, timeouts), the backend's
    CircuitBreakerPolicy, RetryPolicy (or the rule's `retry`) and OutlierPolicy.
    Counted from the moment the service is known, also when the proxy answers it
    itself. Header modifiers apply to requests and responses alike; mirrors, redirects
    and rewrites are not applied to HTTP/2 (decision 0040).

    What is HTTP/2's own: a retry sends the whole stream again when its request has
    ended and its DATA fit REPLAY_LIMIT (kept as it passes), and a gRPC call is
    replayable whatever its method; a gRPC client is answered with a grpc-status.
    """

    __slots__ = (
        "call",
        "dp",
        "headers",
        "load",
        "owner",
        "pair",
        "peer",
        "refusals",
        "request",
        "retry_timer",
        "timer",
        "tried",
        "try_timer",
    )

    def __init__(
        self,
        owner: OutboundH2,
        pair: StreamPair,
        route: Route[PeerPool],
        headers: Headers,
        request: StreamRequest | None,
    ) -> None:
        self.owner = owner
        self.dp = owner.dp
        self.pair = pair
        self.headers = headers
        self.request = request
        self.call: Call[PeerPool] = Call(route, header(headers, b":method") or b"")
        self.load: EndpointLoad | None = None
        self.timer: asyncio.TimerHandle | None = None  # a fault's delay, then timeouts.request
        self.retry_timer: asyncio.TimerHandle | None = None
        self.try_timer: asyncio.TimerHandle | None = None
        self.tried = -1
        self.refusals = 0  # tries the upstream refused unprocessed, sent again
        self.peer = "upstream"  # the endpoint of the current try
        pair.on_done = self._done
        if request is not None:
            request.route = route

    def fail(
        self,
        status: int,
        reason: str,
        grpc_code: int | None = None,
        retry_after: bytes | None = None,
    ) -> None:
        """Answer with a proxy-made error: a gRPC call the way gRPC clients read one.
        `retry_after`: seconds, as `retry-after` (gRPC: `grpc-retry-pushback-ms`)."""
        if not self.pair.status and is_grpc(self.headers):
            code = _grpc_code_for(status) if grpc_code is None else grpc_code
            self.pair.reply_grpc(code, reason, retry_after)
        else:
            self.pair.reply(status, reason, retry_after)

    def answer(self, answer: Answer) -> None:
        self.fail(answer.status, answer.reason, answer.grpc_code, answer.retry_after_value())

    def start(self) -> None:
        fault = self.call.fault()
        if isinstance(fault, Answer):
            self.answer(fault)
        elif fault is not None:
            self.timer = self.dp.loop.call_later(fault, self._after_delay)
        else:
            self._routes()

    def _after_delay(self) -> None:
        self.timer = None
        if not self.pair.done:
            self._routes()

    def _routes(self) -> None:
        call = self.call
        target, rule_retry = call.route, None
        if target.router is not None:
            headers = self.headers
            plain = [(n, v) for n, v in headers if n[:1] != b":"]
            routed = call.apply_routes(
                header(headers, b":method") or b"GET",
                header(headers, b":path") or b"/",
                header(headers, b":authority"),
                plain,
            )
            if isinstance(routed, Answer):
                self.answer(routed)
                return
            assert routed is not None
            rule, backend = routed.rule, routed.backend
            if backend is None or routed.target is None or rule.spec.rewrite is not None:
                self.fail(501, f"{rule.label}: redirects and rewrites are not applied to HTTP/2")
                return
            if rule.request_edit is not None or backend.request_edit is not None:
                if rule.request_edit is not None:
                    plain = rule.request_edit.apply(plain)
                if backend.request_edit is not None:
                    plain = backend.request_edit.apply(plain)
                pseudo = [(n, v) for n, v in headers if n[:1] == b":"]
                self.headers = pseudo + [(n.lower(), v) for n, v in plain]
            if rule.response_edit is not None or backend.response_edit is not None:
                self.pair.response_edit = chain_edits(rule.response_edit, backend.response_edit)
            target, rule_retry = routed.target, rule.retry
            if call.timeout is not None:
                self.timer = self.dp.loop.call_later(call.timeout, self._timed_out, call.timeout)
        loop = self.dp.loop
        verdict = call.admit(target, rule_retry, loop.time())
        if verdict is None:
            self._admitted()
        else:
            # Refused, or held back in a TrafficControl's queue (proxy.policy.control).
            proceed(verdict, loop.call_later, loop.time, self._admitted, self.answer)

    def _admitted(self) -> None:
        call = self.call
        if self.pair.done:
            return
        pair = self.pair
        pair.on_reset = self._on_reset
        if call.retry is not None:
            # A gRPC call may be sent again whatever its method: the retry policy on
            # it says its client may see it twice.
            call.replayable = call.replayable or is_grpc(self.headers)
            if call.replayable:
                pair.on_response = self._on_response
        # Kept whatever the policy, for a stream the upstream refuses unprocessed
        # (`_on_reset`); without one, less of it (REFUSED_REPLAY_LIMIT).
        pair.start_keeping(REPLAY_LIMIT if pair.on_response is not None else REFUSED_REPLAY_LIMIT)
        self._attach()

    def _timed_out(self, seconds: float) -> None:
        self.timer = None
        if not self.pair.done:
            self.fail(
                504,
                f"request timeout: {self.call.route.label} did not answer in {seconds:g}s",
                GRPC_DEADLINE_EXCEEDED,
            )

    def _attach(self) -> None:
        """Open the stream to an endpoint (another than the last, when there is one)."""
        call, pair, dp = self.call, self.pair, self.dp
        route = call.route
        balancer = route.balancer
        i = balancer.pick(dp.loop.time(), exclude=self.tried if len(balancer) > 1 else -1)
        if i < 0:
            self.fail(503, f"no endpoints for {route.label}")
            return
        self.tried = i
        call.connects += 1
        pool = balancer.items[i]
        self.peer = pool.name
        load = self.load = balancer.loads[i]
        load.outstanding += 1
        request = self.request
        if request is not None:
            request.route, request.balancer, request.tried = route, balancer, i
            request.peer = pool.name
        contexts = dp.contexts
        if contexts is None or contexts.client_h2 is None:
            self.fail(503, "no certificate yet to call peers with")
            return
        src = dp.table.src_service
        fwd = forwardable(self.headers, _DROP_FROM_APP)
        if src:
            fwd.append((SRC_SERVICE_HEADER, src))

        def then(result: H2Connection | ConnectError) -> None:
            if pair.done:
                return
            if isinstance(result, ConnectError):
                if result.eject:
                    load.connect_failed(dp.loop.time())
                self._let_go(failed=True if result.eject else None)
                if call.connect_failed(len(balancer), dp.loop.time()):
                    log.warning("%s: %s; trying another endpoint", route.label, result.reason)
                    self._attach()
                else:
                    self.fail(result.status, f"{route.label}: {result.reason}")
                return
            if load.failures:
                load.connected()
            pair.attach(result, fwd)
            if call.per_try is not None and not pair.done:
                self.try_timer = dp.loop.call_later(call.per_try, self._try_timed_out, call.per_try)

        self.owner.links.get(pool, pool.name, pool.open_link, then)

    def _on_response(self, pair: StreamPair, status: int, grpc_status: bytes | None) -> bool:
        """A response head from upstream: True when it is dropped for a retry."""
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if not self.call.retries_status(status, grpc_status):
            return False
        what = f"grpc-status {grpc_status.decode()}" if grpc_status == b"14" else str(status)
        return self._try_again(f"answered {what}")

    def _on_reset(self, pair: StreamPair) -> bool:
        """The upstream stream was reset or its connection lost before an answer. One
        the upstream refused unprocessed is sent again whatever the retry policy says,
        up to REFUSED_RETRIES times, if its DATA were kept (RFC 9113 8.1.4: it reached
        no application; decision 0112): past a GOAWAY, at once (a new connection takes
        it); refused with REFUSED_STREAM (the peer at its limit), only to another
        endpoint, else the refusal is passed on. Another reset, as the retry policy
        says."""
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        refused = pair.refused
        if refused and pair.replay is not None and self.refusals < REFUSED_RETRIES:
            balancer = self.call.route.balancer
            if refused == GOAWAY_REFUSED or len(balancer) > 1:
                pair.refused = NOT_REFUSED
                self.refusals += 1
                self._let_go(failed=None)
                self.call.refused()
                log.info(
                    "%s: %s refused the stream unprocessed; sending it again",
                    self.call.route.label,
                    self.peer,
                )
                pair.restart_upstream()
                self._attach()
                return True
        if not self.call.retries_reset():
            return False  # a refusal goes on as one (http2._lost)
        return self._try_again("refused" if refused else "reset before answering")

    def _try_timed_out(self, seconds: float) -> None:
        self.try_timer = None
        pair = self.pair
        if pair.done or pair.status:
            return
        reason = f"backend request timeout: {self.peer} did not answer in {seconds:g}s"
        if not self._try_again(reason):
            self.fail(504, reason, GRPC_DEADLINE_EXCEEDED)

    def _try_again(self, reason: str) -> bool:
        """Send the request again, if the retry policy, its budget and the request allow."""
        pair = self.pair
        whole = pair.replay is not None and pair.down.recv_end
        delay = self.call.try_again(whole, self.dp.loop.time())
        if delay is None:
            return False
        self._let_go(failed=True)
        log.info("%s: %s; retrying", self.call.route.label, reason)
        pair.restart_upstream()
        if delay > 0:
            self.retry_timer = self.dp.loop.call_later(delay, self._retry_now)
        else:
            self._retry_now()
        return True

    def _retry_now(self) -> None:
        self.retry_timer = None
        if not self.pair.done:
            self._attach()

    def _let_go(self, failed: bool | None) -> None:
        """The current try's endpoint is done with: its load, and outlier detection's
        verdict (None: none, as when the client went away before an answer)."""
        load = self.load
        if load is None:
            return
        self.load = None
        load.outstanding -= 1
        if failed is not None:
            self.call.outcome(load, failed, self.dp.loop.time())

    def _done(self, p: StreamPair) -> None:
        dp = self.dp
        now = dp.loop.time()
        seconds = perf_counter() - p.started
        for timer in (self.timer, self.retry_timer, self.try_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.retry_timer = self.try_timer = None
        call = self.call
        # The controls hear a gRPC call shed upstream (UNAVAILABLE, RESOURCE_EXHAUSTED)
        # as the 503 an HTTP call would have been.
        overloaded = p.grpc_status in (b"14", b"8")
        call.finish(503 if overloaded else p.status, now)
        load = self.load
        if load is not None and p.status:
            load.observe(seconds, now)
        self._let_go(failed=failed(p.status, p.grpc_status) if p.status else None)
        call.stats(p.outcome, grpc_status_label(p.grpc_status)).observe(seconds)
        request = self.request
        if request is not None:
            request.retries = call.retries
            observed(dp, "outbound", request, p)
