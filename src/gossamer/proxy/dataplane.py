"""The data plane: listeners, the current snapshot and credentials, and their upkeep.

`DataPlane` is what the agent drives: it applies snapshots (whole, or not at all) and
credentials, and the listeners read only the current ones. Nothing on the hot path
locks, awaits the control plane, or builds lookup tables: `apply_snapshot` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol

from gossamer.authz import Authorizer, compile_security
from gossamer.dns.names import DEFAULT_SERVICE_CIDR, virtual_ip
from gossamer.proxy.forward.connect import PeerPool, connect_peer
from gossamer.proxy.forward.exchange import ConnectError, Pool, ServerConnection
from gossamer.proxy.forward.streams import Links
from gossamer.proxy.inbound.http import (
    SERVER_NAME_ATTR,
    AppPool,
    InboundSide,
    PlaintextInboundSide,
)
from gossamer.proxy.observe.accesslog import AccessLog
from gossamer.proxy.observe.admin import AdminConnection, Page, json_page
from gossamer.proxy.observe.hooks import Local, RequestHooks
from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.observe.tap import TapHub
from gossamer.proxy.outbound.capture import CaptureGate
from gossamer.proxy.outbound.http import OutboundSide
from gossamer.proxy.outbound.tcp import TcpListener, TcpUpstream, UpstreamCarriers
from gossamer.proxy.policy.balancer import Balancer, EndpointLoad
from gossamer.proxy.policy.control import ControlRegistry
from gossamer.proxy.policy.routing import LocalRoute, RouteTable
from gossamer.proxy.wire.acceptor import FdBudget, InboundAcceptor, fd_limit
from gossamer.proxy.wire.detect import DEFAULT_DETECT_TIMEOUT, Sniffer
from gossamer.proxy.wire.heap import keep_tls_reads_on_heap
from gossamer.proxy.wire.http1 import RequestHead
from gossamer.proxy.wire.http2 import H2_APP_PROTOCOLS, H2Connection
from gossamer.proxy.wire.limits import (
    HANDSHAKE_TIMEOUT,
    MAX_ADMIN_CONNECTIONS,
    MAX_HANDSHAKES,
    InFlight,
    close_soon,
)
from gossamer.proxy.wire.splice import Splice
from gossamer.proxy.wire.tls import Credentials, MeshContexts, make_contexts, sni_for
from gossamer.translate.authz import SecurityView
from gossamer.translate.snapshot import Endpoint, Snapshot
from gossamer.translate.telemetry import TelemetryView, otel_settings

if TYPE_CHECKING:
    from gossamer.proxy.observe.tracing import ProxyTracer

log = logging.getLogger("gossamer.proxy")

SWEEP_INTERVAL: Final = 1.0
INTEREST_RETRY: Final = 30.0  # ask the control plane again about a host after this long
# Freed heap is handed back to the system (malloc_trim) once this many unauthenticated
# connections have come and gone since the last time, at most every TRIM_INTERVAL.
TRIM_AFTER: Final = 256
TRIM_INTERVAL: Final = 10.0

Address = tuple[str, int]


def _access_log_from_env() -> str | None:
    return os.environ.get("GOSSAMER_ACCESS_LOG") or None


def _multiplex_http1_from_env() -> bool:
    return os.environ.get("GOSSAMER_MULTIPLEX_HTTP1", "").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    )


def _otel_from_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}


class Workers(Protocol):
    """The other data-plane processes of a `--workers N` proxy, as this one (worker 0,
    beside the agent) drives them (gossamer.workers.WorkerSet)."""

    @property
    def share(self) -> float:
        """This process's part of the proxy's TrafficControl shares."""

    def broadcast(self, message: tuple[Any, ...]) -> None:
        """Send `message` (snapshot, credentials, shares) to every worker."""

    def demand(self) -> dict[str, int]:
        """The workers' TrafficControl demand since the last ask."""

    def serve_metrics(self, conn: AdminConnection, own: str) -> None:
        """Answer /metrics on `conn`: `own` and every worker's series, added up."""


