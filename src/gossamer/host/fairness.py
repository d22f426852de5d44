"""Fairness between the workloads of one host proxy: each has its own connection cap
and its own cap on requests in flight.

The workloads of a host proxy share one process: its file descriptors, its memory and
its core. Without a cap, one workload's clients (or its app, flooding its outbound
listener) could take every descriptor below the process's downstream ceiling
(proxy.wire.acceptor), and the others' connections would be refused with it.
`WorkloadBudget` stands in for the process-wide `FdBudget` in each workload's data
plane: it admits a connection only while that workload holds fewer than its cap, then
applies the process's ceiling as before.

Connections alone do not bound the work: one HTTP/2 connection carries up to
MAX_STREAMS requests at once. Each workload's data plane also gets an `InFlight` cap
(proxy.wire.limits) on the requests it carries at once, both directions and both HTTP
versions together: over it a new HTTP/1.1 request is answered 503 and a new HTTP/2
stream is refused with REFUSED_STREAM, for that workload only, while the others' go on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from gossamer.proxy.wire.acceptor import FdBudget
from gossamer.proxy.wire.limits import InFlight

if TYPE_CHECKING:
    from gossamer.proxy.dataplane import DataPlane

log = logging.getLogger("gossamer.host.fairness")

DEFAULT_MAX_CONNECTIONS: Final = 2048
# Envoy's default for a cluster's max_requests circuit breaker.
DEFAULT_MAX_IN_FLIGHT: Final = 1024
LOG_INTERVAL: Final = 1.0


class WorkloadBudget(FdBudget):
    """The process's descriptor budget, and a cap on one workload's own connections."""

    def __init__(self, dataplane: DataPlane, max_connections: int) -> None:
        super().__init__(dataplane.fds.limit)
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.dataplane = dataplane
        self.max_connections = max_connections
        self.over_cap: dict[str, int] = {}  # connections refused at the cap, by listener
        self._logged = float("-inf")

    def connections(self) -> int:
        """The workload's connections from clients and its app, past the handshake.
        (Those still in their TLS handshake are capped per data plane already:
        `max_handshakes`, proxy.wire.limits.)"""
        dp = self.dataplane
        return (
            len(dp.connections)
            + len(dp.h2_connections)
            + len(dp.sniffers)
            + len(dp.splices) // 2  # a TCP connection is two splices, downstream and up
        )

    def admit(self, fd: int, listener: str) -> bool:
        if self.connections() >= self.max_connections:
            self.over_cap[listener] = self.over_cap.get(listener, 0) + 1
            now = self.dataplane.loop.time()
            if now - self._logged >= LOG_INTERVAL:
                self._logged = now
                log.warning(
                    "%s: %s listener: refused a connection: the workload holds its cap of "
                    "%d connections on this host proxy (refused so far: %d)",
                    self.workload(),
                    listener,
                    self.max_connections,
                    sum(self.over_cap.values()),
                )
            return False
        return super().admit(fd, listener)

    def workload(self) -> str:
        table = self.dataplane.table
        return f"{table.namespace}/{table.workload}"

    def dump(self) -> dict[str, Any]:
        return {
            "maxConnections": self.max_connections,
            "connections": self.connections(),
            "refusedAtCap": dict(self.over_cap),
        }


def share_fairly(dataplane: DataPlane, max_connections: int, max_in_flight: int) -> None:
    """Give a workload's data plane its caps, before it starts; both show in its
    /config dump (`fairness`)."""
    budget = dataplane.fds = WorkloadBudget(dataplane, max_connections)
    in_flight = dataplane.in_flight = InFlight(
        max_in_flight, lambda: f"workload {budget.workload()}"
    )
    dataplane.add_config_section("fairness", lambda: budget.dump() | in_flight.dump())
