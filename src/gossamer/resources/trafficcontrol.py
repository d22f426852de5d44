"""`gossamer.dev/v1alpha1 TrafficControl`: live limits on the calls between two groups.

    apiVersion: gossamer.dev/v1alpha1
    kind: TrafficControl
    metadata: {name: shield-payments, namespace: shop}
    spec:
      from: {selector: {matchLabels: {tier: web}}}            # the callers
      to: {namespaces: ["*"], selector: {matchLabels: {team: payments}}}
      rate: {limit: 200/s, burst: 50}                         # per source proxy and edge,
                                                              # or scope: Aggregate
      concurrency:                                            # a bulkhead per source proxy
        maxInFlight: 20                                       # or adaptive: {algorithm: Gradient2}
        maxPending: 50
        queueTimeout: 500ms
      circuitBreaker: {consecutiveFailures: 5, ejectionTime: 30s}
      quarantine: {allow: [{selector: {matchLabels: {team: sre}}}]}
      retryBudget: {percent: 10, minRetriesPerSecond: 1}
      mode: Enforce                                           # or DryRun: count, refuse nothing
      ttl: 30m                                                # gone by itself after that

A group is workloads: those in `namespaces` (names, or `*` for every namespace; none
means the control's own) whose labels match `selector` (none: all of them). A call is
governed when its source workload is in `from` and its destination Service selects a
workload in `to`. Each source proxy enforces the control on its own calls
(docs/traffic-control.md says how limits combine and what `explain` shows).
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, model_validator

from gossamer.resources._base import Between, Model, invalid, raise_problems
from gossamer.resources.authorizationpolicy import WorkloadSelector
from gossamer.resources.httproute import Duration, parse_duration
from gossamer.resources.meta import ObjectMeta

__all__ = [
    "Adaptive",
    "Concurrency",
    "ControlRetryBudget",
    "Group",
    "GroupCircuitBreaker",
    "Quarantine",
    "Rate",
    "TrafficControl",
    "TrafficControlSpec",
    "parse_rate",
]

API_VERSION: Final = "gossamer.dev/v1alpha1"
ALL_NAMESPACES: Final = "*"
_RATE: Final = re.compile(r"([1-9][0-9]{0,8})/(ms|s|m|h)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_REASON: Final = "must be a count per unit, e.g. 100/s, 6000/m or 1/h (units: ms, s, m, h)"


def parse_rate(value: str) -> float:
    """Requests per second in `N/unit`; ValueError says what is wrong."""
    found = _RATE.fullmatch(value)
    if found is None:
        raise ValueError(_RATE_REASON)
    return int(found.group(1)) / _UNIT_SECONDS[found.group(2)]


def _rate(value: str) -> str:
    try:
        parse_rate(value)
    except ValueError:
        raise invalid(_RATE_REASON) from None
    return value


def _namespace(value: str) -> str:
    if value != ALL_NAMESPACES and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value):
        raise invalid('must be a namespace name (a DNS-1123 label) or "*"')
    return value


RateText = Annotated[str, AfterValidator(_rate)]
Limit = Annotated[int, Between(1, 1_000_000)]
Percent = Annotated[float, Field(ge=0, le=100)]
NamespaceName = Annotated[str, AfterValidator(_namespace)]


class Group(Model):
    """Workloads: those in `namespaces` whose labels match `selector`."""

    namespaces: list[NamespaceName] = Field(default_factory=list, max_length=64)
    """Namespace names, or `*` for all; empty: the control's own namespace."""
    selector: WorkloadSelector | None = None
    """Labels a workload must have; none (or empty): every workload of the namespaces."""

    def everything(self) -> bool:
        """Whether the group is every workload of every namespace."""
        return ALL_NAMESPACES in self.namespaces and not self.labels()

    def labels(self) -> dict[str, str]:
        return dict(self.selector.match_labels) if self.selector is not None else {}


class Rate(Model):
    limit: RateText
    """Requests per unit (`100/s`), per source proxy and destination service."""
    burst: Limit | None = None
    """Requests allowed at once above the rate; default: one second's worth (at least 1)."""
    scope: Literal["Edge", "Aggregate"] = "Edge"
    """`Edge`: each source proxy has its own bucket per destination service, at this
    rate. `Aggregate`: the rate is the whole source group's, per destination service;
    the control plane splits it between the source proxies by their demand, every
    second (docs/traffic-control.md)."""