@dataclass
class DataPlaneConfig:
    outbound: Address = ("127.0.0.1", 4140)
    inbound: Address = ("0.0.0.0", 4143)
    admin: Address = ("127.0.0.1", 4191)
    app_host: str = "127.0.0.1"
    upstreams: tuple[TcpUpstream, ...] = ()
    cluster_domain: str = "cluster.local"
    connect_timeout: float = 1.0
    # A downstream connection with no request in flight, or a pooled connection to a
    # peer, is closed after this long.
    idle_timeout: float = 60.0
    # Pooled connections to the app: below the 5 s keep-alive of common app servers
    # (Node, uvicorn), so the proxy closes first and seldom meets a stale connection.
    app_idle_timeout: float = 4.0
    # From the end of a request to the head of its response.
    response_timeout: float = 30.0
    # An HTTP/2 stream on which nothing moves for this long while something is owed (a
    # window the client keeps shut, a request body that stops before any answer) is
    # reset: Envoy's stream_idle_timeout and its default. Longer than idle_timeout, so
    # that a quiet gRPC stream (a watch, a chat) is not cut at a minute (decision 0114).
    stream_idle_timeout: float = 300.0
    # Opaque TCP and tunnels: a pipe on which nothing is read from either end for this
    # long is closed, both ends (Envoy's tcp_proxy idle_timeout, and its default).
    tcp_idle_timeout: float = 3600.0
    # How long a request for a host the snapshot does not know waits for the control
    # plane to say whether it exists.
    interest_timeout: float = 2.0
    # How long a connection whose protocol is not declared (TCP upstreams, plaintext
    # inbound, mTLS without ALPN) may send nothing before it is carried as opaque TCP:
    # a server-speaks-first protocol left undeclared waits this long for its greeting
    # (docs/decisions/0042-protocol-detection.md).
    detect_timeout: float = DEFAULT_DETECT_TIMEOUT
    # Idle keep-alive connections kept per endpoint (and per app port): enough for the
    # concurrency a busy proxy sees, so bursts do not churn TLS handshakes.
    max_idle_per_endpoint: int = 4096
    # Several processes may serve the same ports (SO_REUSEPORT) when one core is not enough.
    reuse_port: bool = False
    backlog: int = 1024
    # Listening sockets made elsewhere, by listener ("outbound", "inbound", "admin", a TCP
    # upstream's `tcp_listener_name`, mesh DNS's DNS_UDP and DNS_TCP), used instead of
    # binding: a host proxy hands its sockets to the next (decision 0067), a proxy's
    # agent its workers theirs (0100).
    listen_sockets: dict[str, socket.socket] = field(default_factory=dict)
    # What an unauthenticated inbound connection may cost (proxy.wire.limits): seconds from
    # accept to a finished TLS handshake, and how many may be at it at once.
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_handshakes: int = MAX_HANDSHAKES
    max_admin_connections: int = MAX_ADMIN_CONNECTIONS
    # The file descriptors the proxy budgets for (proxy.wire.acceptor.FdBudget); None: its
    # RLIMIT_NOFILE when it starts.
    fd_limit: int | None = None
    extra_config: dict[str, Any] = field(default_factory=dict)
    # Observability (docs/observability.md): where access log lines go (a path, or "-"
    # for standard output; None: off), and OpenTelemetry's OTEL_* settings for tracing.
    access_log: str | None = field(default_factory=_access_log_from_env)
    otel: dict[str, str] = field(default_factory=_otel_from_env)
    # Mesh DNS (docs/decisions/0061): where the proxy answers DNS (None: it does not),
    # the range services' virtual IPs are in, and the resolver it forwards the rest to.
    dns: Address | None = None
    service_cidr: str = DEFAULT_SERVICE_CIDR
    dns_upstream: Address | None = None
    # HTTP/1.1 requests to a peer go as streams on its HTTP/2 connection, as Linkerd
    # carries them (GOSSAMER_MULTIPLEX_HTTP1=1, proxy.outbound.h1to2), rather than each
    # on a connection of its own: off by default, measured slower here (decision 0111).
    multiplex_http1: bool = field(default_factory=_multiplex_http1_from_env)


class HeapTrim:
    """Hands the heap memory of a burst of connections back to the system once they
    have gone.

    A connection that started a TLS handshake held about 45 KB (OpenSSL's buffers,
    the TLS protocol). When thousands come and go, Python and OpenSSL free it all (no
    object outlives them), but glibc keeps the freed memory for reuse: the heap cannot
    shrink past whatever still lives above it, so the proxy's RSS stays at its peak.
    `malloc_trim(0)` returns every free page (about 15 ms for 150 MB); it is called
    from the data plane's upkeep after TRIM_AFTER such connections, at most every
    TRIM_INTERVAL seconds, where the C library has it (glibc).
    """

    def __init__(self, trim: Callable[[], object] | None) -> None:
        self.trim = trim
        self.trims = 0
        self._counted = 0
        self._last = float("-inf")

    @staticmethod
    def from_libc() -> HeapTrim:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
        malloc_trim = getattr(libc, "malloc_trim", None)
        if malloc_trim is None:
            return HeapTrim(None)
        malloc_trim.argtypes = [ctypes.c_size_t]
        return HeapTrim(lambda: malloc_trim(0))

    def note(self, gone: int, now: float) -> bool:
        """`gone`: connections that have come and gone so far (a running total). True
        when this call gave memory back."""
        if self.trim is None or gone - self._counted < TRIM_AFTER:
            return False
        if now - self._last < TRIM_INTERVAL:
            return False
        self._counted = gone
        self._last = now
        self.trim()
        self.trims += 1
        return True


