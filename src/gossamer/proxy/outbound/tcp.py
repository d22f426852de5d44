"""Opaque TCP, and the listeners of TCP upstreams, which learn what they carry.

A `TcpUpstream` (``--upstream SVC[.NS]:PORT=HOST:PORT``) gets a local listener. Once
the service port is looked up, its appProtocol says what a connection carries, or, where
it says nothing, the connection's first bytes do (proxy.wire.detect):

- opaque TCP: carried over mTLS (ALPN gossamer/tcp) to an endpoint of the service
  port, or of the backend a TCPRoute on that port picks by weight. Declared ``tcp``,
  nothing is read first, so a protocol whose server speaks first is never stalled;
- HTTP/1.1 and HTTP/2: handed to the outbound side, as if the app had sent them to the
  outbound listener, except that every request goes to this upstream's service port
  whatever its Host says (often ``localhost:5000``): the same routes, policies,
  metrics, tap and logs.

Inbound, an opaque connection is spliced to the app's port. TLS has no half-close in
asyncio, so an end of stream from either side closes the whole pipe once the bytes
already read are written.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from gossamer.proxy.forward.connect import PeerPool
from gossamer.proxy.forward.exchange import MAX_ATTEMPTS, ConnectError, Exchange, ServerConnection
from gossamer.proxy.outbound.h2 import OutboundH2
from gossamer.proxy.outbound.http import OutboundSide
from gossamer.proxy.policy.routing import NoRoute, P, Route
from gossamer.proxy.wire.detect import HTTP1, HTTP2, OPAQUE, Kind, Sniffer, kind_for
from gossamer.proxy.wire.splice import Splice

if TYPE_CHECKING:
    from gossamer.proxy.outbound.plane import OutboundPlane

log = logging.getLogger("gossamer.proxy")


@dataclass(frozen=True)
class TcpUpstream:
    """`--upstream SVC[.NS]:PORT=LOCAL_HOST:LOCAL_PORT`: a local listener whose
    connections are carried to the service port, as opaque TCP or as HTTP, as the
    port's appProtocol or the connection's first bytes say (proxy.outbound.tcp)."""

    service: str
    namespace: str | None
    port: int
    listen_host: str
    listen_port: int

    @classmethod
    def parse(cls, spec: str) -> TcpUpstream:
        """Parse the command-line form; ValueError says what is wrong."""
        target, sep, local = spec.partition("=")
        service, _, port = target.rpartition(":")
        host, _, listen_port = local.rpartition(":")
        if not sep or not service or not port.isdigit() or not listen_port.isdigit():
            raise ValueError(
                f"upstream {spec!r}: expected SVC[.NAMESPACE]:PORT=LOCAL_HOST:LOCAL_PORT"
            )
        name, _, namespace = service.partition(".")
        return cls(name, namespace or None, int(port), host or "127.0.0.1", int(listen_port))


def tcp_backend(route: Route[P]) -> Route[P] | str:
    """Where a TCPRoute on `route`'s service port sends one connection: a backend of
    the first TCPRoute rule, drawn by weight; or why none can take it."""
    assert route.router is not None
    rule = route.router.rules[route.router.spec.tcp_rules[0]]
    backend = rule.pick()
    if backend is None:
        return f"{rule.label}: every backend has weight 0"
    if backend.target is None:
        return f"{rule.label}: {backend.error}"
    return backend.target


class UpstreamCarriers:
    """What one TcpUpstream's listener hands its HTTP connections to: made on first
    use and shared by the listener's connections (HTTP/2 streams then share one
    connection per endpoint, as on the outbound listener)."""

    def __init__(self, dp: OutboundPlane, upstream: TcpUpstream) -> None:
        self.dp = dp
        self.upstream = upstream
        self._http: UpstreamSide | None = None
        self._h2: UpstreamH2 | None = None

    @property
    def namespace(self) -> str:
        return self.upstream.namespace or self.dp.table.namespace

    @property
    def authority(self) -> str:
        up = self.upstream
        return f"{up.service}.{self.namespace}:{up.port}"

    def lookup(self) -> Route[PeerPool] | NoRoute | str:
        """The upstream's service port in the current snapshot (see RouteTable)."""
        up = self.upstream
        return self.dp.table.lookup_service(up.service, self.namespace, up.port, self.authority)

    def http(self) -> UpstreamSide:
        if self._http is None:
            self._http = UpstreamSide(self.dp, self)
        return self._http

    def h2(self) -> UpstreamH2:
        if self._h2 is None:
            self._h2 = UpstreamH2(self.dp, self)
        return self._h2


