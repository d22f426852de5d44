"""The gossamer.dev traffic policies: defaults, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from gossamer.errors import InvalidResource
from gossamer.resources import resolve_kind, to_dict, validate


def policy(kind: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}], **spec},
    }


def test_a_retry_policy_gets_envoys_defaults() -> None:
    spec = to_dict(validate(policy("RetryPolicy")))["spec"]
    assert spec["attempts"] == 2
    assert spec["retryOn"] == ["connect-failure", "reset", "gateway-error"]
    assert spec["budget"] == {"percent": 20, "minRetriesPerSecond": 10, "ttl": "10s"}


BAD = [
    (policy("RetryPolicy", attempts=0), "spec.attempts", "must be 1-10"),
    (policy("RetryPolicy", retryOn=["sometimes"]), "spec.retryOn[0]", ""),
    (policy("RetryPolicy", retryOn=["retriable-status-codes"]), "spec.codes", "required"),
    (policy("RetryPolicy", perTryTimeout="1.5s"), "spec.perTryTimeout", "duration"),
    (policy("RetryPolicy", backoff={"baseInterval": "1s", "maxInterval": "10ms"}),
     "spec.backoff.maxInterval", "must not be shorter"),
    (policy("OutlierPolicy", maxEjectedPercent=101), "spec.maxEjectedPercent", "0-100"),
    (policy("OutlierPolicy", baseEjectionTime="0s"), "spec.baseEjectionTime", "longer than 0s"),
    (policy("CircuitBreakerPolicy"), "spec", "at least one"),
    (policy("FaultPolicy"), "spec", "delay, abort or both"),
    (policy("FaultPolicy", abort={"httpStatus": 99}), "spec.abort.httpStatus", "200-599"),
    ({**policy("FaultPolicy", abort={"httpStatus": 503}), "spec": {"abort": {"httpStatus": 503}}},
     "spec.targetRefs", "required"),
    (policy("RetryPolicy", targetRefs=[{"kind": "Deployment", "name": "x"}]),
     "spec.targetRefs[0].kind", ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("obj", "path", "reason"),
    BAD,
    ids=[f"{o['kind']} {p} is refused" + (f" ({r})" if r else "") for o, p, r in BAD],
)
def test_a_malformed_policy_is_refused_with_the_field_path(
    obj: dict[str, Any], path: str, reason: str
) -> None:
    with pytest.raises(InvalidResource) as err:
        validate(obj)
    found = {e.path: e.reason for e in err.value.errors}
    assert path in found, found
    assert reason in found[path]


def test_policy_kinds_have_plural_names_for_the_cli() -> None:
    assert resolve_kind("retrypolicies").kind == "RetryPolicy"
    assert resolve_kind("outlierpolicy").kind == "OutlierPolicy"
    assert resolve_kind("circuitbreakerpolicies.gossamer.dev").kind == "CircuitBreakerPolicy"
    assert resolve_kind("FaultPolicy").kind == "FaultPolicy"
