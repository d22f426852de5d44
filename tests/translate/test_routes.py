"""HTTPRoutes (GAMMA) and traffic policies in snapshots: attachment, precedence, status."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from gossamer.resources import HTTPRoute, to_dict, validate
from gossamer.translate import InconsistentSnapshot, MeshView, ProxyInfo, build_snapshot
from gossamer.translate.build import check_consistent
from gossamer.translate.routes import route_conditions
from gossamer.translate.snapshot import Snapshot

BUNDLE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def service(name: str, ns: str = "shop", ports: tuple[int, ...] = (80,)) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": f"p{p}", "port": p, "targetPort": 8080} for p in ports],
        },
    }


def workload(name: str, ns: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"address": "127.0.0.1", "inboundPort": 4143, "serviceAccount": app,
                 "ports": [{"name": "http", "port": 8080}]},
    }  # fmt: skip


def route(
    name: str,
    ns: str = "shop",
    *,
    parent: str = "echo",
    parent_ns: str | None = None,
    rules: list[dict[str, Any]] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    port: int | None = None,
) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": parent}
    if parent_ns:
        ref["namespace"] = parent_ns
    if port:
        ref["port"] = port
    obj = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"parentRefs": [ref], "rules": rules or [{"backendRefs": [backend("echo")]}]},
    }
    stored = to_dict(validate(obj))
    stored["metadata"]["creationTimestamp"] = created
    stored["metadata"]["generation"] = 1
    return stored


def backend(name: str, weight: int = 1, ns: str | None = None, port: int = 80) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "port": port, "weight": weight}
    if ns:
        ref["namespace"] = ns
    return ref


BASE = [
    service("echo"),
    service("echo-v2"),
    service("web"),
    workload("web-1", "shop", "web"),
    workload("other-1", "other", "web"),
]


def snapshot_for(objects: list[dict[str, Any]], ns: str = "shop", wl: str = "web-1") -> Snapshot:
    mesh = MeshView.from_objects(objects, trust_domain="cluster.local", trust_bundle=BUNDLE)
    return build_snapshot(mesh, ProxyInfo(wl, ns, frozenset({"echo.shop"})))


def test_a_service_without_routes_has_none_in_the_snapshot() -> None:
    snap = snapshot_for(BASE)
    assert snap.routes == ()
    assert [s.key for s in snap.services] == ["echo.shop"]


def test_a_routes_backends_come_along_in_the_snapshot() -> None:
    r = route("split", rules=[{"backendRefs": [backend("echo", 90), backend("echo-v2", 10)]}])
    snap = snapshot_for([*BASE, r])
    assert [s.key for s in snap.services] == ["echo.shop", "echo-v2.shop"]
    assert snap.route_services == ("echo-v2.shop",)
    [sr] = snap.routes
    assert (sr.service, sr.port, sr.routes) == ("echo.shop", 80, ("shop/split",))
    assert [(b.service, b.weight) for b in sr.rules[0].backends] == [
        ("echo.shop", 90),
        ("echo-v2.shop", 10),
    ]
    # It survives the trip to the proxy (JSON, and the on-disk cache).
    assert Snapshot.from_json(snap.to_json()) == snap


def test_a_missing_backend_is_marked_failing_not_dropped() -> None:
    r = route("r", rules=[{"backendRefs": [backend("echo", 1), backend("nope", 1)]}])
    snap = snapshot_for([*BASE, r])
    errors = [b.error for b in snap.routes[0].rules[0].backends]
    assert errors == [None, "backend Service shop/nope does not exist"]
    check_consistent(snap)


def test_a_snapshot_whose_route_names_an_absent_service_is_refused() -> None:
    r = route("split", rules=[{"backendRefs": [backend("echo-v2")]}])
    snap = snapshot_for([*BASE, r])
    from dataclasses import replace

    from gossamer.translate.snapshot import content_version

    broken = replace(snap, services=snap.services[:1], route_services=())
    broken = replace(broken, version=content_version(broken))
    with pytest.raises(InconsistentSnapshot, match=r"echo-v2\.shop:80, which is not in"):
        check_consistent(broken)


# Precedence across rules and routes, each case: (rules of route "a", rules of route
# "b" or None, expected order of (route, rule index, match index)).
def m(path: str = "/", kind: str = "PathPrefix", **extra: Any) -> dict[str, Any]:
    return {"path": {"type": kind, "value": path}, **extra}


PRECEDENCE = [
    (
        "an Exact path beats any prefix",
        [{"matches": [m("/v1/items")]}, {"matches": [m("/v1", "Exact")]}],
        [(1, 0), (0, 0)],
    ),
    (
        "the longer prefix wins",
        [{"matches": [m("/")]}, {"matches": [m("/v1")]}, {"matches": [m("/v1/items")]}],
        [(2, 0), (1, 0), (0, 0)],
    ),
    (
        "a method match beats none on the same path",
        [{"matches": [m("/v1")]}, {"matches": [m("/v1", method="GET")]}],
        [(1, 0), (0, 0)],
    ),
    (
        "more header matches win",
        [
            {"matches": [m("/v1", headers=[{"name": "a", "value": "1"}])]},
            {
                "matches": [
                    m("/v1", headers=[{"name": "a", "value": "1"}, {"name": "b", "value": "2"}])
                ]
            },
        ],
        [(1, 0), (0, 0)],
    ),
    (
        "more query matches win after headers",
        [
            {"matches": [m("/v1", queryParams=[{"name": "q", "value": "1"}])]},
            {"matches": [m("/v1", headers=[{"name": "a", "value": "1"}])]},
        ],
        [(1, 0), (0, 0)],
    ),
    (
        "ties go to the first rule, then the first match",
        [{"matches": [m("/a"), m("/b")]}, {"matches": [m("/a")]}],
        [(0, 0), (0, 1), (1, 0)],
    ),
]


@pytest.mark.parametrize(
    ("rules", "order"), [(r, o) for _, r, o in PRECEDENCE], ids=[i for i, _, _ in PRECEDENCE]
)
def test_matches_are_ordered_by_the_specs_precedence(
    rules: list[dict[str, Any]], order: list[tuple[int, int]]
) -> None:
    for rule in rules:
        rule["backendRefs"] = [backend("echo")]
    snap = snapshot_for([*BASE, route("a", rules=rules)])
    sr = snap.routes[0]
    assert [(sr.rules[x.rule].index, x.index) for x in sr.matches] == order


def test_between_routes_the_oldest_then_the_first_by_name_wins() -> None:
    same = [{"matches": [m("/v1")], "backendRefs": [backend("echo")]}]
    objects = [
        *BASE,
        route("zeta", rules=same, created="2026-01-01T00:00:00Z"),
        route("beta", rules=same, created="2026-01-02T00:00:00Z"),
        route("alpha", rules=same, created="2026-01-02T00:00:00Z"),
    ]
    sr = snapshot_for(objects).routes[0]
    assert [sr.rules[x.rule].route for x in sr.matches] == ["shop/zeta", "shop/alpha", "shop/beta"]
    mesh = MeshView.from_objects(objects, trust_domain="td", trust_bundle=BUNDLE)
    [beta] = [r for r in mesh.routes if r.metadata.name == "beta"]
    [(accepted, _)] = [p.conditions for p in route_conditions(beta, mesh)]
    assert accepted.status == "True"
    assert "older route shop/zeta, which takes precedence" in accepted.message


def test_producer_routes_apply_to_every_client_and_consumer_routes_to_their_namespace() -> None:
    producer = route("producer", rules=[{"backendRefs": [backend("echo")]}])
    consumer = route(
        "consumer",
        "other",
        parent_ns="shop",
        rules=[{"backendRefs": [backend("echo-v2", ns="shop")]}],
    )
    objects = [*BASE, producer, consumer]
    assert snapshot_for(objects).routes[0].routes == ("shop/producer",)
    theirs = snapshot_for(objects, ns="other", wl="other-1").routes[0]
    assert theirs.routes == ("other/consumer",)
    assert theirs.rules[0].backends[0].service == "echo-v2.shop"


def test_a_parent_ref_port_attaches_the_route_to_that_port_only() -> None:
    objects = [
        service("echo", ports=(80, 9000)),
        service("echo-v2", ports=(80, 9000)),
        workload("web-1", "shop", "web"),
        route("admin", port=9000, rules=[{"backendRefs": [backend("echo-v2", port=9000)]}]),
    ]
    snap = snapshot_for(objects)
    assert [(sr.service, sr.port) for sr in snap.routes] == [("echo.shop", 9000)]


def conditions(obj: dict[str, Any], objects: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    mesh = MeshView.from_objects(objects, trust_domain="td", trust_bundle=BUNDLE)
    typed = validate(obj)
    assert isinstance(typed, HTTPRoute)
    return [
        (c.type, c.status, c.reason) for p in route_conditions(typed, mesh) for c in p.conditions
    ]


def test_status_says_accepted_and_resolved_when_all_is_well() -> None:
    r = route("ok")
    assert conditions(r, [*BASE, r]) == [
        ("Accepted", "True", "Accepted"),
        ("ResolvedRefs", "True", "ResolvedRefs"),
    ]


def test_status_names_a_missing_parent_and_a_missing_backend() -> None:
    r = route("bad", parent="ghost", rules=[{"backendRefs": [backend("nope")]}])
    assert conditions(r, [*BASE, r]) == [
        ("Accepted", "False", "NoMatchingParent"),
        ("ResolvedRefs", "False", "BackendNotFound"),
    ]
    # A route whose parent does not exist changes nobody's routing.
    assert snapshot_for([*BASE, r]).routes == ()


def test_status_names_a_parent_port_the_service_does_not_have() -> None:
    r = route("bad-port", port=81)
    assert conditions(r, [*BASE, r])[0] == ("Accepted", "False", "NoMatchingParent")


def test_a_gateway_parent_is_not_the_meshs_to_report_on() -> None:
    obj = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "ingress", "namespace": "shop"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [backend("echo")]}]},
    }
    r = to_dict(validate(obj))
    assert conditions(r, [*BASE, r]) == []
    assert snapshot_for([*BASE, r]).routes == ()


def policy(kind: str, spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    obj = {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}], **spec},
    }
    return to_dict(validate(obj))


def test_policies_for_a_service_reach_its_clients_in_seconds() -> None:
    objects = [
        *BASE,
        policy("RetryPolicy", {"attempts": 3, "retryOn": ["5xx"], "perTryTimeout": "250ms"}),
        policy("OutlierPolicy", {"consecutiveFailures": 2, "baseEjectionTime": "1s"}),
        policy("CircuitBreakerPolicy", {"maxRequests": 10}),
        policy("FaultPolicy", {"abort": {"httpStatus": 503, "percent": 5}}),
    ]
    [p] = snapshot_for(objects).policies
    assert p.service == "echo.shop"
    assert p.retry is not None and (p.retry.attempts, p.retry.per_try_timeout) == (3, 0.25)
    assert p.outlier is not None and p.outlier.base_ejection_time == 1.0
    assert p.limits is not None and p.limits.max_requests == 10
    assert p.fault is not None and (p.fault.abort_status, p.fault.abort_percent) == (503, 5.0)


def test_a_rule_retry_is_merged_over_the_services_retry_policy() -> None:
    r = route(
        "r", rules=[{"backendRefs": [backend("echo")], "retry": {"codes": [503], "attempts": 4}}]
    )
    objects = [*BASE, r, policy("RetryPolicy", {"budget": {"percent": 50}})]
    retry = snapshot_for(objects).routes[0].rules[0].retry
    assert retry is not None
    assert (retry.attempts, retry.codes, retry.budget_ratio) == (4, (503,), 0.5)


def test_a_snapshot_with_routes_and_policies_matches_golden(
    golden: Callable[[str, str], None],
) -> None:
    r = route(
        "canary",
        rules=[
            {
                "name": "canary",
                "matches": [m("/v1", headers=[{"name": "X-Canary", "value": "1"}])],
                "backendRefs": [backend("echo-v2")],
            },
            {
                "matches": [m("/v1")],
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"set": [{"name": "x-env", "value": "prod"}]},
                    }
                ],
                "backendRefs": [backend("echo", 90), backend("echo-v2", 10)],
                "timeouts": {"request": "2s", "backendRequest": "500ms"},
            },
        ],
    )
    objects = [*BASE, r, policy("OutlierPolicy", {"consecutiveFailures": 3})]
    golden(
        "snapshots/web-1-routes.json",
        json.dumps(snapshot_for(objects).to_dict(), indent=2, sort_keys=True) + "\n",
    )


def test_a_route_with_an_unsupported_filter_is_not_accepted() -> None:
    r = route(
        "cors",
        rules=[
            {
                "filters": [{"type": "CORS", "cors": {"allowOrigins": ["*"]}}],
                "backendRefs": [backend("echo")],
            }
        ],
    )
    assert conditions(r, [*BASE, r])[0] == ("Accepted", "False", "UnsupportedValue")
    assert snapshot_for([*BASE, r]).routes == ()