class Adaptive(Model):
    algorithm: Literal["Gradient2", "AIMD"] = "Gradient2"
    """Gradient2: Netflix concurrency-limits' gradient of long- to short-term latency.
    AIMD: additive increase, multiplicative decrease on a timeout or an overload."""
    min_limit: Limit = 1
    max_limit: Limit = 1000
    initial_limit: Limit = 20

    @model_validator(mode="after")
    def _ordered(self) -> Adaptive:
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise_problems(
                [(("initialLimit",), "must lie between minLimit and maxLimit (inclusive)")]
            )
        return self


class Concurrency(Model):
    """A bulkhead: at most `maxInFlight` calls at once, `maxPending` more held back for
    up to `queueTimeout` (backpressure), then refused."""

    max_in_flight: Limit | None = None
    adaptive: Adaptive | None = None
    max_pending: Annotated[int, Between(0, 1_000_000)] = 0
    queue_timeout: Duration = "1s"

    @model_validator(mode="after")
    def _one_limit(self) -> Concurrency:
        if (self.max_in_flight is None) == (self.adaptive is None):
            raise_problems([((), "set exactly one of maxInFlight (fixed) and adaptive")])
        return self


class GroupCircuitBreaker(Model):
    """Opens for the whole edge group: every governed call is refused for
    `ejectionTime` once the group's calls fail too often."""

    consecutive_failures: Limit | None = None
    failure_percent: Percent | None = None
    min_requests: Limit = 20
    """Calls in `interval` before `failurePercent` is judged."""
    interval: Duration = "10s"
    ejection_time: Duration = "30s"

    @model_validator(mode="after")
    def _one_trigger(self) -> GroupCircuitBreaker:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.consecutive_failures is None and self.failure_percent is None:
            problems.append(((), "set consecutiveFailures, failurePercent or both"))
        for field, value in (("interval", self.interval), ("ejectionTime", self.ejection_time)):
            if parse_duration(value) == 0:
                problems.append(((field,), "must be longer than 0s"))
        raise_problems(problems)
        return self


class Quarantine(Model):
    """Refuse every governed call except those from the `allow` groups."""

    action: Literal["Refuse"] = "Refuse"
    """What a quarantined call gets (the only choice for now; it also keeps
    `quarantine: {}` from reading as no quarantine once stored)."""
    allow: list[Group] = Field(default_factory=list, max_length=16)


class ControlRetryBudget(Model):
    """Replaces the destination services' own retry budget on the governed calls."""

    percent: Percent = 20.0
    min_retries_per_second: Annotated[int, Between(0, 1_000_000)] = 3


class TrafficControlSpec(Model):
    from_: Group = Field(default_factory=Group, alias="from")
    """The callers; absent or `{}`: every workload of the control's namespace."""
    to: Group = Field(default_factory=Group)
    """The destinations, the same way."""
    rate: Rate | None = None
    concurrency: Concurrency | None = None
    circuit_breaker: GroupCircuitBreaker | None = None
    quarantine: Quarantine | None = None
    retry_budget: ControlRetryBudget | None = None
    mode: Literal["Enforce", "DryRun"] = "Enforce"
    """DryRun: count what would be refused, refuse nothing."""
    ttl: Duration | None = None
    """The control expires this long after it was created (status says Expired)."""

    @model_validator(mode="after")
    def _meaningful(self) -> TrafficControlSpec:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        actions = (
            self.rate,
            self.concurrency,
            self.circuit_breaker,
            self.quarantine,
            self.retry_budget,
        )
        if all(a is None for a in actions):
            problems.append(
                (
                    (),
                    "set at least one of rate, concurrency, circuitBreaker, quarantine "
                    "or retryBudget",
                )
            )
        if not self.from_.labels() and not self.to.labels():
            problems.append(
                (
                    ("from", "selector"),
                    "from and to both take every workload of their namespaces: give at least "
                    "one side a selector (a control over whole namespaces governs every call "
                    "between them)",
                )
            )
        if self.ttl is not None and parse_duration(self.ttl) == 0:
            problems.append((("ttl",), "must be longer than 0s"))
        raise_problems(problems)
        return self


class TrafficControl(Model):
    api_version: Literal["gossamer.dev/v1alpha1"] = API_VERSION
    kind: Literal["TrafficControl"] = "TrafficControl"
    metadata: ObjectMeta
    spec: TrafficControlSpec
