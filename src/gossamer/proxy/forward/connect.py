"""Opening an mTLS connection to a peer's inbound listener, for every protocol.

HTTP/1.1 pools (`PeerPool`), HTTP/2 links (proxy.outbound.h2), opaque TCP
(proxy.outbound.tcp) and the data plane's own checks all open peer connections here:
the identity the peer presents is checked against the endpoint's, and the descriptor
budget is kept.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gossamer.proxy.forward.exchange import ConnectError, Pool, UpstreamConnection
from gossamer.proxy.wire.tls import MeshContexts, peer_identity, sni_for
from gossamer.translate.snapshot import Endpoint

if TYPE_CHECKING:
    from gossamer.proxy.wire.acceptor import FdBudget
    from gossamer.proxy.wire.http2 import H2Connection


class ConnectSettings(Protocol):
    """The settings a peer connection is opened with (proxy.dataplane.DataPlaneConfig)."""

    @property
    def connect_timeout(self) -> float: ...
    @property
    def max_idle_per_endpoint(self) -> int: ...


class Peers(Protocol):
    """What opening peer connections needs of the data plane: its loop, settings,
    current certificates and descriptor budget."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def config(self) -> ConnectSettings: ...
    @property
    def contexts(self) -> MeshContexts | None: ...
    @property
    def fds(self) -> FdBudget: ...


async def connect_peer(
    loop: asyncio.AbstractEventLoop,
    endpoint: Endpoint,
    sni: str,
    context: ssl.SSLContext,
    factory: Callable[[], asyncio.Protocol],
    timeout: float,
    fds: FdBudget | None = None,
) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    """Open an mTLS connection to a peer's inbound listener and check who answered.

    `fds`: refuse (503) a connection that would take one of the descriptors kept for
    the admin listener."""
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
    if fds is not None and not fds.upstream_ok(transport):
        transport.abort()
        raise ConnectError(503, fds.upstream_refusal(where), eject=False)
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

    def __init__(self, dp: Peers, endpoint: Endpoint) -> None:
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
            self.dp.fds,
        )
        assert isinstance(protocol, UpstreamConnection)
        return protocol

    async def open_link(
        self, factory: Callable[[], H2Connection]
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        """Open the endpoint's multiplexed HTTP/2 connection (ALPN gossamer/h2), for
        `streams.Links`: HTTP/2 from the app, and HTTP/1.1 carried as streams."""
        contexts = self.dp.contexts
        if contexts is None or contexts.client_h2 is None:
            raise ConnectError(503, "no certificate yet to call peers with", eject=False)
        return await connect_peer(
            self.loop,
            self.endpoint,
            self.sni,
            contexts.client_h2,
            factory,
            self.dp.config.connect_timeout,
            self.dp.fds,
        )