class UpstreamSide(OutboundSide):
    """The outbound side for HTTP/1.1 on a TcpUpstream's listener: the listener names
    the destination, so Host is not routed by (it is passed on as the client sent it)."""

    def __init__(self, dp: OutboundPlane, carriers: UpstreamCarriers) -> None:
        super().__init__(dp)
        self.carriers = carriers

    def start(self, ex: Exchange) -> None:
        if not ex.head.host:  # HTTP/1.0 may send none; the upstream needs one
            ex.head.host = self.carriers.authority.encode()
        super().start(ex)

    def lookup(self, host: bytes) -> Route[PeerPool] | NoRoute | str:
        return self.carriers.lookup()

    def serve_h2(self, conn: ServerConnection, data: bytes) -> bool:
        # A preface on a port declared `http`: HTTP/2 after all, to the same place.
        if self._h2 is None:
            self._h2 = self.carriers.h2()
        return super().serve_h2(conn, data)


class UpstreamH2(OutboundH2):
    """HTTP/2 streams on a TcpUpstream's listener, all to its service port."""

    def __init__(self, dp: OutboundPlane, carriers: UpstreamCarriers) -> None:
        super().__init__(dp)
        self.carriers = carriers

    def lookup(self, authority: bytes) -> Route[PeerPool] | NoRoute | str:
        return self.carriers.lookup()


def declared_kind(dp: OutboundPlane, route: Route[PeerPool]) -> Kind | None:
    """What the service port's appProtocol (or a TCPRoute on it) says it carries."""
    if route.router is not None and route.router.spec.tcp_rules:
        return OPAQUE
    svc = dp.table.services.get((route.name, route.namespace))
    if svc is not None:
        for sp in svc.ports:
            if sp.port == route.port:
                return kind_for(sp.app_protocol)
    return None


class TcpListener(asyncio.Protocol):
    """Accepts a local connection for one TcpUpstream, learns what it carries, and
    hands it on (see the module docstring)."""

    def __init__(
        self, dp: OutboundPlane, upstream: TcpUpstream, carriers: UpstreamCarriers
    ) -> None:
        self.dp = dp
        self.upstream = upstream
        self.carriers = carriers
        # Not ready until the service port is known: its appProtocol may say that
        # nothing needs reading. The detection timeout runs from the accept.
        self.sniffer = Sniffer(
            dp.loop, dp.config.detect_timeout, self._take_over, ready=False, registry=dp.sniffers
        )
        self.route: Route[PeerPool] | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self.sniffer)
        self.sniffer.connection_made(transport)
        self.task = self.dp.spawn(self._find())

    def data_received(self, data: bytes) -> None:  # pragma: no cover - protocol replaced
        self.sniffer.data_received(data)

    async def _find(self) -> None:
        what = self.carriers.authority
        found = self.carriers.lookup()
        if isinstance(found, str):
            await self.dp.wait_interest(found)
            found = self.carriers.lookup()
        if not isinstance(found, Route):
            reason = found.reason if isinstance(found, NoRoute) else f"no route for {what}"
            log.warning("tcp %s: %s", what, reason)
            self.sniffer.close()
            return
        self.route = found
        self.sniffer.start(declared_kind(self.dp, found))

    def _take_over(self, transport: asyncio.Transport, kind: Kind) -> asyncio.Protocol | None:
        log.debug("upstream %s: carried as %s", self.carriers.authority, kind)
        if kind == HTTP1:
            conn = ServerConnection(self.carriers.http())
            transport.set_protocol(conn)
            conn.connection_made(transport)
            return conn
        if kind == HTTP2:
            self.carriers.h2().serve(transport, b"", f"upstream {self.carriers.authority}")
            return cast(asyncio.Protocol, transport.get_protocol())
        route = self.route
        assert route is not None
        end = Splice(counts_sent=True, registry=self.dp.splices)
        transport.set_protocol(end)
        end.connection_made(transport)
        self.task = self.dp.spawn(self._connect(end, route))
        return end

    async def _connect(self, end: Splice, found: Route[PeerPool]) -> None:
        what = self.carriers.authority
        if found.router is not None and found.router.spec.tcp_rules:
            backend = tcp_backend(found)
            if isinstance(backend, str):
                log.warning("tcp %s: %s", what, backend)
                end.close()
                return
            found = backend
        stats = self.dp.metrics.tcp_stats("outbound", found.namespace, found.name, True)
        end.stats = stats
        balancer = found.balancer
        tried = -1
        for _ in range(min(MAX_ATTEMPTS, max(len(balancer), 1))):
            if end.closed:
                return
            i = balancer.pick(self.dp.loop.time(), exclude=tried)
            if i < 0:
                break
            tried = i
            pool: PeerPool = balancer.items[i]
            load = balancer.loads[i]
            other = Splice(stats, counts_sent=False, registry=self.dp.splices)
            try:
                await self.dp.connect_tcp_peer(pool, other)
            except ConnectError as e:
                if e.eject:
                    load.connect_failed(self.dp.loop.time())
                log.warning("tcp %s: %s", what, e.reason)
                continue
            load.connected()
            if end.closed:
                other.close()
                return
            end.join(other)
            return
        log.warning("tcp %s: no endpoint could be reached", what)
        end.close()
