"""Aggregate TrafficControl rates: one budget for a whole source group, split between
its proxies by their demand (docs/traffic-control.md, decision 0093).

Each source proxy that enforces an Aggregate rate reports, every second, how many
calls met it (`{"type": "demand", "seconds": S, "edges": {"ns/name/service": N}}` on
the discovery stream). Every REBALANCE_INTERVAL the control plane splits each edge's
budget between the proxies holding it and sends each its part (`{"type": "shares",
"edges": {...}}`): FLOOR of the budget in equal parts, so a proxy that was idle can
start at once, and the rest max-min fair by demand (water-filling: no proxy gets more
than it asked for while another gets less than it asked for, and what is left over
goes in equal parts). The parts always add up to the budget.

Convergence: a split uses the last report of each proxy, so with steady demand it is
stable after one report and one rebalance (about two seconds); a change of demand is
followed within the same time. A proxy whose reports stop (STALE) leaves the split.
When the control plane is away, each proxy keeps its last part (static stability); a
proxy that never got one enforces the whole budget until it does.

With several control-plane replicas (a shared system store, decision 0051), each
replica also writes the demand of the proxies it holds to its own `AggregateDemand`
record there every split, reads the other live replicas' (fresher than STALE), and
splits the budget over every proxy of the group, sending each of its own proxies its
part: the replicas compute the same split from the same reports, up to a second apart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from gossamer.controlplane.replicas import NAMESPACE, counter_record
from gossamer.resources.trafficcontrol import TrafficControl, parse_rate
from gossamer.store import Store

log = logging.getLogger("gossamer.controlplane")

REBALANCE_INTERVAL: Final = 1.0
FLOOR: Final = 0.1  # of the budget, split equally whatever the demand
STALE: Final = 5.0  # seconds without a report: the proxy leaves the split
MAX_EDGES: Final = 256  # edges one proxy may report
MAX_RATE: Final = 1e9  # calls a second one proxy may claim on an edge


def _number(value: object) -> float | None:
    """A finite float from a JSON number (a bool is not one; an int too large for a
    float, NaN and the infinities are refused), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


class Sender(Protocol):
    """A proxy's stream (controlplane.discovery.ProxySession)."""

    async def send_shares(self, shares: dict[str, float]) -> None: ...


def split(budget: float, demands: Mapping[Any, float]) -> dict[Any, float]:
    """Each party's part of `budget`: FLOOR of it equally, the rest max-min fair by
    `demands` (per second), what nobody asked for equally. The parts sum to `budget`."""
    n = len(demands)
    if n == 0:
        return {}
    floor = budget * FLOOR / n
    rest = budget - floor * n
    out: dict[Any, float] = {}
    remaining = rest
    ordered = sorted(demands.items(), key=lambda kv: kv[1])
    for i, (party, demand) in enumerate(ordered):
        fair = remaining / (n - i)
        give = min(max(0.0, demand - floor), fair)
        out[party] = floor + give
        remaining -= give
    if remaining > 0:
        for party in out:
            out[party] += remaining / n
    return out


@dataclass
class _Report:
    proxy: Sender
    rates: dict[str, float] = field(default_factory=dict)  # per second, by edge
    at: float = 0.0


Key = tuple[str, str]  # a proxy: its workload's (namespace, name)
DEMAND_KIND: Final = "AggregateDemand"


