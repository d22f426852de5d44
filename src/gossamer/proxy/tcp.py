"""Opaque TCP: bytes carried both ways between two connections, with backpressure.

Outbound, a `TcpUpstream` gets a local listener; each connection to it is carried over
mTLS (ALPN gossamer/tcp) to an endpoint of the service port, or of the backend a
TCPRoute on that port picks by weight. Inbound, such a
connection is spliced to the app's port.

TLS has no half-close in asyncio, so an end of stream from either side closes the
whole pipe once the bytes already read are written.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from gossamer.proxy.httpproxy import MAX_ATTEMPTS, ConnectError
from gossamer.proxy.metrics import TcpStats
from gossamer.proxy.routing import NoRoute, P, Route

if TYPE_CHECKING:
    from gossamer.proxy.dataplane import DataPlane, TcpUpstream
    from gossamer.proxy.outbound import PeerPool

log = logging.getLogger("gossamer.proxy")


class Splice(asyncio.Protocol):
    """One end of a byte pipe; `join` connects it to the other end."""

    __slots__ = ("closed", "counts_sent", "other", "pending", "registry", "stats", "transport")

    def __init__(
        self,
        stats: TcpStats | None = None,
        counts_sent: bool = True,
        registry: set[Splice] | None = None,
    ) -> None:
        self.registry = registry  # open ends, so the data plane can close them
        self.transport: asyncio.Transport | None = None
        self.other: Splice | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.stats = stats
        # Which counter this end's incoming bytes go to (the opening side's view).
        self.counts_sent = counts_sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        if self.registry is not None:
            self.registry.add(self)
        if self.other is None:
            self.transport.pause_reading()

    def join(self, other: Splice) -> None:
        self.other = other
        other.other = self
        for end in (self, other):
            if end.stats is not None and end.counts_sent:
                end.stats.open += 1
        for end in (self, other):
            pending, end.pending = end.pending, []
            for data in pending:
                end.data_received(data)
            if end.closed:
                end._close_other()
            elif end.transport is not None:
                end.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            self.pending.append(data)
            return
        other.transport.write(data)
        stats = self.stats
        if stats is not None:
            if self.counts_sent:
                stats.bytes_sent += len(data)
            else:
                stats.bytes_received += len(data)

    def eof_received(self) -> bool:
        self._close_other()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.registry is not None:
            self.registry.discard(self)
        self.closed = True
        if self.stats is not None and self.counts_sent and self.other is not None:
            self.stats.open -= 1
        self._close_other()

    def _close_other(self) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.close()

    def pause_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


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


class TcpListener(asyncio.Protocol):
    """Accepts a local connection for one TcpUpstream and carries it to a peer."""

    def __init__(self, dp: DataPlane, upstream: TcpUpstream) -> None:
        self.dp = dp
        self.upstream = upstream
        self.end = Splice(counts_sent=True, registry=dp.splices)
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self.end)
        self.end.connection_made(transport)
        self.task = self.dp.spawn(self._connect())

    def data_received(self, data: bytes) -> None:  # pragma: no cover - protocol replaced
        self.end.data_received(data)

    async def _connect(self) -> None:
        up = self.upstream
        namespace = up.namespace or self.dp.table.namespace
        what = f"{up.service}.{namespace}:{up.port}"
        found = self.dp.table.lookup_service(up.service, namespace, up.port, what)
        if isinstance(found, str):
            await self.dp.wait_interest(found)
            found = self.dp.table.lookup_service(up.service, namespace, up.port, what)
        if not isinstance(found, Route):
            reason = found.reason if isinstance(found, NoRoute) else f"no route for {what}"
            log.warning("tcp %s: %s", what, reason)
            self.end.close()
            return
        if found.router is not None and found.router.spec.tcp_rules:
            backend = tcp_backend(found)
            if isinstance(backend, str):
                log.warning("tcp %s: %s", what, backend)
                self.end.close()
                return
            found = backend
        stats = self.dp.metrics.tcp_stats("outbound", found.namespace, found.name, True)
        self.end.stats = stats
        balancer = found.balancer
        tried = -1
        for _ in range(min(MAX_ATTEMPTS, max(len(balancer), 1))):
            if self.end.closed:
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
            if self.end.closed:
                other.close()
                return
            self.end.join(other)
            return
        log.warning("tcp %s: no endpoint could be reached", what)
        self.end.close()
