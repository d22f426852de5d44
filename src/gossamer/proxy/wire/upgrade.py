"""Upgrades and CONNECT: an HTTP/1.1 exchange that turns into a byte tunnel.

A request with `Connection: upgrade` and `Upgrade: <protocol>` (WebSocket, say), or a
CONNECT, is forwarded like any other request, with its Upgrade header kept. When the
answer is a 101 (or a 2xx to CONNECT) both connections, downstream and upstream, stop
being HTTP: their transports are handed to a pair of `tcp.Splice` ends that carry
bytes both ways with backpressure until either side closes. The exchange is recorded
then, with the switching status, like any finished request.

Any other answer is forwarded as a normal response, and the client's connection is
closed after it (bytes it sent after the request may already belong to the protocol
it asked for). Neither connection goes back to a pool once it carried a tunnel.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from gossamer.proxy.wire.http1 import ResponseHead, response_head_bytes
from gossamer.proxy.wire.splice import Splice

if TYPE_CHECKING:
    from gossamer.proxy.forward.exchange import Exchange


def open_tunnel(ex: Exchange, head: ResponseHead, data: bytes) -> None:
    """Answer `ex` with `head`, then splice its two connections; `data` came after it."""
    conn = ex.conn
    upstream = ex.upstream
    if ex.finished or upstream is None or conn.transport is None:
        return
    ex.finished = True
    ex.status = head.status
    ex.response_started = True
    ex.response_done = True
    ex._release()
    load = ex.load
    if load is not None:
        load.outstanding -= 1
    # The upstream connection leaves its pool for good.
    ex.upstream = None
    upstream.exchange = None
    upstream.closed = True
    upstream.pool.live -= 1
    upstream.pool.discard(upstream)
    # And the downstream one leaves the side's connections (no more HTTP sweeps).
    conn.answering = None
    conn.closing = True
    conn.side.connection_lost(conn)

    req = ex.head
    extra = b""
    if req.upgrade is not None:
        extra = b"connection: upgrade\r\nupgrade: " + req.upgrade + b"\r\n"
    down_transport = conn.transport
    down_transport.write(response_head_bytes(head.status, head.reason, head.headers, extra))
    if data:
        down_transport.write(data)
    up_transport = upstream.transport
    for piece in conn.tunnel_data:
        up_transport.write(piece)
    conn.tunnel_data = []

    registry = conn.side.splices
    down = Splice(registry=registry)
    up = Splice(registry=registry)
    down_transport.set_protocol(down)
    down.connection_made(down_transport)
    up_transport.set_protocol(up)
    up.connection_made(up_transport)
    down.join(up)
    conn.side.record(ex, head.status, perf_counter() - ex.started)
