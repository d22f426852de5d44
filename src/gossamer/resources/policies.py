"""The `gossamer.dev/v1alpha1` traffic policies: what the Gateway API leaves to meshes.

    RetryPolicy           when to send a request again, how often, and a retry budget
    OutlierPolicy         eject an endpoint that keeps failing, let it back in later
    CircuitBreakerPolicy  per-service limits on connections, pending and active requests
    FaultPolicy           delay or abort a share of requests (testing resilience)

Each attaches to Services the Gateway API's way (GEP-713 direct policy attachment):
`spec.targetRefs: [{group: "", kind: Service, name: echo}]`, in the Service's own
namespace, and applies to every client's calls to that Service. The fields follow
Istio's DestinationRule/VirtualService and Envoy, whose users know them; durations
are Gateway API durations (`500ms`, `10s`, `1m`).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from gossamer.resources._base import Between, Loc, Model, each, first_seen, raise_problems
from gossamer.resources.httproute import Duration, parse_duration
from gossamer.resources.meta import ObjectMeta

__all__ = [
    "POLICY_KINDS",
    "CircuitBreakerPolicy",
    "FaultPolicy",
    "OutlierPolicy",
    "PolicyTargetReference",
    "RetryPolicy",
]

API_VERSION: Final = "gossamer.dev/v1alpha1"


class PolicyTargetReference(Model):
    """A Service in the policy's own namespace (GEP-713's LocalPolicyTargetReference)."""

    group: Literal[""] = ""
    kind: Literal["Service"] = "Service"
    name: Annotated[str, Field(min_length=1, max_length=253)]


def _target_problems(refs: list[PolicyTargetReference]) -> list[tuple[Loc, str]]:
    return [
        ((i, "name"), f'duplicate target "{refs[i].name}" (targetRefs[{j}])')
        for i, j in first_seen([r.name for r in refs])
    ]


TargetRefs = Annotated[list[PolicyTargetReference], each(_target_problems)]


def _positive(field: str, value: str | None) -> list[tuple[Loc, str]]:
    if value is not None and parse_duration(value) == 0:
        return [((field,), "must be longer than 0s")]
    return []


# --- RetryPolicy ----------------------------------------------------------------------

RetryOn = Literal["5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes"]


class RetryBackoff(Model):
    """Exponential backoff with full jitter between tries (Envoy's defaults)."""

    base_interval: Duration = "25ms"
    max_interval: Duration | None = None
    """Defaults to ten times baseInterval."""

    @model_validator(mode="after")
    def _order(self) -> RetryBackoff:
        found = _positive("baseInterval", self.base_interval)
        if self.max_interval is not None and parse_duration(self.max_interval) < parse_duration(
            self.base_interval
        ):
            found.append((("maxInterval",), "must not be shorter than baseInterval"))
        raise_problems(found)
        return self


class RetryBudget(Model):
    """Retries may add at most `percent` to the requests of the last `ttl`, plus a floor of
    `minRetriesPerSecond`, so a failing service is not flooded (Finagle, Linkerd)."""

    percent: Annotated[int, Between(0, 100)] = 20
    min_retries_per_second: Annotated[int, Between(0, 10_000)] = 10
    ttl: Duration = "10s"

    @model_validator(mode="after")
    def _ttl(self) -> RetryBudget:
        raise_problems(_positive("ttl", self.ttl))
        return self


def _code_problems(codes: list[int]) -> list[tuple[Loc, str]]:
    return [((i,), f"duplicate code {codes[i]} (codes[{j}])") for i, j in first_seen(codes)]


def _default_retry_on() -> list[RetryOn]:
    return ["connect-failure", "reset", "gateway-error"]


class RetryPolicySpec(Model):
    target_refs: TargetRefs = Field(min_length=1, max_length=16)
    attempts: Annotated[int, Between(1, 10)] = 2
    """Retries after the first try."""
    retry_on: list[RetryOn] = Field(default_factory=_default_retry_on, max_length=5)
    codes: Annotated[list[Annotated[int, Between(400, 599)]], each(_code_problems)] = Field(
        default_factory=list, max_length=32
    )
    """Status codes to retry (with `retriable-status-codes`, or on their own)."""
    per_try_timeout: Duration | None = None
    backoff: RetryBackoff = Field(default_factory=RetryBackoff)
    budget: RetryBudget = Field(default_factory=RetryBudget)

    @model_validator(mode="after")
    def _check(self) -> RetryPolicySpec:
        found = _positive("perTryTimeout", self.per_try_timeout)
        if "retriable-status-codes" in self.retry_on and not self.codes:
            found.append((("codes",), "required when retryOn has retriable-status-codes"))
        raise_problems(found)
        return self


class RetryPolicy(Model):
    api_version: Literal["gossamer.dev/v1alpha1"] = API_VERSION
    kind: Literal["RetryPolicy"] = "RetryPolicy"
    metadata: ObjectMeta
    spec: RetryPolicySpec


# --- OutlierPolicy --------------------------------------------------------------------


class FailureRate(Model):
    percent: Annotated[int, Between(1, 100)]
    minimum_requests: Annotated[int, Between(1, 1_000_000)] = 20


class OutlierPolicySpec(Model):
    """An endpoint is ejected after `consecutiveFailures` failed requests in a row (a 5xx,
    a reset, a refused connection), or when its failure rate over `interval` reaches
    `failureRate.percent`. Each ejection lasts `baseEjectionTime` times the number of
    times it has been ejected, at most `maxEjectionTime`; never more than
    `maxEjectedPercent` of a service's endpoints are out at once (but always one may be)."""

    target_refs: TargetRefs = Field(min_length=1, max_length=16)
    consecutive_failures: Annotated[int, Between(1, 1_000_000)] | None = 5
    failure_rate: FailureRate | None = None
    interval: Duration = "10s"
    base_ejection_time: Duration = "30s"
    max_ejection_time: Duration = "300s"
    max_ejected_percent: Annotated[int, Between(0, 100)] = 50

    @model_validator(mode="after")
    def _check(self) -> OutlierPolicySpec:
        found = _positive("interval", self.interval) + _positive(
            "baseEjectionTime", self.base_ejection_time
        )
        if parse_duration(self.max_ejection_time) < parse_duration(self.base_ejection_time):
            found.append((("maxEjectionTime",), "must not be shorter than baseEjectionTime"))
        raise_problems(found)
        return self


class OutlierPolicy(Model):
    api_version: Literal["gossamer.dev/v1alpha1"] = API_VERSION
    kind: Literal["OutlierPolicy"] = "OutlierPolicy"
    metadata: ObjectMeta
    spec: OutlierPolicySpec


# --- CircuitBreakerPolicy -------------------------------------------------------------

Limit = Annotated[int, Between(1, 1_000_000)]


class CircuitBreakerPolicySpec(Model):
    """Limits per client proxy on calls to the service; a request over a limit gets a 503
    with `gossamer-error` saying which."""

    target_refs: TargetRefs = Field(min_length=1, max_length=16)
    max_connections: Limit | None = None
    """Connections open to the service's endpoints."""
    max_pending_requests: Limit | None = None
    """Requests waiting for a connection to be opened."""
    max_requests: Limit | None = None
    """Requests in flight."""

    @model_validator(mode="after")
    def _one_limit(self) -> CircuitBreakerPolicySpec:
        if (self.max_connections, self.max_pending_requests, self.max_requests) == (
            None,
            None,
            None,
        ):
            raise_problems(
                [((), "set at least one of maxConnections, maxPendingRequests, maxRequests")]
            )
        return self


class CircuitBreakerPolicy(Model):
    api_version: Literal["gossamer.dev/v1alpha1"] = API_VERSION
    kind: Literal["CircuitBreakerPolicy"] = "CircuitBreakerPolicy"
    metadata: ObjectMeta
    spec: CircuitBreakerPolicySpec


# --- FaultPolicy ----------------------------------------------------------------------

Percent = Annotated[float, Field(ge=0, le=100)]


class FaultDelay(Model):
    fixed_delay: Duration
    percent: Percent = 100.0


class FaultAbort(Model):
    http_status: Annotated[int, Between(200, 599)]
    percent: Percent = 100.0


class FaultPolicySpec(Model):
    target_refs: TargetRefs = Field(min_length=1, max_length=16)
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @model_validator(mode="after")
    def _one_fault(self) -> FaultPolicySpec:
        if self.delay is None and self.abort is None:
            raise_problems([((), "set delay, abort or both")])
        return self


class FaultPolicy(Model):
    api_version: Literal["gossamer.dev/v1alpha1"] = API_VERSION
    kind: Literal["FaultPolicy"] = "FaultPolicy"
    metadata: ObjectMeta
    spec: FaultPolicySpec


POLICY_KINDS = {
    "RetryPolicy": RetryPolicy,
    "OutlierPolicy": OutlierPolicy,
    "CircuitBreakerPolicy": CircuitBreakerPolicy,
    "FaultPolicy": FaultPolicy,
}
"""Every policy kind, by its `kind` name."""
