"""Opening an mTLS connection to a peer's inbound listener, for every protocol.

HTTP/1.1 pools (proxy.outbound), HTTP/2 links (proxy.h2mesh), opaque TCP (proxy.tcp)
and the data plane's own checks all open peer connections here: the identity the peer
presents is checked against the endpoint's, and the descriptor budget is kept.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from gossamer.proxy.httpproxy import ConnectError
from gossamer.proxy.tls import peer_identity
from gossamer.translate.snapshot import Endpoint

if TYPE_CHECKING:
    from gossamer.proxy.acceptor import FdBudget


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
