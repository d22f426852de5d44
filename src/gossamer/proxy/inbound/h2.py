"""HTTP/2 streams from a peer (ALPN gossamer/h2), carried to the local app.

Each stream is authorized (proxy.policy.authorize) and carried to the app over one h2c
connection per local port when the port's appProtocol says the app speaks HTTP/2;
otherwise as an HTTP/1.1 request on the app's keep-alive connections
(proxy.inbound.h2to1), except a gRPC call, which needs HTTP/2 and is answered with a
gRPC error that says to declare the port. Counted in the inbound request metrics, and
tapped, logged and traced (proxy.observe.hooks) when those are on.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from gossamer.proxy.forward.exchange import ConnectError
from gossamer.proxy.forward.streams import Links, grpc_status_label, observe, observed
from gossamer.proxy.inbound import h2to1
from gossamer.proxy.observe.hooks import StreamCaller
from gossamer.proxy.policy.authorize import authorize_http
from gossamer.proxy.policy.routing import LocalRoute, NoRoute
from gossamer.proxy.wire.http1 import ORIG_PROTO_HEADER, SRC_SERVICE_HEADER
from gossamer.proxy.wire.http2 import (
    H2Connection,
    Headers,
    StreamPair,
    forwardable,
    header,
    is_grpc,
)

if TYPE_CHECKING:
    from gossamer.proxy.inbound.http import AppPool
    from gossamer.proxy.inbound.plane import InboundPlane

_DROP_FROM_PEER = frozenset((SRC_SERVICE_HEADER, ORIG_PROTO_HEADER))
# What a request carried as a stream by the peer (proxy.outbound.h1to2) was.
_ORIG_PROTOCOLS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0"}
# The gRPC status for a call to a port that does not speak gRPC: not transient, so a
# client does not retry it (UNAVAILABLE would be).
GRPC_UNIMPLEMENTED = 12


class InboundH2:
    """Carries HTTP/2 streams from a peer (ALPN gossamer/h2) to the local app."""

    # Whether the streams came over mTLS; plaintext ones (PERMISSIVE mode, see
    # proxy.inbound) are counted tls="false".
    tls = True

    def __init__(
        self,
        dp: InboundPlane,
        links: Links,
        server_name: str | None,
        peer_identity: str | None,
        peer_namespace: str,
        peer_address: str,
    ) -> None:
        self.dp = dp
        self.links = links
        self.server_name = server_name
        self.peer_identity = peer_identity
        self.peer_namespace = peer_namespace
        self.peer_address = peer_address
        self.caller = StreamCaller(peer_address.encode("latin-1"), peer_identity, peer_namespace)

    def new_stream(self, conn: H2Connection, stream_id: int, headers: Headers) -> None:
        dp = self.dp
        pair = StreamPair(conn, stream_id, perf_counter())
        request = None
        if dp.hooks is not None:
            request, headers = observe(dp, "inbound", pair, headers, self.caller)
        # What a peer proxy says the request was (proxy.outbound.h1to2); a plaintext
        # client (PERMISSIVE) is no peer proxy, and is not taken at its word.
        orig = header(headers, ORIG_PROTO_HEADER) if self.peer_identity is not None else None
        if request is not None and orig is not None:
            request.protocol = _ORIG_PROTOCOLS.get(orig, request.protocol)
        table = dp.table
        route = self.local_route(headers)
        if isinstance(route, NoRoute):
            pair.reply(route.status, route.reason)
            return
        src = header(headers, SRC_SERVICE_HEADER)
        tls = self.tls

        def done(p: StreamPair) -> None:
            stats = table.inbound_stats_for(
                self.peer_namespace, src, p.outcome, tls, grpc_status_label(p.grpc_status)
            )
            stats.observe(perf_counter() - p.started)
            if request is not None:
                observed(dp, "inbound", request, p)

        pair.on_done = done
        pool: AppPool = route.pool
        if request is not None:
            request.route, request.peer = route, pool.name
        if not dp.authorizer.allows_everything and not self._authorize(pair, route, headers):
            return
        fwd = forwardable(headers, _DROP_FROM_PEER)
        xff = header(headers, b"x-forwarded-for")
        address = self.peer_address.encode()
        if xff is not None:
            fwd = [(n, v) for n, v in fwd if n != b"x-forwarded-for"]
        fwd.append((b"x-forwarded-for", xff + b", " + address if xff else address))
        if orig is not None:
            # HTTP/1.x the peer carried as a stream (proxy.outbound.h1to2): to the app as
            # it would have come over HTTP/1.1 (whatever its content-type, as on that
            # path), refused by a gRPC-only one.
            if route.grpc_only:
                pair.reply(502, route.http1_refusal())
            else:
                h2to1.carry(pair, fwd, pool)
            return
        if not route.speaks_h2:
            if is_grpc(headers):
                pair.reply_grpc(
                    GRPC_UNIMPLEMENTED,
                    f"app on port {route.port} is not declared gRPC: gRPC needs HTTP/2 to the "
                    "app; declare the port's appProtocol grpc (or http2) on its Service or "
                    "Workload",
                )
            else:
                h2to1.carry(pair, fwd, pool)
            return

        def then(result: H2Connection | ConnectError) -> None:
            if isinstance(result, ConnectError):
                pair.reply(result.status, result.reason)
            else:
                pair.attach(result, fwd)

        self.links.get(pool, pool.name, pool.open_with, then)

    def local_route(self, headers: Headers) -> LocalRoute | NoRoute:
        """The local port a stream is for: over mTLS, the TLS server name says."""
        route = self.dp.table.local_routes.get(self.server_name or "")
        if route is not None:
            return route
        return NoRoute(404, f"no local port for TLS server name {self.server_name!r}")

    def _authorize(self, pair: StreamPair, route: LocalRoute, headers: Headers) -> bool:
        decision = authorize_http(
            self.dp.authorizer,
            identity=self.peer_identity,
            source_ip=self.peer_address,
            sni=self.server_name,
            port=route.port,
            method=header(headers, b":method") or b"GET",
            target=header(headers, b":path") or b"/",
            host=header(headers, b":authority"),
            headers=headers,
        )
        if decision.allowed:
            return True
        pair.reply(403, decision.reason)
        return False
