"""Decisions of one call, without a socket (Istio's "simulation" style): given the mesh's
objects, which backend and which policies a request gets, and what each try's outcome
leads to. Objects → snapshot (the control plane's pure build) → the proxy's route
table → `proxy.policy.Call`, exactly as a proxy uses them for every protocol."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.policy import Answer, Call, Routed, failed
from gossamer.proxy.policy.balancer import EndpointLoad
from gossamer.proxy.policy.routing import Route, RouteTable
from gossamer.translate import MeshView, ProxyInfo, build_snapshot
from gossamer.translate.snapshot import Endpoint
from tests.translate.test_routes import BUNDLE, backend, route, service, workload

GATEWAY_ERRORS = {"attempts": 2, "retryOn": ["gateway-error"]}


def policy(kind: str, spec: dict[str, Any], target: str = "echo") -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": f"{kind.lower()}-{target}", "namespace": "shop"},
        "spec": {"targetRefs": [{"kind": "Service", "name": target}], **spec},
    }


def table(*objects: dict[str, Any]) -> RouteTable[Endpoint]:
    mesh = MeshView.from_objects(
        [
            service("echo"),
            service("echo-v2"),
            service("web"),
            workload("web-1", "shop", "web"),
            workload("echo-1", "shop", "echo"),
            workload("echo-2", "shop", "echo"),
            workload("echo-v2-1", "shop", "echo-v2"),
            *objects,
        ],
        trust_domain="cluster.local",
        trust_bundle=BUNDLE,
    )
    info = ProxyInfo("web-1", "shop", frozenset({"echo.shop", "echo-v2.shop"}))
    snapshot = build_snapshot(mesh, info)
    return RouteTable(snapshot, "cluster.local", Metrics(), lambda e: (e, EndpointLoad()))


def echo(t: RouteTable[Endpoint]) -> Route[Endpoint]:
    found = t.lookup_host(b"echo.shop")
    assert isinstance(found, Route), found
    return found


def admitted(t: RouteTable[Endpoint], method: bytes = b"GET", path: bytes = b"/") -> Call[Endpoint]:
    """A call routed and admitted, as a side does it."""
    call: Call[Endpoint] = Call(echo(t), method)
    routed = call.apply_routes(method, path, b"echo.shop", [])
    target, rule_retry = call.route, None
    if isinstance(routed, Routed):
        assert routed.target is not None
        target, rule_retry = routed.target, routed.rule.retry
    assert not isinstance(routed, Answer), routed
    assert call.admit(target, rule_retry, now=0.0) is None
    return call


def test_a_service_with_no_route_or_policy_is_not_managed() -> None:
    assert not echo(table()).managed


def test_a_header_match_sends_the_call_to_the_canary_and_names_the_route() -> None:
    t = table(
        route("canary", rules=[
            {"matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
             "backendRefs": [backend("echo-v2")]},
            {"backendRefs": [backend("echo")]},
        ])
    )  # fmt: skip
    call: Call[Endpoint] = Call(echo(t), b"GET")
    routed = call.apply_routes(b"GET", b"/", b"echo.shop", [(b"x-canary", b"1")])
    assert isinstance(routed, Routed) and routed.target is not None
    assert routed.target.name == "echo-v2"
    assert call.via == "shop/canary"
    other: Call[Endpoint] = Call(echo(t), b"GET")
    routed = other.apply_routes(b"GET", b"/", b"echo.shop", [])
    assert isinstance(routed, Routed) and routed.target is not None
    assert routed.target.name == "echo"


@pytest.mark.parametrize(
    ("rules", "status", "reason"),
    [
        ([{"matches": [{"path": {"type": "Exact", "value": "/only"}}],
           "backendRefs": [backend("echo")]}], 404, "no rule of the HTTPRoutes"),
        ([{"backendRefs": [backend("echo", weight=0)]}], 500, "every backendRef has weight 0"),
    ],
    ids=["no rule matches", "every backend weighs 0"],
)  # fmt: skip
def test_a_call_no_rule_can_serve_is_answered_by_the_proxy(
    rules: list[dict[str, Any]], status: int, reason: str
) -> None:
    call: Call[Endpoint] = Call(echo(table(route("r", rules=rules))), b"GET")
    answer = call.apply_routes(b"GET", b"/", b"echo.shop", [])
    assert isinstance(answer, Answer)
    assert answer.status == status and reason in answer.reason


def test_a_redirect_rule_has_no_backend_for_the_side_to_send_to() -> None:
    rules = [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301,
              "hostname": "elsewhere"}}]}]  # fmt: skip
    call: Call[Endpoint] = Call(echo(table(route("r", rules=rules))), b"GET")
    routed = call.apply_routes(b"GET", b"/", b"echo.shop", [])
    assert isinstance(routed, Routed) and routed.backend is None and routed.target is None


def test_a_fault_abort_answers_and_a_delay_waits() -> None:
    t = table(policy("FaultPolicy", {"abort": {"httpStatus": 503, "percent": 100}}))
    answer = Call(echo(t), b"GET").fault(rng=lambda: 0.0)
    assert isinstance(answer, Answer) and answer.status == 503
    assert "fault injected" in answer.reason
    t = table(policy("FaultPolicy", {"delay": {"fixedDelay": "2s", "percent": 50}}))
    assert Call(echo(t), b"GET").fault(rng=lambda: 0.1) == 2.0
    assert Call(echo(t), b"GET").fault(rng=lambda: 0.9) is None


def test_the_circuit_breaker_refuses_a_call_over_max_requests_until_one_finishes() -> None:
    t = table(policy("CircuitBreakerPolicy", {"maxRequests": 1}))
    first = admitted(t)
    second: Call[Endpoint] = Call(echo(t), b"GET")
    refused = second.admit(echo(t), None, now=0.0)
    assert isinstance(refused, Answer) and refused.status == 503
    assert "maxRequests 1" in refused.reason
    first.finish()
    first.finish()  # once is what counts
    assert Call(echo(t), b"GET").admit(echo(t), None, now=0.0) is None


def test_a_rules_retry_wins_over_the_services_policy_and_sets_the_per_try_timeout() -> None:
    t = table(
        policy("RetryPolicy", {"attempts": 5, "perTryTimeout": "3s"}),
        route("r", rules=[{"backendRefs": [backend("echo")],
                           "retry": {"attempts": 2, "codes": [503]},
                           "timeouts": {"request": "10s"}}]),
    )  # fmt: skip
    call = admitted(t)
    assert call.retry is not None and call.retry.attempts == 2
    assert call.timeout == 10.0
    assert call.retries_status(503) and not call.retries_status(500)


@pytest.mark.parametrize(
    ("method", "whole", "tries"),
    [(b"GET", True, 2), (b"PUT", True, 2), (b"POST", True, 0), (b"GET", False, 0)],
    ids=["a GET", "a PUT", "a POST is never sent again", "a request not held whole"],
)
def test_a_call_is_tried_again_up_to_the_attempts_only_when_replayable_and_whole(
    method: bytes, whole: bool, tries: int
) -> None:
    call = admitted(table(policy("RetryPolicy", GATEWAY_ERRORS)), method)
    again = 0
    while call.try_again(whole, now=0.0) is not None:
        again += 1
        assert again <= 5
    assert again == tries == call.retries


def test_the_budget_caps_retries_at_its_share_of_calls() -> None:
    budget = {"percent": 20, "minRetriesPerSecond": 0}
    t = table(policy("RetryPolicy", {**GATEWAY_ERRORS, "attempts": 3, "budget": budget}))
    retried = 0
    for _ in range(100):
        call = admitted(t)
        while call.try_again(True, now=0.0) is not None:
            retried += 1
    assert retried == 20


@pytest.mark.parametrize(
    ("retry_on", "again"),
    [(None, [True, True, False]), (["gateway-error"], [False]),
     (["connect-failure"], [True, True, False]), (["5xx"], [True, True, False])],
    ids=["no retry policy: the proxy tries up to 3 endpoints",
         "retryOn without connect-failure: not retried",
         "retryOn connect-failure: within the attempts",
         "retryOn 5xx covers connect failures"],
)  # fmt: skip
def test_a_connect_failure_is_retried_as_retry_on_says(
    retry_on: list[str] | None, again: list[bool]
) -> None:
    objects = [] if retry_on is None else [
        policy("RetryPolicy", {"attempts": 2, "retryOn": retry_on})]  # fmt: skip
    call = admitted(table(*objects))
    seen = []
    for _ in range(len(again)):
        call.connects += 1  # the side picked an endpoint, and it could not connect
        seen.append(call.connect_failed(endpoints=5, now=0.0))
    assert seen == again


def test_a_reset_is_retried_only_when_retry_on_says_so() -> None:
    assert admitted(table(policy("RetryPolicy", {"retryOn": ["reset"]}))).retries_reset()
    assert not admitted(table(policy("RetryPolicy", GATEWAY_ERRORS))).retries_reset()


def test_grpc_unavailable_counts_as_503_for_retries_and_outlier_detection() -> None:
    call = admitted(table(policy("RetryPolicy", {"codes": [503]})))
    assert call.retries_status(200, b"14")
    assert not call.retries_status(200, b"13")
    assert failed(200, b"14") and failed(502) and not failed(200, b"0") and not failed(404)


def test_outlier_detection_ejects_after_consecutive_failures() -> None:
    t = table(policy("OutlierPolicy", {"consecutiveFailures": 2, "baseEjectionTime": "30s"}))
    call = admitted(t)
    load = echo(t).balancer.loads[0]
    call.outcome(load, failed=True, now=0.0)
    assert load.ejected_until <= 0.0
    call.outcome(load, failed=True, now=0.0)
    assert load.ejected_until == 30.0


def test_a_call_is_counted_in_the_matched_routes_cell() -> None:
    t = table(route("r", rules=[{"backendRefs": [backend("echo")]}]))
    call = admitted(t)
    assert call.stats(200) is echo(t).stats_for(200, "shop/r")
    assert call.stats(200, b"0") is echo(t).grpc_stats_for(200, b"0", "shop/r")


def test_weighted_backends_are_drawn_by_weight() -> None:
    t = table(route("split", rules=[{"backendRefs": [backend("echo", 3), backend("echo-v2", 1)]}]))
    router = echo(t).router
    assert router is not None
    for rule in router.rules:
        rule.rng = random.Random(7)
    names = []
    for _ in range(400):
        routed = Call(echo(t), b"GET").apply_routes(b"GET", b"/", b"echo.shop", [])
        assert isinstance(routed, Routed) and routed.target is not None
        names.append(routed.target.name)
    assert 250 <= names.count("echo") <= 350
