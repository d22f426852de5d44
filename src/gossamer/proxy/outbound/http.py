"""The outbound side: plain HTTP from the local app, routed by Host to a peer over mTLS."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Final, cast

import httptools

from gossamer.proxy.forward.connect import PeerPool
from gossamer.proxy.forward.exchange import (
    PAUSE_ROUTE,
    Exchange,
    ServerConnection,
)
from gossamer.proxy.outbound.h1to2 import Streamer
from gossamer.proxy.outbound.h2 import OutboundH2
from gossamer.proxy.policy import Answer, Call
from gossamer.proxy.policy.call import proceed
from gossamer.proxy.policy.routematch import (
    CompiledBackend,
    CompiledRule,
    chain_edits,
    modified_path,
    redirect_location,
)
from gossamer.proxy.policy.routing import NoRoute, Route
from gossamer.proxy.wire.http1 import (
    BODY_NONE,
    OUTBOUND_REQUEST_KINDS,
    ProtocolError,
    RequestHead,
    request_framing,
    request_head_bytes,
)

if TYPE_CHECKING:
    from gossamer.proxy.outbound.plane import OutboundPlane
    from gossamer.proxy.wire.limits import InFlight

log = logging.getLogger("gossamer.proxy")

# A mirrored request that has not been answered by then is given up.
MIRROR_TIMEOUT: Final = 10.0


class OutboundSide:
    """Routes requests from the local app (see httpproxy.Side)."""

    request_kinds = OUTBOUND_REQUEST_KINDS

    def __init__(self, dp: OutboundPlane) -> None:
        self.dp = dp
        self.loop = dp.loop
        self.splices = dp.splices
        self._h2: OutboundH2 | None = None
        # HTTP/1.1 requests as streams on the peer's HTTP/2 connection, unless
        # multiplex_http1 is off (proxy.outbound.h1to2).
        self.stream: Streamer | None = (
            Streamer(dp, dp.peer_links) if dp.config.multiplex_http1 else None
        )

    @property
    def in_flight(self) -> InFlight | None:
        return self.dp.in_flight

    def connection_made(self, conn: ServerConnection) -> None:
        self.dp.connections.add(conn)

    def connection_lost(self, conn: ServerConnection) -> None:
        self.dp.connections.discard(conn)

    def serve_h2(self, conn: ServerConnection, data: bytes) -> bool:
        """h2c with prior knowledge from the app, on the HTTP/1.1 port (proxy.forward.streams)."""
        if self._h2 is None:
            self._h2 = OutboundH2(self.dp)
        transport = conn.transport
        assert transport is not None
        conn.closing = True
        self.connection_lost(conn)
        self._h2.serve(transport, data, conn.describe())
        conn.let_go()  # HTTP/2 has the transport now
        return True

    def start(self, ex: Exchange) -> None:
        head = ex.head
        target = head.target
        if head.method == b"CONNECT":
            # Authority form (RFC 9110 9.3.6): the target names the service to route by.
            head.host = target
        elif target[:1] != b"/" and target != b"*":
            # Absolute form, as HTTP_PROXY clients send: its authority replaces Host.
            try:
                url = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                ex.error = ProtocolError(400, "malformed request: bad request target")
                return
            if url.schema != b"http" or not url.host:
                ex.error = ProtocolError(
                    400, "only http:// URLs can be sent through the proxy; use https inside mTLS"
                )
                return
            head.host = url.host + (b":%d" % url.port if url.port else b"")
            path = url.path or b"/"
            head.target = path + b"?" + url.query if url.query else path
        if not head.host:
            ex.error = ProtocolError(400, "malformed request: no Host header to route by")
            return
        tracer = self.dp.tracer
        if tracer is not None:
            tracer.start(ex, True)
        ex.head_bytes = request_head_bytes(
            head.method,
            head.target,
            head.host,
            head.headers,
            request_framing(head) + self.dp.table.src_service_line,
        )
        ex.out.append(ex.head_bytes)

    def dispatch(self, ex: Exchange) -> None:
        if ex.error is not None:
            ex.fail(ex.error.status, ex.error.reason)
            return
        host = ex.head.host
        assert host is not None
        found = self.lookup(host)
        if isinstance(found, Route):
            self._send(ex, found)
        elif isinstance(found, NoRoute):
            ex.fail(found.status, found.reason)
        else:
            ex.conn.pause(PAUSE_ROUTE)
            self.dp.await_interest(found, lambda: self._interest_answered(ex, host))

    def lookup(self, host: bytes) -> Route[PeerPool] | NoRoute | str:
        """Where a request for `host` goes (see RouteTable.lookup_host). A TCP
        upstream's listener names its service port instead (proxy.outbound.tcp)."""
        return self.dp.table.lookup_host(host)

    def _interest_answered(self, ex: Exchange, host: bytes) -> None:
        if ex.finished:
            return
        ex.conn.unpause(PAUSE_ROUTE)
        found = self.lookup(host)
        if isinstance(found, Route):
            self._send(ex, found)
        elif isinstance(found, NoRoute):
            ex.fail(found.status, found.reason)
        else:
            ex.fail(
                503,
                f"no route for host {host.decode('latin-1')}: the control plane did not "
                f"answer about {found} in {self.dp.config.interest_timeout:g}s",
            )

    # ---- traffic management ---------------------------------------------------------

    def _send(self, ex: Exchange, route: Route[PeerPool]) -> None:
        """A request for a service port: its policies are a `Call`'s (proxy.policy):
        faults, then its HTTPRoutes, then a backend; a port with none takes the fast
        path straight to its balancer."""
        ex.route = route
        if not route.managed:
            ex.balancer = route.balancer
            ex.forward()
            return
        call: Call[PeerPool] = Call(route, ex.head.method)
        ex.call = call
        fault = call.fault()
        if isinstance(fault, Answer):
            ex.fail(fault.status, fault.reason)
        elif fault is not None:
            self.loop.call_later(fault, self._after_delay, ex)
        else:
            self._route(ex, call)

    def _after_delay(self, ex: Exchange) -> None:
        call = ex.call
        if not ex.finished and call is not None:
            self._route(ex, call)

    def _route(self, ex: Exchange, call: Call[PeerPool]) -> None:
        head = ex.head
        routed = call.apply_routes(head.method, head.target, head.host, head.headers)
        if isinstance(routed, Answer):
            ex.fail(routed.status, routed.reason)
            return
        target, rule_retry = call.route, None
        if routed is not None:
            rule, backend = routed.rule, routed.backend
            if backend is None or routed.target is None:
                self._redirect(ex, call.route, rule)
                return
            self._edit(ex, rule, backend)
            if rule.mirrors:
                for mirror_route, share in rule.mirrors:
                    if share >= 1.0 or random.random() < share:
                        self._mirror(ex, mirror_route)
            target, rule_retry = routed.target, rule.retry
        if call.timeout is not None:
            ex.start_deadline(call.timeout)
        verdict = call.admit(target, rule_retry, self.loop.time())
        ex.route = target
        if verdict is None:
            self._admitted(ex, call, target)
        else:
            # Refused, or held back in a TrafficControl's queue (proxy.policy.control).
            proceed(
                verdict,
                self.loop.call_later,
                self.loop.time,
                lambda: self._admitted(ex, call, target),
                lambda answer: ex.fail(
                    answer.status, answer.reason, retry_after=answer.retry_after_value()
                ),
            )

    def _admitted(self, ex: Exchange, call: Call[PeerPool], target: Route[PeerPool]) -> None:
        if ex.finished:
            return
        ex.balancer = target.balancer
        ex.backend_timeout = call.per_try
        if call.retry is not None:
            ex.keep_for_replay()
        ex.forward()

    def _edit(
        self,
        ex: Exchange,
        rule: CompiledRule[Route[PeerPool]],
        backend: CompiledBackend[Route[PeerPool]],
    ) -> None:
        """The rule's and the backend's header modifiers and the rule's URL rewrite,
        on the request head; their response header modifiers, on the answer."""
        head, spec = ex.head, rule.spec
        rewrite = spec.rewrite
        if rule.request_edit is not None or backend.request_edit is not None or rewrite:
            if rule.request_edit is not None:
                head.headers = rule.request_edit.apply(head.headers)
            if backend.request_edit is not None:
                head.headers = backend.request_edit.apply(head.headers)
            if any(name.lower() == b"host" for name, _ in head.headers):
                # A modifier that set Host: it is written once, from head.host.
                head.host = next(v for n, v in head.headers if n.lower() == b"host")
                head.headers = [(n, v) for n, v in head.headers if n.lower() != b"host"]
            if rewrite is not None:
                if rewrite.hostname is not None:
                    head.host = rewrite.hostname.encode()
                if rewrite.path is not None:
                    path, sep, query = head.target.decode("latin-1").partition("?")
                    new = modified_path(path, rewrite.path, spec.prefix)
                    head.target = (new + sep + query).encode("latin-1")
            self._rebuild_head(ex)
        if rule.response_edit is not None or backend.response_edit is not None:
            ex.response_edit = chain_edits(rule.response_edit, backend.response_edit)

    def _rebuild_head(self, ex: Exchange) -> None:
        head = ex.head
        old = ex.head_bytes
        ex.head_bytes = request_head_bytes(
            head.method,
            head.target,
            head.host,
            head.headers,
            request_framing(head) + self.dp.table.src_service_line,
        )
        if ex.out and ex.out[0] is old:
            ex.out[0] = ex.head_bytes
        else:
            ex.out.insert(0, ex.head_bytes)

    def _redirect(
        self, ex: Exchange, route: Route[PeerPool], rule: CompiledRule[Route[PeerPool]]
    ) -> None:
        spec = rule.spec
        assert spec.redirect is not None
        head = ex.head
        path, _, query = head.target.decode("latin-1").partition("?")
        location = redirect_location(
            spec.redirect,
            (head.host or b"").decode("latin-1"),
            path,
            query,
            route.port,
            spec.prefix,
        )
        ex.reply(
            spec.redirect.status_code,
            [(b"location", location.encode("latin-1"))],
            f"{rule.label}: redirect to {location}",
        )

    def _mirror(self, ex: Exchange, route: Route[PeerPool]) -> None:
        """RequestMirror: a copy to `route`, its answer thrown away; never waited for.

        A request with a Content-Length body of at most REPLAY_LIMIT is copied whole
        (the body is kept as it arrives, as for a retry, and the copy leaves once it is
        all in); a chunked or larger body and a tunnel are not copied."""
        head = ex.head
        if head.tunnel:
            return
        if head.body != BODY_NONE:
            ex.keep_for_replay()
            if ex.replay is None:
                return  # not a body the proxy may hold whole
            if not ex.request_done:
                if ex.after_request is None:
                    ex.after_request = []
                ex.after_request.append(lambda: self._send_mirror(ex, route))
                return
        self._send_mirror(ex, route)

    def _send_mirror(self, ex: Exchange, route: Route[PeerPool]) -> None:
        head = ex.head
        copy = RequestHead()
        copy.method = head.method
        copy.target = head.target
        copy.host = head.host
        copy.headers = head.headers
        mirror = Exchange(cast(ServerConnection, _MirrorSink(self.loop)), copy)
        mirror.head_bytes = ex.head_bytes
        mirror.out = [ex.head_bytes, *(ex.replay or ())]
        mirror.request_done = True
        mirror.route = route
        mirror.balancer = route.balancer
        mirror.backend_timeout = MIRROR_TIMEOUT
        mirror.forward()

    def record(self, ex: Exchange, status: int, seconds: float) -> None:
        hooks = self.dp.hooks
        if hooks is not None:
            hooks.finished("outbound", ex, status, seconds)
        call = ex.call
        if call is not None:
            call.stats(status).observe(seconds)
            return
        route = ex.route
        if isinstance(route, Route):
            route.stats_for(status).observe(seconds)
            return
        self.dp.table.unrouted_stats(status).observe(seconds)


class _MirrorSink:
    """Stands in for the client of a mirrored request: whatever comes back is dropped."""

    # A mirrored request takes a connection of its own.
    stream = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.side = self
        self.write_paused = False
        self.client_eof = False
        self.closing = False

    def write(self, data: bytes) -> None:
        pass

    def pause(self, reason: int) -> None:
        pass

    def unpause(self, reason: int) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def exchange_finished(self, ex: Exchange) -> None:
        pass

    def record(self, ex: Exchange, status: int, seconds: float) -> None:
        if status >= 500 or status == 0:
            log.debug("mirrored request to %s: %d", ex.describe_route(), status)
