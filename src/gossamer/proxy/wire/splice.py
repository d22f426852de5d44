"""One end of a byte pipe: opaque TCP, and tunnels (WebSocket upgrades, CONNECT).

Below every side that carries bytes (proxy.outbound.tcp, the tunnels of
proxy.forward.exchange, proxy.inbound.http), so that none of them needs another to splice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from gossamer.proxy.wire.limits import LOST, close_soon, keep_open_at_eof

if TYPE_CHECKING:
    from gossamer.proxy.observe.metrics import TcpStats


class Splice(asyncio.Protocol):
    """One end of a byte pipe; `join` connects it to the other end."""

    __slots__ = (
        "closed",
        "counts_sent",
        "moved",
        "on_lost",
        "other",
        "pending",
        "registry",
        "seen",
        "stats",
        "transport",
    )

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
        # Bytes read from this end, and (both ends' bytes, when) as `idle` last saw
        # them change.
        self.moved = 0
        self.seen = (0, 0.0)
        self.stats = stats
        # Which counter this end's incoming bytes go to (the opening side's view).
        self.counts_sent = counts_sent
        # Called once when the pipe ends (the first of its ends lost): a tunnel gives
        # back what its call held (a bulkhead slot, a circuit-breaker request) then.
        self.on_lost: Callable[[], None] | None = None

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
        self.moved += len(data)
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
        # The pipe ends both ways (no half-close carried). Closed here, within
        # DELAYED_CLOSE, not by the transport (keep_open_at_eof says why).
        keep_open = keep_open_at_eof(self.transport)
        self._close_other()
        if self.transport is not None:
            close_soon(self.transport)
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        if self.registry is not None:
            self.registry.discard(self)
        self.closed = True
        other = self.other
        if self.stats is not None and self.counts_sent and other is not None:
            self.stats.open -= 1
        on_lost = self.on_lost
        if on_lost is not None:
            self.on_lost = None
            if other is not None:
                other.on_lost = None
            on_lost()
        self._close_other()
        self.transport = LOST  # freed now, not by the cycle collector (limits.LOST)

    def _close_other(self) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            close_soon(other.transport)

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
            close_soon(self.transport)

    def idle(self, now: float, idle_timeout: float) -> bool:
        """Whether nothing was read from either end of the pipe for `idle_timeout`
        (called about once a second: a client that reads nothing stops the reads too,
        once the buffers are full)."""
        other = self.other
        moved = self.moved + (other.moved if other is not None else 0)
        seen, since = self.seen
        if moved != seen or not since:
            self.seen = (moved, now)
            return False
        return now - since > idle_timeout

    def abort(self) -> None:
        """Both ends, at once."""
        for end in (self, self.other):
            if end is not None and end.transport is not None:
                end.closed = True
                end.transport.abort()