class DataPlane:
    def __init__(self, config: DataPlaneConfig, *, on_interest: Callable[[str], None]) -> None:
        self.config = config
        self.fds = FdBudget(config.fd_limit or fd_limit())
        # A cap on requests at once, both directions (proxy.wire.limits): a host proxy
        # sets one per workload (gossamer.host.fairness); a sidecar has none.
        self.in_flight: InFlight | None = None
        self.heap = HeapTrim.from_libc()
        self.admin_refused = 0
        self.admin_evicted = 0  # idle admin connections closed for a new one at the limit
        self._on_interest = on_interest
        self.metrics = Metrics()
        # TrafficControls' state (buckets, bulkheads, breakers), kept across snapshots.
        self.controls = ControlRegistry()
        self.contexts: MeshContexts | None = None
        self.credentials: Credentials | None = None
        self.snapshot: Snapshot | None = None
        # `--workers N`: the other data-plane processes this one's agent feeds
        # (gossamer.workers), and the TrafficControl shares as this process took them.
        self.workers: Workers | None = None
        self.controls_shares: dict[str, float] = {}
        self.connections: set[ServerConnection] = set()
        self.splices: set[Splice] = set()
        self.h2_connections: set[H2Connection] = set()
        # One multiplexed connection per peer endpoint, for every outbound listener:
        # HTTP/2 from the app, and HTTP/1.1 carried as streams (proxy.outbound.h1to2).
        self.peer_links = Links(self)
        self.sniffers: set[Sniffer] = set()  # connections whose protocol is not known yet
        self._admin_connections: set[AdminConnection] = set()
        self.outbound_address: Address | None = None
        self.inbound_address: Address | None = None
        self.admin_address: Address | None = None
        self.tcp_addresses: dict[TcpUpstream, Address] = {}
        self.dns_address: Address | None = None
        self._dns_udp: asyncio.BaseTransport | None = None
        self._service_cidr = ipaddress.IPv4Network(config.service_cidr, strict=False)
        self._vips: dict[str, tuple[str, str] | None] = {}
        self._vips_of: Snapshot | None = None
        self._captured_carriers: dict[TcpUpstream, UpstreamCarriers] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._table: RouteTable[PeerPool] | None = None
        self._peers: dict[Endpoint, tuple[PeerPool, EndpointLoad]] = {}
        self._old_peers: dict[Endpoint, tuple[PeerPool, EndpointLoad]] = {}
        self._apps: dict[int, AppPool] = {}
        self._retired: set[Pool] = set()  # closed, with connections still opening or in use
        self._servers: list[asyncio.AbstractServer] = []
        # Outbound, admin, TCP upstreams and mesh DNS's TCP, by listen_sockets name.
        self._listening: dict[str, asyncio.AbstractServer] = {}
        self._inbound_sock: socket.socket | None = None
        self._inbound_serving = False
        self._acceptor: InboundAcceptor | None = None
        # The outbound and TCP upstream listeners' protocols, by listener name (as in
        # DataPlaneConfig.listen_sockets), and the other workers' listeners this one
        # accepts on while they cannot (`stand_in`): the servers made there, the inbound.
        self._factories: dict[str, Callable[[], asyncio.Protocol]] = {}
        # How to listen again on a listener this data plane bound itself, should it be
        # closed under it (`_check_listeners`), by name; and why one could not be.
        self._relisten: dict[str, Callable[[], Awaitable[asyncio.AbstractServer]]] = {}
        self._listener_lost: dict[str, str] = {}
        self._relistening: set[str] = set()
        self._accepting = True
        self._stand_ins: dict[int, tuple[list[asyncio.AbstractServer], socket.socket | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._waiters: dict[str, list[Callable[[], None]]] = {}
        self._asked: dict[str, float] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._readiness: list[Callable[[], str | None]] = []
        self._config_sections: dict[str, Callable[[], Any]] = {}
        self._closed = False
        # The compiled AuthorizationPolicies of the current snapshot (inbound side).
        self.authorizer: Authorizer = compile_security(SecurityView())
        # Tap, access log and tracing (proxy.observe.hooks). The sides read `hooks` and
        # `tracer` once per request; both stay None while there is nothing to do.
        self.taps = TapHub(self._hooks_changed)
        self.access_log: AccessLog | None = None
        self.tracer: ProxyTracer | None = None
        self.hooks: RequestHooks | None = None
        self._all_hooks = RequestHooks(self.local, self.taps, None, None)
        # The OTEL_* settings the tracer was made from: the environment's, with what
        # the snapshot's MeshPolicy telemetry adds (`_apply_telemetry`).
        self._otel_in_use: dict[str, str] = {}
        self._retired_tracers: set[ProxyTracer] = set()

    # ---- what the rest of the proxy reads ----------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("DataPlane.start() has not been called")
        return self._loop

    @property
    def table(self) -> RouteTable[PeerPool]:
        table = self._table
        if table is None:
            table = self._table = RouteTable(
                None, self.config.cluster_domain, self.metrics, self._peer
            )
        return table

    def local(self) -> Local:
        """This proxy as tap events, access log lines and spans name it."""
        table, snapshot = self.table, self.snapshot
        identity = snapshot.proxy.identity if snapshot is not None else None
        return Local(table.workload, table.namespace, table.service, identity)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listener. The inbound one accepts TLS once credentials are set."""
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        keep_tls_reads_on_heap()
        loop = self._loop = asyncio.get_running_loop()
        cfg = self.config
        await self._start_observability()
        outbound = OutboundSide(self)
        self._inbound_side = InboundSide(self)
        if self.snapshot is not None:
            self._install(self.snapshot)
        given = cfg.listen_sockets
        self._factories["outbound"] = self.fds.guard(
            lambda: CaptureGate(self, lambda: ServerConnection(outbound), self._captured_service),
            "outbound",
        )
        server = await _listen(
            loop,
            self._factories["outbound"],
            cfg.outbound,
            given.get("outbound"),
            reuse_port=cfg.reuse_port or None,
            backlog=cfg.backlog,
        )
        self._servers.append(server)
        self._listening["outbound"] = server
        self.outbound_address = _bound(server)
        if "outbound" not in given:
            self._relisten["outbound"] = partial(
                _listen,
                loop,
                self._factories["outbound"],
                self.outbound_address,
                None,
                reuse_port=cfg.reuse_port or None,
                backlog=cfg.backlog,
            )
        self._inbound_sock = given.get("inbound") or socket.create_server(
            cfg.inbound,
            family=socket.AF_INET6 if ":" in cfg.inbound[0] else socket.AF_INET,
            backlog=cfg.backlog,
            reuse_port=cfg.reuse_port,
        )
        self._inbound_sock.setblocking(False)
        self.inbound_address = self._inbound_sock.getsockname()[:2]
        if self.contexts is not None:
            await self._serve_inbound()
        admin_factory = lambda: AdminConnection(  # noqa: E731
            self._admin_page,
            self._admin_connections,
            self._admin_stream,
            cfg.max_admin_connections,
            self._admin_refused,
            self._admin_evicted,
        )
        admin = await _listen(loop, admin_factory, cfg.admin, given.get("admin"))
        self._servers.append(admin)
        self._listening["admin"] = admin
        self.admin_address = _bound(admin)
        if "admin" not in given:
            address = self.admin_address
            self._relisten["admin"] = partial(_listen, loop, admin_factory, address, None)
        for up in cfg.upstreams:
            factory = self.fds.guard(self._tcp_listener(up), "tcp")
            name = tcp_listener_name((up.listen_host, up.listen_port))
            tcp = await _listen(
                loop,
                factory,
                (up.listen_host, up.listen_port),
                given.get(name),
                reuse_port=cfg.reuse_port or None,
            )
            self._servers.append(tcp)
            self._listening[name] = tcp
            self.tcp_addresses[up] = _bound(tcp)
            self._factories[tcp_listener_name(self.tcp_addresses[up])] = factory
            if name not in given:
                self._relisten[name] = partial(
                    _listen,
                    loop,
                    factory,
                    self.tcp_addresses[up],
                    None,
                    reuse_port=cfg.reuse_port or None,
                )
        if cfg.dns is not None:
            await self._start_dns(cfg.dns)
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
        log.info(
            "proxy listening: outbound %s, inbound %s, admin %s",
            self.outbound_address,
            self.inbound_address,
            self.admin_address,
        )

    # ---- captured traffic and mesh DNS (proxy.outbound.capture, gossamer.dns) -----------

    def is_virtual_ip(self, address: str) -> bool:
        """Whether `address` is in the services' virtual IP range: the mesh's own."""
        try:
            return ipaddress.IPv4Address(address) in self._service_cidr
        except ValueError:
            return False

    def _captured_service(self, dst: Address) -> asyncio.Protocol | None:
        """The protocol for a captured connection to a service's virtual IP and port:
        a TCP upstream's, for that service port. None when the address is no service's
        this proxy knows, or several services' (their virtual IPs collide)."""
        snapshot = self.snapshot
        if self._vips_of is not snapshot:
            vips: dict[str, tuple[str, str] | None] = {}
            for svc in snapshot.services if snapshot is not None else ():
                vip = virtual_ip(svc.name, svc.namespace, self._service_cidr)
                vips[vip] = None if vip in vips else (svc.name, svc.namespace)
            self._vips, self._vips_of = vips, snapshot
        target = self._vips.get(dst[0])
        if target is None:
            return None
        up = TcpUpstream(target[0], target[1], dst[1], "", 0)
        carriers = self._captured_carriers.get(up)
        if carriers is None:
            carriers = self._captured_carriers[up] = UpstreamCarriers(self, up)
        return TcpListener(self, up, carriers)

    def registry_only(self) -> bool:
        """Whether captured traffic to addresses outside the mesh is refused."""
        snapshot = self.snapshot
        return snapshot is not None and snapshot.security.outbound_traffic == "REGISTRY_ONLY"

    async def _service_exists(self, name: str, namespace: str) -> bool:
        snapshot = self.snapshot
        if snapshot is not None and snapshot.service(name, namespace) is not None:
            return True
        await self.wait_interest(f"{name}.{namespace}")
        snapshot = self.snapshot
        return snapshot is not None and snapshot.service(name, namespace) is not None

    async def _start_dns(self, address: Address) -> None:
        from gossamer.dns.server import MeshResolver, host_resolver, serve

        resolver = MeshResolver(
            lambda: self.table.namespace or "default",
            self._service_cidr,
            self._service_exists,
            self.config.dns_upstream or host_resolver(),
            self.config.cluster_domain,
        )
        self.metrics.dns_queries = resolver.counts
        given = self.config.listen_sockets
        udp, tcp = await serve(
            resolver, address, self.spawn, given.get(DNS_UDP), given.get(DNS_TCP)
        )
        self._dns_udp = udp
        self._servers.append(tcp)
        self._listening[DNS_TCP] = tcp
        self.dns_address = _bound(tcp)

    def _tcp_listener(self, up: TcpUpstream) -> Callable[[], asyncio.Protocol]:
        carriers = UpstreamCarriers(self, up)
        return lambda: TcpListener(self, up, carriers)

    async def _serve_inbound(self) -> None:
        if self._inbound_serving or self._inbound_sock is None or self.contexts is None:
            return
        self._inbound_serving = True
        # The listener keeps the context it starts with; each handshake is switched to
        # the current one in the SNI callback, so renewed certificates apply at once.
        listen_ctx = self.contexts.server
        listen_ctx.sni_callback = self._on_sni
        side, plain = self._inbound_side, PlaintextInboundSide(self)
        # Our own accept loop (proxy.wire.acceptor): refused handshakes are logged with their
        # reason, and PERMISSIVE mode serves plaintext beside TLS.
        acceptor = self._acceptor = InboundAcceptor(
            self.loop,
            self._inbound_sock,
            tls_factory=lambda: ServerConnection(side),
            plain_factory=plain.accept,
            quiet_factory=lambda: plain.accept(quiet=True),
            first_byte_timeout=self.config.detect_timeout,
            context=listen_ctx,
            handshake_timeout=self.config.handshake_timeout,
            max_handshakes=self.config.max_handshakes,
            spawn=self.spawn,
            fds=self.fds,
        )
        acceptor.permissive = self._permissive()
        for _, stood_in in self._stand_ins.values():
            if stood_in is not None:
                acceptor.accept_also(stood_in)
        if not self._closed:
            acceptor.start()

    async def stand_in(self, worker: int, sockets: Mapping[str, socket.socket]) -> None:
        """Accept on another worker's listeners (`sockets`, named as in
        `DataPlaneConfig.listen_sockets`) while it cannot, until `stand_down(worker)`:
        what the kernel queues on them is served here instead of waiting for it. The
        sockets stay the caller's (the servers here have duplicates)."""
        if worker in self._stand_ins or self._closed:
            return
        servers: list[asyncio.AbstractServer] = []
        inbound = sockets.get("inbound")
        self._stand_ins[worker] = (servers, inbound)
        if inbound is not None and self._acceptor is not None:
            self._acceptor.accept_also(inbound)
        for name, sock in sockets.items():
            factory = self._factories.get(name)
            if factory is None:
                continue
            server = await self.loop.create_server(
                factory,
                sock=socket.socket(fileno=os.dup(sock.fileno())),
                backlog=self.config.backlog,
            )
            if self._stand_ins.get(worker, ([],))[0] is not servers:  # stood down meanwhile
                server.close()
                return
            servers.append(server)
            self._servers.append(server)

    def stand_down(self, worker: int) -> None:
        """Stop accepting on what `stand_in(worker)` was given."""
        servers, inbound = self._stand_ins.pop(worker, ([], None))
        for server in servers:
            server.close()
            self._servers.remove(server)
        if inbound is not None and self._acceptor is not None:
            self._acceptor.accept_no_more(inbound)

    def _permissive(self) -> bool:
        snapshot = self.snapshot
        return snapshot is not None and snapshot.security.mtls_mode == "PERMISSIVE"

    def _on_sni(
        self, ssl_object: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        setattr(ssl_object, SERVER_NAME_ATTR, server_name)
        contexts = self.contexts
        if contexts is not None and contexts.server is not ctx:
            ssl_object.context = contexts.server

    def listening_sockets(self) -> dict[str, socket.socket]:
        """Every listener's socket: outbound, inbound, admin, TCP upstreams and mesh
        DNS (UDP and TCP), to hand to another process, which serves them with
        `DataPlaneConfig.listen_sockets` (a host proxy's handover: no query or
        connection is refused in between; what waits in a queue is the next one's)."""
        found: dict[str, socket.socket] = {}
        for name, server in self._listening.items():
            for sock in getattr(server, "sockets", None) or ():
                found[name] = socket.socket(fileno=os.dup(sock.fileno()))
        if self._inbound_sock is not None:
            found["inbound"] = self._inbound_sock
        if self._dns_udp is not None:
            sock = self._dns_udp.get_extra_info("socket")
            found[DNS_UDP] = socket.socket(fileno=os.dup(sock.fileno()))
        return found

    def stop_accepting(self) -> None:
        """Accept no more connections (nor DNS queries); those open go on until
        `close()` (a drain)."""
        self._accepting = False
        for server in self._servers:
            server.close()
        if self._dns_udp is not None:
            self._dns_udp.close()
        if self._acceptor is not None:
            self._acceptor.close()

    def idle_connections_closed(self) -> int:
        """Close every downstream HTTP/1.1 connection with no request in flight (as if
        its idle timeout had passed), during a drain; how many remain."""
        now = self.loop.time()
        for conn in list(self.connections):
            conn.sweep(now, -1.0, self.config.response_timeout)
        return len(self.connections) + len(self.h2_connections) + len(self.splices)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for server in self._servers:
            server.close()
        if self._dns_udp is not None:
            self._dns_udp.close()
        if self._acceptor is not None:
            self._acceptor.close()
        for conn in list(self.connections):
            conn.abort()
        for splice in list(self.splices):
            if splice.transport is not None:
                splice.transport.abort()
        for sniffer in list(self.sniffers):
            sniffer.close()
        for h2conn in list(self.h2_connections):
            if h2conn.transport is not None:
                h2conn.transport.abort()
        for admin in list(self._admin_connections):
            if admin.transport is not None:
                admin.transport.abort()
        tasks = list(self._tasks)
        for pool in self._pools():
            tasks.extend(pool.opening)
            pool.close()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        if self._inbound_sock is not None:
            self._inbound_sock.close()
        await self._stop_observability()
        # Let transports finish closing before the loop may be torn down.
        await asyncio.sleep(0)

    # ---- tap, access log, tracing ---------------------------------------------------------

    async def _start_observability(self) -> None:
        cfg = self.config
        if cfg.access_log:
            access_log = AccessLog(cfg.access_log)
            access_log.open(self.loop)  # OSError: the proxy does not start, and says why
            self.access_log = access_log
        tracer = None
        if any(k.startswith("OTEL_EXPORTER_OTLP_") for k in cfg.otel):
            # Imported only when tracing may be on: the exporter's client is not small.
            from gossamer.proxy.observe.tracing import ProxyTracer

            tracer = ProxyTracer.from_env(cfg.otel)
        self._otel_in_use = dict(cfg.otel)
        if tracer is not None:
            await tracer.start_exporting()
            self.tracer = tracer
            log.info(
                "tracing: spans to %s, sampler %s", tracer.exporter.endpoint, tracer.sampler.name
            )
        self._all_hooks = RequestHooks(self.local, self.taps, self.access_log, self.tracer)
        self._hooks_changed()

    async def _stop_observability(self) -> None:
        self.hooks = None
        if self.tracer is not None:
            await self.tracer.stop()
        for tracer in list(self._retired_tracers):
            await tracer.stop()
        self._retired_tracers.clear()
        if self.access_log is not None:
            self.access_log.close()

    def _apply_telemetry(self, view: TelemetryView) -> None:
        """Tracing and access log settings from mesh config (MeshPolicy telemetry), for
        what the proxy's own environment and flags leave unset: they win."""
        if self._closed:
            return
        changed = False
        if not self.config.access_log:
            if view.access_log and self.access_log is None:
                access_log = AccessLog("-")
                access_log.open(self.loop)
                self.access_log, changed = access_log, True
            elif not view.access_log and self.access_log is not None:
                self.access_log.close()
                self.access_log, changed = None, True
        wanted = otel_settings(view, self.config.otel)
        if wanted != self._otel_in_use:
            from gossamer.proxy.observe.tracing import ProxyTracer

            new, old = ProxyTracer.from_env(wanted), self.tracer
            self.tracer, self._otel_in_use, changed = new, wanted, True
            if new is not None:
                log.info(
                    "tracing (mesh config): spans to %s, sampler %s",
                    new.exporter.endpoint,
                    new.sampler.name,
                )
            if old is not None:
                self._retired_tracers.add(old)
            self.spawn(self._swap_tracers(new, old))
        if changed:
            self._all_hooks = RequestHooks(self.local, self.taps, self.access_log, self.tracer)
            self._hooks_changed()

    async def _swap_tracers(self, new: ProxyTracer | None, old: ProxyTracer | None) -> None:
        if new is not None:
            await new.start_exporting()
        if old is not None:
            await old.stop()  # sends what it holds
            self._retired_tracers.discard(old)

    def _hooks_changed(self) -> None:
        hooks = self._all_hooks
        self.hooks = hooks if hooks.active and not self._closed else None

    def _admin_stream(self, conn: AdminConnection, head: RequestHead) -> Callable[[], None] | None:
        path, _, query = head.target.partition(b"?")
        if path == b"/metrics" and self.workers is not None:
            self.workers.serve_metrics(conn, self.metrics_text())
            return lambda: None
        if path != b"/tap" or conn.transport is None:
            return None
        table = self.table
        stream = self.taps.open(
            conn.transport,
            query,
            {"workload": table.workload, "namespace": table.namespace, "service": table.service},
        )
        if stream is None:
            return None
        return lambda: self.taps.close(stream)

    def observability_dump(self) -> dict[str, Any]:
        access_log = self.access_log
        return {
            "taps": len(self.taps.streams),
            "access_log": None
            if access_log is None
            else {
                "to": access_log.where,
                "written": access_log.written,
                "dropped": access_log.dropped,
            },
            "tracing": None if self.tracer is None else self.tracer.describe(),
        }

    # ---- snapshot and credentials ------------------------------------------------------

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Make `snapshot` current, whole; on any error the previous one stays."""
        if self._loop is None:
            self.snapshot = snapshot  # built in start()
        else:
            self._install(snapshot)
        if self.workers is not None:
            self.workers.broadcast(("snapshot", snapshot))

    def _install(self, snapshot: Snapshot) -> None:
        old_peers = self._old_peers = self._peers
        self._peers = {}
        try:
            # A control past its ttl stays stopped in the new table (sweep sets this too).
            self.controls.wall = time.time()
            table = RouteTable(
                snapshot, self.config.cluster_domain, self.metrics, self._peer, self.controls
            )
            local_routes: dict[str, LocalRoute] = {}
            apps: dict[int, AppPool] = {}
            me = snapshot.proxy
            for lp in me.ports:
                pool = self._apps.get(lp.app_port) or AppPool(
                    self.loop,
                    self.config.app_host,
                    lp.app_port,
                    self.config.connect_timeout,
                    self.config.max_idle_per_endpoint,
                    self.fds,
                )
                apps[lp.app_port] = pool
                balancer: Balancer[Pool] = Balancer([pool], [EndpointLoad()])
                protocol = (lp.app_protocol or "").lower()
                local_routes[sni_for(lp.port, me.workload, me.namespace)] = LocalRoute(
                    pool.name,
                    lp.port,
                    balancer,
                    pool,
                    grpc_only=protocol == "grpc",
                    speaks_h2=protocol in H2_APP_PROTOCOLS,
                )
            table.local_routes = local_routes
            authorizer = compile_security(snapshot.security)
        except Exception:
            self._peers = old_peers
            raise
        finally:
            self._old_peers = {}
        self._table = table
        self.authorizer = authorizer
        self.snapshot = snapshot
        if self._acceptor is not None:
            self._acceptor.permissive = self._permissive()
        for endpoint, (peer_pool, _) in old_peers.items():
            if endpoint not in self._peers:
                self._retire(peer_pool)
        for port, app in self._apps.items():
            if port not in apps:
                self._retire(app)
        self._apps = apps
        self._wake_waiters(table)
        self._apply_telemetry(snapshot.telemetry)

    def _retire(self, pool: Pool) -> None:
        """Close a pool the snapshot no longer has. Requests may still be waiting for
        connections it is opening, or using its connections: it is kept (and closed
        with the data plane) until they are done."""
        pool.close()
        if pool.opening or pool.live or (isinstance(pool, AppPool) and pool.carried):
            self._retired.add(pool)

    def _peer(self, endpoint: Endpoint) -> tuple[PeerPool, EndpointLoad]:
        # Pools and latency records outlive snapshots for as long as the endpoint does.
        pair = self._peers.get(endpoint)
        if pair is None:
            pair = self._old_peers.get(endpoint) or (PeerPool(self, endpoint), EndpointLoad())
            self._peers[endpoint] = pair
        return pair

    def control_demand(self) -> dict[str, int]:
        """Calls that met each Aggregate TrafficControl rate since the last ask."""
        demand = self.controls.demand()
        if self.workers is not None:
            for name, n in self.workers.demand().items():
                demand[name] = demand.get(name, 0) + n
        return demand

    def set_control_shares(self, shares: Mapping[str, float]) -> None:
        """The control plane's split of the Aggregate rates: this proxy's part (with
        workers, each process takes its part of that)."""
        if self.workers is not None:
            part = self.workers.share
            shares = {
                name: share * part if isinstance(share, int | float) else share
                for name, share in shares.items()
            }
            self.workers.broadcast(("shares", shares))
        self.controls_shares = dict(shares)
        self.controls.set_shares(shares)

    def set_credentials(self, creds: Credentials) -> None:
        """Use `creds` for connections made from now on; open ones keep theirs."""
        self.contexts = make_contexts(creds)
        self.credentials = creds
        if self.workers is not None:
            self.workers.broadcast(("credentials", creds))
        if self._loop is not None and not self._inbound_serving and not self._closed:
            self.spawn(self._serve_inbound())

    # ---- readiness and admin -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self.not_ready_reasons()

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if self.snapshot is None:
            reasons.append("no configuration from the control plane yet")
        if self.contexts is None:
            reasons.append("no certificate yet")
        elif self.contexts.not_after <= datetime.now(UTC):
            reasons.append(f"certificate expired at {self.contexts.not_after.isoformat()}")
        elif not self._inbound_serving:
            reasons.append("inbound listener not serving yet")
        for name, why in self._listener_lost.items():
            reasons.append(f"{name} listener closed and not listening again: {why}")
        for check in self._readiness:
            reason = check()
            if reason:
                reasons.append(reason)
        return reasons

    def add_readiness_check(self, check: Callable[[], str | None]) -> None:
        """`check` returns why the proxy is not ready, or None; /ready shows the reasons."""
        self._readiness.append(check)

    def add_config_section(self, name: str, section: Callable[[], Any]) -> None:
        """Add `name: section()` to /config (called on each request to it)."""
        self._config_sections[name] = section

    def config_dump(self) -> dict[str, Any]:
        contexts = self.contexts
        dump: dict[str, Any] = {
            "addresses": {
                "outbound": self.outbound_address,
                "inbound": self.inbound_address,
                "admin": self.admin_address,
                "tcp": {
                    f"{u.service}.{u.namespace or ''}:{u.port}": a
                    for u, a in self.tcp_addresses.items()
                },
            },
            "ready": self.ready,
            "not_ready_reasons": self.not_ready_reasons(),
            "certificate": {"not_after": contexts.not_after.isoformat()} if contexts else None,
            "snapshot": self.snapshot.to_dict() if self.snapshot is not None else None,
            "controls": self.controls.dump(),
        }
        dump["observability"] = self.observability_dump()
        dump.update(self.config.extra_config)
        for name, section in self._config_sections.items():
            dump[name] = section()
        return dump

    def _admin_page(self, method: bytes, path: bytes) -> Page:
        if path == b"/live":
            return 200, "text/plain", b"live\n"
        if path == b"/ready":
            reasons = self.not_ready_reasons()
            if reasons:
                return 503, "text/plain", ("\n".join(reasons) + "\n").encode()
            return 200, "text/plain", b"ready\n"
        if path == b"/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics_text().encode()
        if path == b"/config":
            return json_page(self.config_dump())
        return 404, "text/plain", b"not found: try /ready, /live, /metrics or /config\n"

    def metrics_text(self) -> str:
        """This process's series, in Prometheus text format."""
        return self.metrics.render() + self._connection_metrics() + self.controls.render()

    def _admin_refused(self) -> None:
        self.admin_refused += 1

    def _admin_evicted(self) -> None:
        self.admin_evicted += 1

    def _connection_metrics(self) -> str:
        """What the connection limits did (proxy.wire.limits), in exposition format."""
        acceptor = self._acceptor
        fds = self.fds
        refused = {
            ("inbound", "handshake_limit"): acceptor.refused_busy if acceptor else 0,
            ("admin", "connection_limit"): self.admin_refused,
        }
        for listener in ("inbound", "outbound", "tcp"):
            refused[(listener, "fd_limit")] = fds.refused.get(listener, 0)
        out = [
            "# HELP gossamer_inbound_handshakes Inbound connections accepted and not yet "
            "through the TLS handshake (or, plaintext, their first byte).",
            "# TYPE gossamer_inbound_handshakes gauge",
            f"gossamer_inbound_handshakes {acceptor.in_handshake if acceptor else 0}",
            "# HELP gossamer_inbound_handshake_timeouts_total Inbound connections closed "
            "for not finishing the TLS handshake in time.",
            "# TYPE gossamer_inbound_handshake_timeouts_total counter",
            f"gossamer_inbound_handshake_timeouts_total {acceptor.timed_out if acceptor else 0}",
            "# HELP gossamer_connections_refused_total Connections closed as soon as "
            "accepted: too many handshakes at once, admin connections at their limit all "
            "streaming, or file descriptors nearly exhausted.",
            "# TYPE gossamer_connections_refused_total counter",
        ]
        for (listener, reason), n in sorted(refused.items()):
            out.append(
                f'gossamer_connections_refused_total{{listener="{listener}",reason="{reason}"}} {n}'
            )
        out += [
            "# HELP gossamer_admin_connections_evicted_total Idle admin connections closed "
            "to let a new one in at the admin connection limit.",
            "# TYPE gossamer_admin_connections_evicted_total counter",
            f"gossamer_admin_connections_evicted_total {self.admin_evicted}",
            "# HELP gossamer_upstream_connections_refused_total Connections to peers or the "
            "app closed as soon as made: file descriptors nearly exhausted.",
            "# TYPE gossamer_upstream_connections_refused_total counter",
            f"gossamer_upstream_connections_refused_total {fds.upstream_refused}",
            "",
        ]
        return "\n".join(out)

    # ---- hosts the snapshot does not know yet -------------------------------------------

    def await_interest(self, key: str, callback: Callable[[], None]) -> None:
        """Ask the control plane about service `key` ("name.namespace"), and call
        `callback` once a snapshot mentions it, or after the interest timeout."""
        self._waiters.setdefault(key, []).append(callback)
        now = self.loop.time()
        if now - self._asked.get(key, -INTEREST_RETRY) >= INTEREST_RETRY:
            self._asked[key] = now
            try:
                self._on_interest(key)
            except Exception:
                log.exception("asking the control plane about %s failed", key)

        def expire() -> None:
            self._timers.discard(timer)
            waiting = self._waiters.get(key)
            if waiting is not None and callback in waiting:
                waiting.remove(callback)
                if not waiting:
                    del self._waiters[key]
                callback()

        timer = self.loop.call_later(self.config.interest_timeout, expire)
        self._timers.add(timer)

    def ask_interest(self, key: str) -> None:
        """A worker's request (gossamer.workers): ask the control plane about `key`."""
        try:
            self._on_interest(key)
        except Exception:
            log.exception("asking the control plane about %s failed", key)

    async def wait_interest(self, key: str) -> None:
        done: asyncio.Future[None] = self.loop.create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        self.await_interest(key, wake)
        await done

    def _wake_waiters(self, table: RouteTable[PeerPool]) -> None:
        if not self._waiters:
            return
        known = table.interests | {f"{n}.{ns}" for n, ns in table.services}
        for key in [k for k in self._waiters if k in known]:
            for callback in self._waiters.pop(key):
                callback()

    # ---- TCP -----------------------------------------------------------------------------

    async def connect_tcp_peer(self, pool: PeerPool, end: Splice) -> None:
        contexts = self.contexts
        if contexts is None:
            raise ConnectError(503, "no certificate yet to call peers with", eject=False)
        await connect_peer(
            self.loop,
            pool.endpoint,
            pool.sni,
            contexts.client_tcp,
            lambda: end,
            self.config.connect_timeout,
            self.fds,
        )

    def log_tcp_refusal(self, who: str, reason: str) -> None:
        log.warning("tcp from %s: %s", who, reason)

    # ---- upkeep --------------------------------------------------------------------------

    def _pools(self) -> list[Pool]:
        pools: list[Pool] = [pool for pool, _ in self._peers.values()]
        pools.extend(self._apps.values())
        pools.extend(self._retired)
        return pools

    def _sweep(self) -> None:
        loop = self.loop
        now = loop.time()
        cfg = self.config
        try:
            for conn in list(self.connections):
                conn.sweep(now, cfg.idle_timeout, cfg.response_timeout)
            for h2conn in list(self.h2_connections):
                if not h2conn.client_side:  # a client's (links to peers: peer_links)
                    h2conn.sweep(now, cfg.idle_timeout, cfg.stream_idle_timeout)
            for splice in list(self.splices):
                if splice.idle(now, cfg.tcp_idle_timeout):
                    log.info("a TCP pipe moved nothing for %gs: closed", cfg.tcp_idle_timeout)
                    splice.abort()
            mono = time.monotonic()
            for admin in list(self._admin_connections):
                transport = admin.transport
                idle = admin.idle_for(mono) > cfg.idle_timeout
                if idle and transport is not None and not transport.is_closing():
                    close_soon(transport)
            for pool, _ in self._peers.values():
                pool.sweep(now, cfg.idle_timeout)
            self.peer_links.sweep()
            for app in self._apps.values():
                app.sweep(now, cfg.app_idle_timeout)
                app.sweep_carried(now, cfg.response_timeout)
            if self._retired:
                # A retired app pool's streams still wait for their response timeout.
                for retired in self._retired:
                    if isinstance(retired, AppPool):
                        retired.sweep_carried(now, cfg.response_timeout)
                self._retired = {
                    p
                    for p in self._retired
                    if p.opening or p.live or (isinstance(p, AppPool) and p.carried)
                }
            if cfg.fd_limit is None:
                self.fds.set_limit(fd_limit())
            self.controls.sweep(time.time())
            acceptor = self._acceptor
            if acceptor is not None and self.heap.note(acceptor.abandoned, now):
                log.debug("gave freed heap memory back to the system (malloc_trim)")
            self._check_listeners()
        except Exception:
            log.exception("proxy upkeep failed")
        if not self._closed:
            self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _check_listeners(self) -> None:
        """Listen again where a listener was closed under this data plane: uvloop closes
        a server after an accept error it does not expect (libuv hands it anything but
        EAGAIN, ECONNABORTED and an EMFILE its reserve descriptor absorbs: ENOMEM,
        ENOBUFS...) and says nothing, and the proxy would accept nothing there again
        while its admin listener still says it is ready. Only listeners this data plane
        bound itself: a worker's belong to the agent (gossamer.workers replaces the
        worker), and sockets handed over are another process's to bind again."""
        if not self._accepting or self._closed:
            return
        for name, relisten in self._relisten.items():
            server = self._listening.get(name)
            if name in self._relistening or (server is not None and not _closed_under_us(server)):
                continue
            if server is not None:
                del self._listening[name]
                with contextlib.suppress(ValueError):
                    self._servers.remove(server)
                log.error(
                    "the %s listener was closed under the proxy (an accept error the event "
                    "loop does not report): listening again",
                    name,
                )
            self._relistening.add(name)
            self.spawn(self._listen_again(name, relisten))

    async def _listen_again(
        self, name: str, relisten: Callable[[], Awaitable[asyncio.AbstractServer]]
    ) -> None:
        try:
            server = await relisten()
        except OSError as err:
            self._relistening.discard(name)
            if self._listener_lost.get(name) != str(err):
                log.error("the %s listener cannot listen again: %s; trying each second", name, err)
            self._listener_lost[name] = str(err)
            return
        self._relistening.discard(name)
        if not self._accepting or self._closed:
            server.close()
            return
        self._listening[name] = server
        self._servers.append(server)
        if self._listener_lost.pop(name, None) is not None:
            log.info("the %s listener listens again", name)


def _closed_under_us(server: asyncio.AbstractServer) -> bool:
    """A server closed (by uvloop, after an accept error) though nobody here closed it:
    not serving, or its socket's descriptor gone."""
    sockets = getattr(server, "sockets", None) or ()
    return not server.is_serving() or any(s.fileno() == -1 for s in sockets)


async def _listen(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    address: Address,
    sock: socket.socket | None,
    **options: Any,
) -> asyncio.AbstractServer:
    """A listener on `address`, or on `sock` when one is given (bound elsewhere)."""
    if sock is not None:
        options.pop("reuse_port", None)
        return await loop.create_server(factory, sock=sock, **options)
    return await loop.create_server(factory, address[0], address[1], **options)


# Mesh DNS's listeners' names in `DataPlaneConfig.listen_sockets`.
DNS_UDP: Final = "dns-udp"
DNS_TCP: Final = "dns-tcp"


def tcp_listener_name(address: Address) -> str:
    """A TCP upstream listener's name in `DataPlaneConfig.listen_sockets`."""
    return f"tcp {address[0]}:{address[1]}"


def _bound(server: asyncio.AbstractServer) -> Address:
    sockets = getattr(server, "sockets", None) or ()
    for sock in sockets:
        name = sock.getsockname()
        return str(name[0]), int(name[1])
    raise RuntimeError("server has no socket")