class SharedDemand:
    """The demand every replica's proxies reported, through the system store."""

    def __init__(self, store: Store, replica_id: str, alive: Callable[[str], bool]) -> None:
        self.store = store
        self.replica_id = replica_id
        self.alive = alive
        self._created = False

    def exchange(self, mine: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Write this replica's demand (edge -> proxy -> calls a second) and return the
        other live replicas' (edge -> "replica/proxy" -> calls a second). Blocking:
        called from a thread."""
        if not self._created:
            counter_record(self.store, DEMAND_KIND, self.replica_id)
            self._created = True
        now = time.time()
        self.store.update_status(
            DEMAND_KIND, NAMESPACE, self.replica_id, {"at": now, "edges": mine}
        )
        others: dict[str, dict[str, float]] = {}
        for record in self.store.list(DEMAND_KIND, NAMESPACE):
            replica = record["metadata"]["name"]
            status = record.get("status") or {}
            at = status.get("at")
            if replica == self.replica_id or not self.alive(replica):
                continue
            if not isinstance(at, int | float) or now - at > STALE:
                continue
            edges = status.get("edges")
            for edge, proxies in (edges if isinstance(edges, dict) else {}).items():
                if not isinstance(proxies, dict):
                    continue
                for proxy, rate in proxies.items():
                    if isinstance(rate, int | float) and rate >= 0:
                        others.setdefault(str(edge), {})[f"{replica}/{proxy}"] = float(rate)
        return others


class AggregateRates:
    """The control plane's half: reports in, shares out."""

    def __init__(
        self,
        controls: Callable[[], Iterable[TrafficControl]],
        governs: Callable[[Key, str], bool] | None = None,
    ) -> None:
        """`governs(proxy, edge)`: whether the edge's control governs that proxy's calls
        to its service (its workload in `from`, the service in `to`); a report on any
        other edge is dropped, so no proxy takes a part of a budget not its own."""
        self._controls = controls
        self._governs = governs or (lambda key, edge: True)
        self._reports: dict[Key, _Report] = {}
        self.sent: dict[Key, dict[str, float]] = {}  # the last shares each proxy got
        self.shared: SharedDemand | None = None  # with other replicas (set at start)

    def report(self, key: Key, proxy: Sender, msg: Mapping[str, Any]) -> bool:
        """A demand report (a proxy's own word: checked, bounded, and kept only for the
        edges whose control governs that proxy's calls); True for a proxy's first report
        on a stream, which the caller splits at once so it gets its part now. Later
        reports wait for the next split, whatever they name."""
        seconds = _number(msg.get("seconds"))
        edges = msg.get("edges")
        if not isinstance(edges, dict) or seconds is None or seconds <= 0:
            return False
        rates = {}
        for k, v in list(edges.items())[:MAX_EDGES]:
            count = _number(v)
            edge = str(k)
            if count is None or count < 0 or not self._governs(key, edge):
                continue
            rates[edge] = min(count / seconds, MAX_RATE)
        old = self._reports.get(key)
        self._reports[key] = _Report(proxy, rates, time.monotonic())
        if old is None or old.proxy is not proxy:
            self.sent.pop(key, None)  # a new stream: its shares are sent again
            return True
        return False

    def forget(self, key: Key, proxy: Sender) -> None:
        """The proxy's stream ended (unless it already has a newer one)."""
        old = self._reports.get(key)
        if old is not None and old.proxy is proxy:
            del self._reports[key]
            self.sent.pop(key, None)

    def budgets(self) -> dict[str, float]:
        """Every Aggregate rate's budget per second, by "namespace/name"."""
        out = {}
        for c in self._controls():
            rate = c.spec.rate
            if rate is not None and rate.scope == "Aggregate":
                out[f"{c.metadata.namespace}/{c.metadata.name}"] = parse_rate(rate.limit)
        return out

    def demand(self) -> dict[str, dict[Key, float]]:
        """This replica's proxies' demand, by edge (reports older than STALE dropped)."""
        now = time.monotonic()
        for key in [k for k, r in self._reports.items() if now - r.at > STALE]:
            del self._reports[key]
            self.sent.pop(key, None)
        by_edge: dict[str, dict[Key, float]] = {}
        for key, report in self._reports.items():
            for edge, rate in report.rates.items():
                by_edge.setdefault(edge, {})[key] = rate
        return by_edge

    def shares(
        self, others: Mapping[str, Mapping[str, float]] | None = None
    ) -> dict[Key, dict[str, float]]:
        """Each of this replica's proxies' part of each edge it reported, the budget
        split over them and `others` (other replicas' proxies' demand, by edge)."""
        budgets = self.budgets()
        out: dict[Key, dict[str, float]] = {}
        for edge, demands in self.demand().items():
            control = edge.rsplit("/", 1)[0]
            budget = budgets.get(control)
            if budget is None:
                continue  # removed, or no longer Aggregate: the next snapshot says so
            everyone: dict[Key | str, float] = dict(demands.items())
            everyone.update((others or {}).get(edge, {}).items())
            for key, part in split(budget, everyone).items():
                if isinstance(key, tuple):
                    out.setdefault(key, {})[edge] = round(part, 6)
        return out

    async def rebalance(self) -> None:
        others = None
        if self.shared is not None:
            mine = {
                edge: {f"{k[0]}/{k[1]}": rate for k, rate in demands.items()}
                for edge, demands in self.demand().items()
            }
            try:
                others = await asyncio.to_thread(self.shared.exchange, mine)
            except Exception as err:  # the store away: split what this replica sees
                log.warning("could not share aggregate demand with other replicas: %s", err)
        shares = self.shares(others)
        for key in [k for k in self.sent if k not in shares]:
            del self.sent[key]  # its edges left the split: whatever comes next is sent
        for key, parts in shares.items():
            if self.sent.get(key) == parts:
                continue
            report = self._reports.get(key)
            if report is None:
                continue
            try:
                await report.proxy.send_shares(parts)
                self.sent[key] = parts
            except Exception as err:  # the stream's own loop deals with a dead stream
                log.debug("could not send control shares: %s", err)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(REBALANCE_INTERVAL)
            try:
                await self.rebalance()
            except Exception:
                log.exception("splitting aggregate rates failed")
