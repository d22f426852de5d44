"""The inbound side: mTLS from peer proxies, forwarded to the local app.

The TLS server name says which local port a connection is for (see proxy.tls); ALPN
says whether HTTP/1.1 or opaque TCP follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gossamer.proxy.balancer import Balancer
from gossamer.proxy.http1 import INBOUND_REQUEST_KINDS, request_framing, request_head_bytes
from gossamer.proxy.httpproxy import (
    ConnectError,
    Exchange,
    Pool,
    ServerConnection,
    UpstreamConnection,
)
from gossamer.proxy.routing import NoRoute
from gossamer.proxy.tcp import Splice
from gossamer.proxy.tls import ALPN_TCP, peer_identity, spiffe_namespace

if TYPE_CHECKING:
    from gossamer.proxy.dataplane import DataPlane

SERVER_NAME_ATTR = "gossamer_server_name"
_XFF = b"x-forwarded-for: "


class AppPool(Pool):
    """Plain keep-alive connections to the local app on one port."""

    __slots__ = ("host", "port", "timeout")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        timeout: float,
        max_idle: int = 4096,
    ) -> None:
        super().__init__(loop, f"app on {host}:{port}", max_idle)
        self.host = host
        self.port = port
        self.timeout = timeout

    async def open(self) -> UpstreamConnection:
        _, protocol = await self.open_with(lambda: UpstreamConnection(self))
        assert isinstance(protocol, UpstreamConnection)
        return protocol

    async def open_with(
        self, factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        try:
            async with asyncio.timeout(self.timeout):
                return await self.loop.create_connection(factory, self.host, self.port)
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


@dataclass(frozen=True, slots=True)
class LocalRoute:
    label: str
    port: int
    balancer: Balancer[Pool]
    pool: AppPool


class InboundSide:
    """Forwards requests from peers to the local app (see httpproxy.Side)."""

    request_kinds = INBOUND_REQUEST_KINDS

    def __init__(self, dp: DataPlane) -> None:
        self.dp = dp
        self.loop = dp.loop
        self.half_close = False

    def connection_made(self, conn: ServerConnection) -> None:
        transport = conn.transport
        assert transport is not None
        ssl_object = transport.get_extra_info("ssl_object")
        conn.server_name = getattr(ssl_object, SERVER_NAME_ATTR, None)
        conn.peer_identity = peer_identity(ssl_object)
        conn.peer_namespace = spiffe_namespace(conn.peer_identity)
        peer = transport.get_extra_info("peername")
        conn.peer_address = str(peer[0]).encode() if peer else b"unknown"
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == ALPN_TCP:
            self._splice(conn, transport)
            return
        self.dp.connections.add(conn)

    def connection_lost(self, conn: ServerConnection) -> None:
        self.dp.connections.discard(conn)

    def start(self, ex: Exchange) -> None:
        head = ex.head
        peer = ex.conn.peer_address
        xff = head.forwarded_for + b", " + peer if head.forwarded_for else peer
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
        route = self._local_route(ex.conn.server_name)
        if isinstance(route, NoRoute):
            ex.fail(route.status, route.reason)
            return
        ex.route = route
        ex.balancer = route.balancer
        ex.forward()

    def _local_route(self, server_name: str | None) -> LocalRoute | NoRoute:
        route = self.dp.table.local_routes.get(server_name or "")
        if isinstance(route, LocalRoute):
            return route
        return NoRoute(
            404,
            f"no local port for TLS server name {server_name!r} on workload "
            f"{self.dp.table.workload}.{self.dp.table.namespace}",
        )

    def record(self, ex: Exchange, status: int, seconds: float) -> None:
        conn = ex.conn
        table = self.dp.table
        key = (conn.peer_namespace, ex.head.src_service, status)
        stats = table.inbound_stats.get(key)
        if stats is None:
            src = ex.head.src_service
            stats = table.inbound_stats[key] = self.dp.metrics.request_stats(
                "inbound",
                conn.peer_namespace,
                src.decode("latin-1") if src else "unknown",
                table.namespace,
                table.service,
                status,
                True,
            )
        stats.observe(seconds)

    # ---- opaque TCP --------------------------------------------------------------------

    def _splice(self, conn: ServerConnection, transport: asyncio.Transport) -> None:
        route = self._local_route(conn.server_name)
        if isinstance(route, NoRoute):
            self.dp.log_tcp_refusal(conn.describe(), route.reason)
            transport.close()
            return
        stats = self.dp.metrics.tcp_stats("inbound", conn.peer_namespace, "unknown", True)
        end = Splice(stats, counts_sent=True, registry=self.dp.splices)
        transport.set_protocol(end)
        end.connection_made(transport)
        self.dp.spawn(self._connect_app(route.pool, end, conn.describe()))

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
