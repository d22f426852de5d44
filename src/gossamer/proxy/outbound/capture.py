"""Captured connections on the outbound listener (docs/decisions/0060, 0061).

iptables sends the app's TCP here whatever its destination; `SO_ORIGINAL_DST` says
where the app meant to go. A connection to a service's virtual IP (from the mesh's
DNS) goes to that service port, as a TCP upstream's would (proxy.outbound.tcp: HTTP,
HTTP/2 or opaque TCP, as the port or the first bytes say); one made to the listener
itself (HTTP_PROXY), or to a virtual IP the proxy cannot tell apart, is routed by Host
and :authority. A connection to any other address is outside the mesh: carried
there as plain TCP, or refused under `outboundTrafficPolicy: REGISTRY_ONLY`; counted
either way (`gossamer_outside_mesh_connections_total`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from gossamer.proxy.wire.splice import Splice

if TYPE_CHECKING:
    from gossamer.proxy.outbound.plane import OutboundPlane

log = logging.getLogger("gossamer.proxy")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def original_destination(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    """Where a redirected connection was going, or None if it came here directly."""
    sock: Any = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_INET:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None  # no conntrack entry: not redirected
    dst = (socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big"))
    here = sock.getsockname()[:2]
    return None if dst == tuple(here) else dst


class CaptureGate(asyncio.Protocol):
    """Stands in for the outbound listener's protocol until the connection's original
    destination is known."""

    __slots__ = ("dp", "mesh", "service")

    def __init__(
        self,
        dp: OutboundPlane,
        mesh: Callable[[], asyncio.Protocol],
        service: Callable[[tuple[str, int]], asyncio.Protocol | None],
    ) -> None:
        self.dp = dp
        self.mesh = mesh  # the outbound listener's own protocol: routes by Host
        # For a service's virtual IP and port: that service port's protocol, whatever
        # the connection carries (HTTP, HTTP/2, opaque TCP); None where the address is
        # not one known service's (then Host routes it).
        self.service = service

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        dst = original_destination(transport)
        if dst is None or self.dp.is_virtual_ip(dst[0]):
            protocol = (self.service(dst) if dst is not None else None) or self.mesh()
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            return
        counts = self.dp.metrics.outside_mesh
        if self.dp.registry_only():
            counts["refused"] += 1
            log.info(
                "refused a connection to %s:%d: outside the mesh, and the MeshPolicy's "
                "outboundTrafficPolicy is REGISTRY_ONLY",
                *dst,
            )
            cast(asyncio.Transport, transport).abort()
            return
        counts["passthrough"] += 1
        stats = self.dp.metrics.tcp_stats("outbound", "", f"{dst[0]}:{dst[1]}", False)
        app_end = Splice(stats, registry=self.dp.splices)
        transport.set_protocol(app_end)
        app_end.connection_made(transport)  # reads nothing until joined
        self.dp.spawn(_pass_through(self.dp, app_end, dst))


async def _pass_through(dp: OutboundPlane, app_end: Splice, dst: tuple[str, int]) -> None:
    far_end = Splice(app_end.stats, counts_sent=False, registry=dp.splices)
    try:
        await asyncio.wait_for(
            dp.loop.create_connection(lambda: far_end, dst[0], dst[1]),
            dp.config.connect_timeout,
        )
    except (OSError, TimeoutError) as err:
        log.info("passthrough to %s:%d failed: %s", dst[0], dst[1], err or "timed out")
        if app_end.transport is not None:
            app_end.transport.abort()
        return
    app_end.join(far_end)


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text, strict=False)
