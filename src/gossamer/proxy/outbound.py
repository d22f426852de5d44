"""The outbound side: plain HTTP from the local app, routed by Host to a peer over mTLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from gossamer.proxy.http1 import (
    OUTBOUND_REQUEST_KINDS,
    ProtocolError,
    request_framing,
    request_head_bytes,
)
from gossamer.proxy.httpproxy import (
    PAUSE_ROUTE,
    ConnectError,
    Exchange,
    Pool,
    ServerConnection,
    UpstreamConnection,
)
from gossamer.proxy.routing import NoRoute, Route
from gossamer.proxy.tls import peer_identity, sni_for
from gossamer.translate.snapshot import Endpoint

if TYPE_CHECKING:
    from gossamer.proxy.dataplane import DataPlane


async def connect_peer(
    loop: asyncio.AbstractEventLoop,
    endpoint: Endpoint,
    sni: str,
    context: ssl.SSLContext,
    factory: Callable[[], asyncio.Protocol],
    timeout: float,
) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    """Open an mTLS connection to a peer's inbound listener and check who answered."""
    where = f"{endpoint.address}:{endpoint.inbound_port}"
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(
                factory,
                endpoint.address,
                endpoint.inbound_port,
                ssl=context,
                server_hostname=sni,
                ssl_handshake_timeout=timeout,
            )
    except TimeoutError:
        raise ConnectError(504, f"connect timeout to {where} after {timeout:g}s") from None
    except ConnectionRefusedError:
        raise ConnectError(502, f"connect refused by {where}") from None
    except ssl.SSLError as e:
        raise ConnectError(502, f"TLS handshake with {where} failed: {e.reason or e}") from None
    except OSError as e:
        raise ConnectError(502, f"connect to {where} failed: {e.strerror or e}") from None
    got = peer_identity(transport.get_extra_info("ssl_object"))
    if got != endpoint.identity:
        transport.abort()
        raise ConnectError(
            502, f"TLS identity mismatch (expected {endpoint.identity}, got {got or 'none'})"
        )
    return transport, protocol


class PeerPool(Pool):
    """Keep-alive mTLS connections to one endpoint of a service port."""

    __slots__ = ("dp", "endpoint", "sni")

    def __init__(self, dp: DataPlane, endpoint: Endpoint) -> None:
        super().__init__(
            dp.loop,
            f"{endpoint.workload}.{endpoint.namespace} at "
            f"{endpoint.address}:{endpoint.inbound_port}",
            max_idle=dp.config.max_idle_per_endpoint,
        )
        self.dp = dp
        self.endpoint = endpoint
        self.sni = sni_for(endpoint.target_port, endpoint.workload, endpoint.namespace)

    async def open(self) -> UpstreamConnection:
        contexts = self.dp.contexts
        if contexts is None:
            raise ConnectError(503, "no certificate yet to call peers with", eject=False)
        _, protocol = await connect_peer(
            self.loop,
            self.endpoint,
            self.sni,
            contexts.client_h1,
            lambda: UpstreamConnection(self),
            self.dp.config.connect_timeout,
        )
        assert isinstance(protocol, UpstreamConnection)
        return protocol


class OutboundSide:
    """Routes requests from the local app (see httpproxy.Side)."""

    request_kinds = OUTBOUND_REQUEST_KINDS

    def __init__(self, dp: DataPlane) -> None:
        self.dp = dp
        self.loop = dp.loop
        self.half_close = True

    def connection_made(self, conn: ServerConnection) -> None:
        self.dp.connections.add(conn)

    def connection_lost(self, conn: ServerConnection) -> None:
        self.dp.connections.discard(conn)

    def start(self, ex: Exchange) -> None:
        head = ex.head
        target = head.target
        if target[:1] != b"/" and target != b"*":
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
        found = self.dp.table.lookup_host(host)
        if isinstance(found, Route):
            ex.route = found
            ex.balancer = found.balancer
            ex.forward()
        elif isinstance(found, NoRoute):
            ex.fail(found.status, found.reason)
        else:
            ex.conn.pause(PAUSE_ROUTE)
            self.dp.await_interest(found, lambda: self._interest_answered(ex, host))

    def _interest_answered(self, ex: Exchange, host: bytes) -> None:
        if ex.finished:
            return
        ex.conn.unpause(PAUSE_ROUTE)
        found = self.dp.table.lookup_host(host)
        if isinstance(found, Route):
            ex.route = found
            ex.balancer = found.balancer
            ex.forward()
        elif isinstance(found, NoRoute):
            ex.fail(found.status, found.reason)
        else:
            ex.fail(
                503,
                f"no route for host {host.decode('latin-1')}: the control plane did not "
                f"answer about {found} in {self.dp.config.interest_timeout:g}s",
            )

    def record(self, ex: Exchange, status: int, seconds: float) -> None:
        route = ex.route
        if isinstance(route, Route):
            route.stats_for(status).observe(seconds)
            return
        table = self.dp.table
        self.dp.metrics.request_stats(
            "outbound", table.namespace, table.service, "unknown", "unknown", status, True
        ).observe(seconds)
