"""Retries with a budget, outlier detection, and circuit-breaking limits, without I/O.

Nothing here reads a clock or touches a socket: `now` is passed in, randomness comes
from an injectable `random.Random`, so every behaviour is tested by calling it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from gossamer.proxy.policy.balancer import EndpointLoad
from gossamer.translate.routetypes import LimitsSpec, OutlierSpec, RetrySpec, retry_codes

if TYPE_CHECKING:
    from gossamer.proxy.observe.metrics import ResilienceStats

# Methods whose requests may be sent again (RFC 9110 9.2.2, idempotent methods).
IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
_BUCKETS: Final = 10


class RetryBudget:
    """Finagle's retry budget: each request deposits `ratio` of a retry, each retry
    withdraws one, deposits expire after `ttl`; `min_per_second` retries are always
    allowed. So retries add at most `ratio` to the load a failing service sees."""

    __slots__ = (
        "_bucket_seconds",
        "_deposits",
        "_epoch",
        "_withdrawals",
        "min_per_second",
        "ratio",
        "ttl",
    )

    def __init__(self, ratio: float, min_per_second: float, ttl: float) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.ttl = ttl
        self._bucket_seconds = ttl / _BUCKETS
        self._deposits = [0] * _BUCKETS
        self._withdrawals = [0] * _BUCKETS
        self._epoch = 0  # index of the newest bucket, in bucket units since time 0

    def _advance(self, now: float) -> int:
        epoch = int(now / self._bucket_seconds)
        if epoch != self._epoch:
            stale = min(epoch - self._epoch, _BUCKETS)
            for k in range(1, stale + 1):
                i = (self._epoch + k) % _BUCKETS
                self._deposits[i] = 0
                self._withdrawals[i] = 0
            self._epoch = epoch
        return epoch % _BUCKETS

    def deposit(self, now: float) -> None:
        self._deposits[self._advance(now)] += 1

    def balance(self, now: float) -> float:
        self._advance(now)
        return (
            self.ratio * sum(self._deposits)
            + self.min_per_second * self.ttl
            - sum(self._withdrawals)
        )

    def try_withdraw(self, now: float) -> bool:
        if self.balance(now) < 1.0:
            return False
        self._withdrawals[self._epoch % _BUCKETS] += 1
        return True


class RetryPolicy:
    """A RetrySpec compiled for one route, with its budget (shared by its requests)."""

    __slots__ = (
        "attempts",
        "backoff_base",
        "backoff_max",
        "budget",
        "codes",
        "on_connect",
        "on_reset",
        "per_try",
        "rng",
        "stats",
        "stats_via",
    )

    def __init__(
        self,
        spec: RetrySpec,
        budget: RetryBudget,
        rng: random.Random | None = None,
        stats: ResilienceStats | None = None,
        stats_via: Callable[[str], ResilienceStats] | None = None,
    ) -> None:
        """`stats`: the destination's counters; `stats_via`: the counters of the calls
        a route ("namespace/name") sent there, so a routed call's retries are counted
        per route (and once: not in `stats` too)."""
        self.attempts = spec.attempts
        self.codes = retry_codes(spec)
        self.on_reset = "reset" in spec.on or "5xx" in spec.on
        self.on_connect = "connect-failure" in spec.on or "5xx" in spec.on
        self.per_try = spec.per_try_timeout
        self.backoff_base = spec.backoff_base
        self.backoff_max = spec.backoff_max
        self.budget = budget
        self.rng = rng or random.Random()
        self.stats = stats
        self.stats_via = stats_via

    def withdraw(self, now: float) -> bool:
        """Whether the budget allows one more retry now; a refusal is counted."""
        if self.budget.try_withdraw(now):
            return True
        if self.stats is not None:
            self.stats.budget_exhausted += 1
        return False

    def count(self, via: str | None = None) -> None:
        """A retry is going to be sent: it is counted (`via`: the route, if one sent
        the call)."""
        if via is not None and self.stats_via is not None:
            self.stats_via(via).retries += 1
        elif self.stats is not None:
            self.stats.retries += 1

    def counted_backoff(self, retry: int, via: str | None = None) -> float:
        """`backoff`, for a retry that is going to be sent: it is counted."""
        self.count(via)
        return self.backoff(retry)

    def backoff(self, retry: int) -> float:
        """Exponential backoff with full jitter before retry number `retry` (1, 2, ...)."""
        if self.backoff_base <= 0:
            return 0.0
        ceiling = min(self.backoff_base * 2 ** (retry - 1), self.backoff_max)
        return self.rng.uniform(0, ceiling)


class OutlierDetector:
    """Ejects endpoints of one service port that keep failing (Envoy's outlier detection).

    An endpoint is ejected after `consecutive_failures` failures in a row, or when at
    least `failure_rate_minimum_requests` requests in the current `interval` failed at
    `failure_rate_percent` or more. An ejection lasts `base_ejection_time` times the
    number of ejections so far (at most `max_ejection_time`); the count goes back down
    after a healthy interval. At most `max_ejected_percent` of the endpoints are out at
    once, but one always may be.
    """

    __slots__ = ("loads", "spec", "stats")

    def __init__(
        self,
        spec: OutlierSpec,
        loads: Sequence[EndpointLoad],
        stats: ResilienceStats | None = None,
    ) -> None:
        self.spec = spec
        self.loads = tuple(loads)
        self.stats = stats

    def _roll(self, load: EndpointLoad, now: float) -> None:
        if now - load.window_start >= self.spec.interval:
            # An interval served without a failure brings the next ejection time down.
            healthy = load.window_total > 0 and load.window_failed == 0
            if healthy and load.ejections and load.ejected_until <= now:
                load.ejections -= 1
            load.window_start = now
            load.window_total = 0
            load.window_failed = 0

    def success(self, load: EndpointLoad, now: float) -> None:
        self._roll(load, now)
        load.window_total += 1
        load.consecutive = 0

    def failure(self, load: EndpointLoad, now: float) -> bool:
        """Count a failure; True when it ejected the endpoint."""
        spec = self.spec
        self._roll(load, now)
        load.window_total += 1
        load.window_failed += 1
        load.consecutive += 1
        if load.ejected_until > now:
            return False
        trip = bool(spec.consecutive_failures) and load.consecutive >= spec.consecutive_failures
        if not trip and spec.failure_rate_percent is not None:
            trip = (
                load.window_total >= spec.failure_rate_minimum_requests
                and load.window_failed * 100 >= spec.failure_rate_percent * load.window_total
            )
        if not trip or not self._may_eject(now):
            return False
        load.ejections += 1
        if self.stats is not None:
            self.stats.ejections += 1
        load.ejected_until = now + min(
            spec.base_ejection_time * load.ejections,
            max(spec.max_ejection_time, spec.base_ejection_time),
        )
        load.consecutive = 0
        load.window_total = 0
        load.window_failed = 0
        return True

    def _may_eject(self, now: float) -> bool:
        out = sum(1 for load in self.loads if load.ejected_until > now)
        allowed = max(1, math.floor(len(self.loads) * self.spec.max_ejected_percent / 100))
        if self.spec.max_ejected_percent == 0:
            allowed = 0
        return out < allowed and out < len(self.loads)

    def ejected(self, now: float) -> int:
        return sum(1 for load in self.loads if load.ejected_until > now)


class Limits:
    """Circuit-breaking limits for one service port, and what is in use now."""

    __slots__ = ("active", "max_connections", "max_pending", "max_requests", "pending")

    def __init__(self, spec: LimitsSpec) -> None:
        self.max_connections = spec.max_connections
        self.max_pending = spec.max_pending_requests
        self.max_requests = spec.max_requests
        self.active = 0
        self.pending = 0
