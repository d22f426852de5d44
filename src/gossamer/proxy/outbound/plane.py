"""What the outbound side needs of the data plane (see proxy.forward.plane)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gossamer.proxy.forward.plane import Plane

if TYPE_CHECKING:
    from gossamer.proxy.forward.connect import PeerPool
    from gossamer.proxy.forward.streams import Links
    from gossamer.proxy.wire.splice import Splice


class OutboundPlane(Plane, Protocol):
    """The common `Plane`, and for TCP upstreams: waiting for the control plane to
    answer about a service, and carrying a spliced connection to a peer; for captured
    connections, what is the mesh's."""

    # One multiplexed HTTP/2 connection per peer endpoint, shared by every listener.
    @property
    def peer_links(self) -> Links: ...
    async def wait_interest(self, key: str) -> None: ...
    async def connect_tcp_peer(self, pool: PeerPool, end: Splice) -> None: ...
    # Captured traffic (proxy.outbound.capture): whether an original destination is a
    # service's virtual IP, and whether traffic outside the mesh is refused.
    def is_virtual_ip(self, address: str) -> bool: ...
    def registry_only(self) -> bool: ...
