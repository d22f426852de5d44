"""What a proxy is told of its TrafficControls: plain frozen dataclasses, as the rest
of the snapshot (the proxy loads no resource models; gossamer.translate.controls
makes them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateView:
    per_second: float
    burst: int
    # The rate is the whole source group's: this proxy enforces the share the control
    # plane gives it (proxy.policy.control, controlplane.aggregate).
    aggregate: bool = False


@dataclass(frozen=True, slots=True)
class ConcurrencyView:
    max_in_flight: int | None = None  # fixed; else adaptive:
    algorithm: str = "Gradient2"
    initial_limit: int = 20
    min_limit: int = 1
    max_limit: int = 1000
    max_pending: int = 0
    queue_timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class BreakerView:
    consecutive_failures: int | None = None
    failure_percent: float | None = None
    min_requests: int = 20
    interval: float = 10.0
    ejection_time: float = 30.0


@dataclass(frozen=True, slots=True)
class RetryBudgetView:
    percent: float = 20.0
    min_retries_per_second: int = 3


@dataclass(frozen=True, slots=True)
class ControlView:
    """One TrafficControl for one source proxy: the services it governs there."""

    name: str
    namespace: str
    services: tuple[str, ...]  # "name.namespace", sorted
    mode: str = "Enforce"
    quarantined: bool = False  # quarantine applies and this source is not allowed
    expires_at: float | None = None  # Unix time, from creationTimestamp + ttl
    rate: RateView | None = None
    concurrency: ConcurrencyView | None = None
    breaker: BreakerView | None = None
    retry_budget: RetryBudgetView | None = None
