"""Endpoint choice: power of two choices over peak-EWMA latency (Finagle, Linkerd).

Each endpoint keeps an exponentially weighted moving average of its response latency
that jumps up at once to a slower sample (the "peak") and decays towards faster
ones. Its cost is that average times one more than its requests in flight, so a slow
or busy endpoint gets less traffic. Two endpoints are drawn at random and the cheaper
one wins: nearly as good as looking at all of them, at the price of two.

An endpoint that refuses connections is taken out for a backoff that doubles with
each failure; when the backoff has passed, one request probes it and either brings it
back or doubles the backoff. Nothing here does I/O or reads a clock: `now` is passed
in, so the behaviour is tested by calling it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Final, Generic, TypeVar

T = TypeVar("T", covariant=True)

DECAY_SECONDS: Final = 10.0  # Linkerd's default decay time
DEFAULT_RTT: Final = 0.030  # what an endpoint with no samples is assumed to take
BACKOFF_BASE: Final = 0.5
BACKOFF_MAX: Final = 30.0


class EndpointLoad:
    """Latency and load of one endpoint, kept across snapshots while it exists."""

    __slots__ = (
        "consecutive",
        "ejected_until",
        "ejections",
        "ewma",
        "failures",
        "outstanding",
        "probe_until",
        "retry_at",
        "stamp",
        "window_failed",
        "window_start",
        "window_total",
    )

    def __init__(self, now: float = 0.0) -> None:
        self.ewma = DEFAULT_RTT
        self.stamp = now
        self.outstanding = 0
        self.failures = 0
        self.retry_at = 0.0  # out of rotation until then
        self.probe_until = 0.0  # a probe is in flight until then
        # Outlier detection (gossamer.proxy.policy.resilience): ejected for failing requests.
        self.ejected_until = 0.0
        self.ejections = 0
        self.consecutive = 0
        self.window_start = now
        self.window_total = 0
        self.window_failed = 0

    def cost(self, now: float) -> float:
        elapsed = now - self.stamp
        ewma = self.ewma * math.exp(-elapsed / DECAY_SECONDS) if elapsed > 0 else self.ewma
        return ewma * (self.outstanding + 1)

    def observe(self, rtt: float, now: float) -> None:
        if rtt > self.ewma:
            self.ewma = rtt
        else:
            elapsed = now - self.stamp
            w = math.exp(-elapsed / DECAY_SECONDS) if elapsed > 0 else 1.0
            self.ewma = self.ewma * w + rtt * (1.0 - w)
        self.stamp = now

    def available(self, now: float) -> bool:
        return self.retry_at <= now and self.probe_until <= now and self.ejected_until <= now

    def connect_failed(self, now: float, rng: random.Random | None = None) -> None:
        self.failures += 1
        backoff = min(BACKOFF_BASE * 2 ** (self.failures - 1), BACKOFF_MAX)
        # Jitter, so endpoints ejected together are not probed together.
        jitter = (rng or random).uniform(0.8, 1.2)
        self.retry_at = now + backoff * jitter
        self.probe_until = 0.0

    def connected(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
        self.probe_until = 0.0


class Balancer(Generic[T]):
    """Picks among the endpoints of one service port; `T` is whatever the caller keeps
    per endpoint (the proxy keeps its connection pool there)."""

    __slots__ = ("_loads", "_rng", "_single", "items", "loads")

    def __init__(
        self,
        items: Sequence[T],
        loads: Sequence[EndpointLoad],
        rng: random.Random | None = None,
    ) -> None:
        if len(items) != len(loads):
            raise ValueError("one load per endpoint")
        self.items = tuple(items)
        self.loads = tuple(loads)
        self._rng = rng or random.Random()
        self._single = len(self.items) == 1

    def __len__(self) -> int:
        return len(self.items)

    def pick(self, now: float, probe_for: float = 1.0, exclude: int = -1) -> int:
        """The index of the endpoint to use, or -1 when there is none.

        `probe_for` bounds how long an endpoint that is being probed is kept from other
        requests (the connect timeout); `exclude` is an endpoint that just failed.
        """
        n = len(self.items)
        if n == 0 or (n == 1 and exclude == 0):
            return -1
        if self._single:
            self._take(0, now, probe_for)
            return 0
        loads = self.loads
        rng = self._rng
        a = rng.randrange(n)
        b = rng.randrange(n - 1)
        if b >= a:
            b += 1
        la, lb = loads[a], loads[b]
        a_ok = a != exclude and la.available(now)
        b_ok = b != exclude and lb.available(now)
        if a_ok and b_ok:
            chosen = a if la.cost(now) <= lb.cost(now) else b
        elif a_ok:
            chosen = a
        elif b_ok:
            chosen = b
        else:
            chosen = self._fallback(now, exclude)
            if chosen < 0:
                return -1
        self._take(chosen, now, probe_for)
        return chosen

    def _fallback(self, now: float, exclude: int) -> int:
        # Neither draw was usable: scan for the cheapest endpoint that is.
        best, best_cost = -1, math.inf
        for i, load in enumerate(self.loads):
            if i != exclude and load.available(now):
                c = load.cost(now)
                if c < best_cost:
                    best, best_cost = i, c
        if best >= 0:
            return best
        # Every endpoint is out: rather than fail at once, try the one due back
        # soonest (failing requests help nobody, and it may have recovered).
        soonest = math.inf
        for i, load in enumerate(self.loads):
            due = max(load.retry_at, load.ejected_until)
            if i != exclude and due < soonest:
                best, soonest = i, due
        return best

    def _take(self, i: int, now: float, probe_for: float) -> None:
        load = self.loads[i]
        if load.failures:
            # Let one request find out whether it is back; others go elsewhere meanwhile.
            load.probe_until = now + probe_for
