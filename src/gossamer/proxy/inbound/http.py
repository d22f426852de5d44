"""The inbound side: mTLS from peer proxies, authorized, forwarded to the local app.

The TLS server name says which local port a connection is for (see proxy.wire.tls); ALPN
says whether HTTP/1.1, HTTP/2 (proxy.forward.streams) or opaque TCP follows. A client that
offers no ALPN (not one of ours) gets the local port's appProtocol, or detection from
its first bytes (proxy.wire.detect). Authorization (gossamer.authz) runs per request (or
HTTP/2 stream) for HTTP and once per connection for TCP, against the policies compiled
with the current snapshot; with none that could refuse anything it costs one attribute
read.

A verified client certificate that names no SPIFFE ID of the mesh's trust domain (an
operator's root may sign other certificates too) is refused right after the handshake,
with a log line; handshakes that fail outright are logged by proxy.wire.acceptor. In
PERMISSIVE mTLS mode, plaintext from outside the mesh is served by
`PlaintextInboundSide`: no identity, metrics labelled tls="false"; HTTP/1.1, HTTP/2
(h2c prior knowledge) and opaque TCP told apart by the ports' appProtocol or the
first bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

import httptools

from gossamer.authz import Authorizer
from gossamer.proxy.forward.exchange import (
    ConnectError,
    Exchange,
    Pool,
    ServerConnection,
    UpstreamConnection,
)
from gossamer.proxy.forward.streams import Links, serve
from gossamer.proxy.inbound.h2 import InboundH2
from gossamer.proxy.policy.authorize import authorize_http, authorize_tcp
from gossamer.proxy.policy.routing import LocalRoute, NoRoute
from gossamer.proxy.wire.detect import HTTP1, HTTP2, OPAQUE, Kind, Sniffer, kind_for
from gossamer.proxy.wire.http1 import (
    INBOUND_REQUEST_KINDS,
    ProtocolError,
    RequestHead,
    request_framing,
    request_head_bytes,
)
from gossamer.proxy.wire.http2 import Headers, header
from gossamer.proxy.wire.limits import LOST
from gossamer.proxy.wire.splice import Splice
from gossamer.proxy.wire.tls import ALPN_H1, ALPN_H2, ALPN_TCP, peer_identity, spiffe_namespace

if TYPE_CHECKING:
    from gossamer.proxy.inbound.h2to1 import H1Exchange
    from gossamer.proxy.inbound.plane import InboundPlane
    from gossamer.proxy.wire.acceptor import FdBudget
    from gossamer.proxy.wire.limits import InFlight

log = logging.getLogger("gossamer.proxy")

SERVER_NAME_ATTR = "gossamer_server_name"
_XFF = b"x-forwarded-for: "
_DEFAULT_PORTS: Final = {b"http": b":80", b"https": b":443"}


def host_problem(head: RequestHead) -> str | None:
    """Why a request cannot go to the app as it came, or None.

    The app must not see a request whose Host it cannot trust: HTTP/1.1 requires Host
    (RFC 9112 section 3.2), and an absolute-form target's authority must be the Host
    (the app would use the one, authorization and routing the other). Envoy and nginx
    refuse both with 400; so does the inbound.
    """
    host = head.host
    if host is None:
        if head.http11:
            return "malformed request: HTTP/1.1 request without a Host header (RFC 9112 3.2)"
        return None
    target = head.target
    if target[:1] == b"/" or target == b"*" or head.method == b"CONNECT":
        return None
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return "malformed request: bad request target"
    if not url.host:
        return "malformed request: bad request target"
    authority = url.host + (b":%d" % url.port if url.port else b"")
    default = _DEFAULT_PORTS.get((url.schema or b"").lower(), b"")

    def plain(value: bytes) -> bytes:
        value = value.strip().lower()
        return value[: -len(default)] if default and value.endswith(default) else value

    if plain(authority) != plain(host):
        return (
            f"malformed request: the request target names {authority.decode('latin-1')!r} "
            f"but the Host header says {host.decode('latin-1')!r}"
        )
    return None


class AppPool(Pool):
    """Plain keep-alive connections to the local app on one port."""

    __slots__ = ("carried", "fds", "host", "port", "timeout")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        timeout: float,
        max_idle: int = 4096,
        fds: FdBudget | None = None,
    ) -> None:
        super().__init__(loop, f"app on {host}:{port}", max_idle)
        self.host = host
        self.port = port
        self.timeout = timeout
        self.fds = fds  # connections that would take the admin listener's descriptors: 503
        # HTTP/2 streams carried to the app as HTTP/1.1 and bound to a connection now,
        # each with when its request went out (proxy.inbound.h2to1): for the response
        # timeout, as ServerConnection.sweep keeps it for HTTP/1.1 from a peer.
        self.carried: dict[H1Exchange, float] = {}

    def sweep_carried(self, now: float, response_timeout: float) -> None:
        """Answer 504 the carried streams whose app sent no response head in time."""
        late = [ex for ex, sent in self.carried.items() if now - sent > response_timeout]
        for ex in late:
            ex.timed_out(response_timeout)

    async def open(self) -> UpstreamConnection:
        _, protocol = await self.open_with(lambda: UpstreamConnection(self))
        assert isinstance(protocol, UpstreamConnection)
        return protocol

    async def open_with(
        self, factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        try:
            async with asyncio.timeout(self.timeout):
                transport, protocol = await self.loop.create_connection(
                    factory, self.host, self.port
                )
        except TimeoutError:
            raise ConnectError(
                504,
                f"app on {self.host}:{self.port} did not accept in {self.timeout:g}s",
                eject=False,
            ) from None
        except ConnectionRefusedError:
            raise ConnectError(
                502, f"app not listening on {self.host}:{self.port}", eject=False
            ) from None
        except OSError as e:
            raise ConnectError(
                502,
                f"connect to app on {self.host}:{self.port} failed: {e.strerror or e}",
                eject=False,
            ) from None
        fds = self.fds
        if fds is not None and not fds.upstream_ok(transport):
            transport.abort()
            raise ConnectError(
                503, fds.upstream_refusal(f"app on {self.host}:{self.port}"), eject=False
            )
        return transport, protocol


@dataclass(frozen=True, slots=True)
class TcpCaller:
    """Who opened an inbound TCP connection, as authorization and metrics see it."""

    identity: str | None
    namespace: str
    address: str
    server_name: str | None
    tls: bool

    def describe(self) -> str:
        return self.identity or self.address


class InboundSide:
    """Forwards requests from peers to the local app (see httpproxy.Side)."""

    request_kinds = INBOUND_REQUEST_KINDS
    # Each request to the app takes a connection of its own.
    stream = None

    def __init__(self, dp: InboundPlane) -> None:
        self.dp = dp
        self.loop = dp.loop
        self.splices = dp.splices
        self._h2_links: Links | None = None

    @property
    def in_flight(self) -> InFlight | None:
        return self.dp.in_flight

    def connection_made(self, conn: ServerConnection) -> None:
        transport = conn.transport
        assert transport is not None
        ssl_object = transport.get_extra_info("ssl_object")
        conn.server_name = getattr(ssl_object, SERVER_NAME_ATTR, None)
        conn.peer_identity = peer_identity(ssl_object)
        conn.peer_namespace = spiffe_namespace(conn.peer_identity)
        peer = transport.get_extra_info("peername")
        conn.peer_address = str(peer[0]).encode() if peer else b"unknown"
        snapshot = self.dp.snapshot
        if snapshot is not None and not (conn.peer_identity or "").startswith(
            f"spiffe://{snapshot.trust_domain}/"
        ):
            log.warning(
                "inbound from %s: refused the TLS handshake: the client certificate names %s, "
                "not an identity of trust domain %s",
                conn.peer_address.decode("latin-1"),
                conn.peer_identity or "no SPIFFE ID",
                snapshot.trust_domain,
            )
            transport.abort()
            return
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == ALPN_TCP:
            self._splice(conn, transport)
            return
        if alpn == ALPN_H2:
            self._serve_h2_peer(conn, transport)
            return
        if alpn != ALPN_H1:
            self._detect(conn, transport)
            return
        self.dp.connections.add(conn)

    def _detect(self, conn: ServerConnection, transport: asyncio.Transport) -> None:
        """An mTLS client that said nothing in ALPN: the local port's appProtocol, or
        the first bytes, say what follows."""
        route = self._local_route(conn.server_name)
        known = None
        if isinstance(route, LocalRoute):
            known = kind_for(self._app_protocol(route.port))
        if known == HTTP1:
            self.dp.connections.add(conn)
            return

        def take_over(transport: asyncio.Transport, kind: Kind) -> asyncio.Protocol | None:
            if kind == HTTP1:
                conn.transport = transport
                transport.set_protocol(conn)  # connection_made has run: it is running
                self.dp.connections.add(conn)
                return conn
            if kind == HTTP2:
                self._serve_h2_peer(conn, transport)
                return cast(asyncio.Protocol, transport.get_protocol())
            return self._splice(conn, transport)

        # The sniffer holds the transport until it decides (and lets it go if the
        # connection is lost first): `conn` gets it back if HTTP/1.1 is decided.
        conn.transport = LOST
        sniffer = Sniffer(
            self.loop, self.dp.config.detect_timeout, take_over, known=known,
            registry=self.dp.sniffers,
        )  # fmt: skip
        transport.set_protocol(sniffer)
        sniffer.connection_made(transport)

    def _app_protocol(self, port: int) -> str | None:
        local = self.dp.table.local_ports.get(port)
        return local.app_protocol if local is not None else None

    def connection_lost(self, conn: ServerConnection) -> None:
        self.dp.connections.discard(conn)

    def serve_h2(self, conn: ServerConnection, data: bytes) -> bool:
        return False  # between proxies HTTP/2 is chosen by ALPN, never by preface

    def _serve_h2_peer(self, conn: ServerConnection, transport: asyncio.Transport) -> None:
        if self._h2_links is None:
            self._h2_links = Links(self.dp)
        handler = InboundH2(
            self.dp,
            self._h2_links,
            conn.server_name,
            conn.peer_identity,
            conn.peer_namespace,
            conn.peer_address.decode("latin-1"),
        )
        serve(self.dp, transport, handler, b"", conn.describe())
        conn.let_go()  # HTTP/2 has the transport now

    def start(self, ex: Exchange) -> None:
        head = ex.head
        problem = host_problem(head)
        if problem is not None:
            ex.error = ProtocolError(400, problem)
            return
        peer = ex.conn.peer_address
        xff = head.forwarded_for + b", " + peer if head.forwarded_for else peer
        tracer = self.dp.tracer
        if tracer is not None:
            tracer.start(ex, False)
        ex.head_bytes = request_head_bytes(
            head.method,
            head.target,
            head.host,
            head.headers,
            request_framing(head) + _XFF + xff + b"\r\n",
        )
        ex.out.append(ex.head_bytes)

    def dispatch(self, ex: Exchange) -> None:
        if ex.error is not None:
            ex.fail(ex.error.status, ex.error.reason)
            return
        route = self._route_for(ex)
        if isinstance(route, NoRoute):
            ex.fail(route.status, route.reason)
            return
        authorizer = self.dp.authorizer
        if not authorizer.allows_everything and not self._authorize(ex, route, authorizer):
            return
        ex.route = route
        if route.grpc_only:
            ex.fail(502, route.http1_refusal())
            return
        ex.balancer = route.balancer
        ex.forward()

    def _authorize(self, ex: Exchange, route: LocalRoute, authorizer: Authorizer) -> bool:
        conn, head = ex.conn, ex.head
        target = head.target
        if not target.startswith(b"/") and b"://" in target:  # absolute-form
            target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
        decision = authorize_http(
            authorizer,
            identity=conn.peer_identity,
            source_ip=conn.peer_address.decode("latin-1"),
            sni=conn.server_name,
            port=route.port,
            method=head.method,
            target=target,
            host=head.host,
            headers=head.headers,
        )
        if decision.allowed:
            return True
        ex.fail(403, decision.reason, logged=True)
        return False

    def _route_for(self, ex: Exchange) -> LocalRoute | NoRoute:
        """Over mTLS, the TLS server name says which local port a request is for."""
        return self._local_route(ex.conn.server_name)

    def _local_route(self, server_name: str | None) -> LocalRoute | NoRoute:
        route = self.dp.table.local_routes.get(server_name or "")
        if route is not None:
            return route
        return NoRoute(
            404,
            f"no local port for TLS server name {server_name!r} on workload "
            f"{self.dp.table.workload}.{self.dp.table.namespace}",
        )

    def record(self, ex: Exchange, status: int, seconds: float) -> None:
        hooks = self.dp.hooks
        if hooks is not None:
            hooks.finished("inbound", ex, status, seconds)
        conn = ex.conn
        self.dp.table.inbound_stats_for(conn.peer_namespace, ex.head.src_service, status).observe(
            seconds
        )

    # ---- opaque TCP --------------------------------------------------------------------

    def _splice(self, conn: ServerConnection, transport: asyncio.Transport) -> Splice | None:
        route = self._local_route(conn.server_name)
        if isinstance(route, NoRoute):
            self.dp.log_tcp_refusal(conn.describe(), route.reason)
            conn.let_go()
            transport.close()
            return None
        caller = TcpCaller(
            conn.peer_identity,
            conn.peer_namespace,
            conn.peer_address.decode("latin-1"),
            conn.server_name,
            tls=True,
        )
        conn.let_go()  # the splice has the transport now (or it is closed)
        return self._splice_to(route, transport, caller)

    def _splice_to(
        self, route: LocalRoute, transport: asyncio.Transport, caller: TcpCaller
    ) -> Splice | None:
        """Authorize a TCP connection to `route`'s port, then carry its bytes to the
        app. None: refused, and closed."""
        who = caller.describe()
        authorizer = self.dp.authorizer
        if not authorizer.allows_everything:
            decision = authorize_tcp(
                authorizer,
                identity=caller.identity,
                source_ip=caller.address,
                sni=caller.server_name,
                port=route.port,
                who=who,
            )
            if not decision.allowed:
                transport.close()
                return None
        stats = self.dp.metrics.tcp_stats("inbound", caller.namespace, "unknown", caller.tls)
        end = Splice(stats, counts_sent=True, registry=self.dp.splices)
        transport.set_protocol(end)
        end.connection_made(transport)
        self.dp.spawn(self._connect_app(route.pool, end, who))
        return end

    async def _connect_app(self, pool: AppPool, end: Splice, who: str) -> None:
        app_end = Splice(end.stats, counts_sent=False, registry=self.dp.splices)
        try:
            await pool.open_with(lambda: app_end)
        except ConnectError as e:
            self.dp.log_tcp_refusal(who, e.reason)
            end.close()
            return
        if end.closed:
            app_end.close()
            return
        end.join(app_end)


class PlaintextInboundSide(InboundSide):
    """Plaintext from outside the mesh, accepted only in PERMISSIVE mTLS mode.

    What follows is told by the workload's ports' appProtocol when they all say the
    same, else by the first bytes (proxy.wire.detect): HTTP/1.1, HTTP/2 (h2c prior
    knowledge) or opaque TCP. There is no TLS server name to say which local port a
    connection is for: for HTTP the port in the Host header (or :authority) says it,
    or the workload's only port; opaque TCP goes to the workload's only port (with
    several, it is refused and the reason logged). The caller has no identity:
    authorization sees no principal, and metrics say tls="false".
    """

    def accept(self, quiet: bool = False) -> asyncio.Protocol:
        """The protocol for a new plaintext connection. `quiet`: the client has sent
        nothing within the detection timeout already (proxy.wire.acceptor waited for its
        first byte), so it is opaque unless the ports say otherwise."""
        kinds = {kind_for(lp.app_protocol) for lp in self.dp.table.local_ports.values()}
        known = kinds.pop() if len(kinds) == 1 else None
        if quiet and known is None:
            known = OPAQUE
        return Sniffer(
            self.loop, self.dp.config.detect_timeout, self._take_over, known=known,
            registry=self.dp.sniffers,
        )  # fmt: skip

    def _take_over(self, transport: asyncio.Transport, kind: Kind) -> asyncio.Protocol | None:
        if kind == HTTP1:
            conn = ServerConnection(self)
            transport.set_protocol(conn)
            conn.connection_made(transport)
            return conn
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "unknown"
        if kind == HTTP2:
            if self._h2_links is None:
                self._h2_links = Links(self.dp)
            handler = PlaintextInboundH2(self, self._h2_links, address)
            serve(self.dp, transport, handler, b"", f"plaintext client {address}")
            return cast(asyncio.Protocol, transport.get_protocol())
        routes = list(self.dp.table.local_routes.values())
        if len(routes) != 1:
            ports = ", ".join(str(r.port) for r in routes) or "none"
            self.dp.log_tcp_refusal(
                address,
                f"plaintext connection that is not HTTP: opaque TCP needs a workload with "
                f"exactly one port to send it to, and this one has {ports}",
            )
            transport.close()
            return None
        caller = TcpCaller(None, "unknown", address, None, tls=False)
        return self._splice_to(routes[0], transport, caller)

    def connection_made(self, conn: ServerConnection) -> None:
        transport = conn.transport
        assert transport is not None
        conn.server_name = None
        conn.peer_identity = None
        conn.peer_namespace = "unknown"
        peer = transport.get_extra_info("peername")
        conn.peer_address = str(peer[0]).encode() if peer else b"unknown"
        self.dp.connections.add(conn)

    def _route_for(self, ex: Exchange) -> LocalRoute | NoRoute:
        """Without TLS there is no server name: the Host header picks the port."""
        return self._plaintext_route(ex.head.host)

    def _plaintext_route(self, host: bytes | None) -> LocalRoute | NoRoute:
        routes = list(self.dp.table.local_routes.values())
        port_text = (host or b"").rpartition(b":")[2] if host and b":" in host else b""
        if port_text.isdigit():
            for route in routes:
                if route.port == int(port_text):
                    return route
        elif len(routes) == 1:
            return routes[0]
        ports = ", ".join(str(r.port) for r in routes) or "none"
        return NoRoute(
            404,
            f"plaintext request for Host {(host or b'').decode('latin-1')!r}: name one of this "
            f"workload's ports in the Host header ({ports})",
        )

    def record(self, ex: Exchange, status: int, seconds: float) -> None:
        hooks = self.dp.hooks
        if hooks is not None:
            hooks.finished("inbound", ex, status, seconds)
        self.dp.table.inbound_stats_for("unknown", ex.head.src_service, status, tls=False).observe(
            seconds
        )


class PlaintextInboundH2(InboundH2):
    """HTTP/2 streams from a plaintext client (PERMISSIVE mode): no identity, the local
    port from :authority as for HTTP/1.1, metrics labelled tls="false"."""

    tls = False

    def __init__(self, side: PlaintextInboundSide, links: Links, address: str) -> None:
        super().__init__(side.dp, links, None, None, "unknown", address)
        self.side = side

    def local_route(self, headers: Headers) -> LocalRoute | NoRoute:
        authority = header(headers, b":authority") or header(headers, b"host")
        return self.side._plaintext_route(authority)
