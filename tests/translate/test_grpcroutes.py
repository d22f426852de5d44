"""GRPCRoute for the mesh: validation, compilation to HTTP routes, precedence, status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.translate.test_routes import BASE, BUNDLE, backend, route

from gossamer.controlplane.routestatus import RouteStatusReconciler
from gossamer.errors import InvalidResource
from gossamer.resources import to_dict, validate
from gossamer.resources.grpcroute import GRPCRoute
from gossamer.store import open_store
from gossamer.translate import MeshView, ProxyInfo, build_snapshot
from gossamer.translate.grpcroutes import compile_grpcroute
from gossamer.translate.routetypes import ServiceRoutes

SVC = "shop.v1.Cart"


def grpcroute(
    name: str,
    rules: list[dict[str, Any]],
    created: str = "2026-01-01T00:00:00Z",
    parent: str = "echo",
) -> dict[str, Any]:
    obj = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent}], "rules": rules},
    }
    stored = to_dict(validate(obj))
    stored["metadata"]["creationTimestamp"] = created
    stored["metadata"]["generation"] = 1
    return stored


def method(service: str | None = None, name: str | None = None, kind: str = "Exact") -> Any:
    m: dict[str, Any] = {"type": kind}
    if service is not None:
        m["service"] = service
    if name is not None:
        m["method"] = name
    return {"method": m}


def routes_of(objects: list[dict[str, Any]]) -> ServiceRoutes:
    mesh = MeshView.from_objects(objects, trust_domain="cluster.local", trust_bundle=BUNDLE)
    snapshot = build_snapshot(mesh, ProxyInfo("web-1", "shop", frozenset({"echo.shop"})))
    [sr] = snapshot.routes
    return sr


@pytest.mark.parametrize(
    ("match", "field"),
    [
        ({"method": {}}, "spec.rules[0].matches[0].method"),
        ({"method": {"service": "bad/name"}}, "spec.rules[0].matches[0].method.service"),
        ({"method": {"method": "Get.It"}}, "spec.rules[0].matches[0].method.method"),
        (
            {"method": {"type": "RegularExpression", "method": "("}},
            "spec.rules[0].matches[0].method.method",
        ),
    ],
    ids=[
        "a method match names a service or a method",
        "an exact service is a protobuf name",
        "an exact method is an identifier",
        "a regular expression must compile",
    ],
)
def test_an_invalid_method_match_is_refused_naming_the_field(
    match: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidResource) as e:
        grpcroute("bad", [{"matches": [match], "backendRefs": [backend("echo")]}])
    assert field in [err.path for err in e.value.errors]


def test_a_grpcroute_round_trips_through_validation() -> None:
    obj = grpcroute("r", [{"matches": [method(SVC, "Get")], "backendRefs": [backend("echo")]}])
    typed = validate(obj)
    assert isinstance(typed, GRPCRoute)
    assert to_dict(typed) == obj


@pytest.mark.parametrize(
    ("match", "path_type", "path"),
    [
        (method(SVC, "Get"), "Exact", f"/{SVC}/Get"),
        (method(SVC), "RegularExpression", r"/shop\.v1\.Cart/[^/]+"),
        (method(name="Get"), "RegularExpression", "/[^/]+/Get"),
        (method("shop\\..*", "Get|Put", "RegularExpression"), "RegularExpression",
         r"/(?:shop\..*)/(?:Get|Put)"),
        ({}, "PathPrefix", "/"),
    ],
    ids=[
        "an exact service and method is an exact path",
        "a service alone is any method of it",
        "a method alone is that method of any service",
        "regular expressions are grouped into one path expression",
        "no method match is every call",
    ],
)  # fmt: skip
def test_a_grpc_match_compiles_to_a_post_to_its_method_path(
    match: dict[str, Any], path_type: str, path: str
) -> None:
    sr = routes_of(
        [*BASE, grpcroute("r", [{"matches": [match], "backendRefs": [backend("echo")]}])]
    )
    [m] = sr.matches
    assert (m.method, m.path_type, m.path) == ("POST", path_type, path)


def test_grpc_matches_rank_by_service_then_method_then_headers() -> None:
    header = [{"name": "x-tier", "value": "gold"}]
    rules = [
        {"matches": [method(name="Get")], "backendRefs": [backend("echo")]},
        {"matches": [method(SVC)], "backendRefs": [backend("echo")]},
        {"matches": [method(SVC, "Get")], "backendRefs": [backend("echo")]},
        {"matches": [{**method(SVC, "Get"), "headers": header}], "backendRefs": [backend("echo")]},
    ]
    sr = routes_of([*BASE, grpcroute("r", rules)])
    assert [m.rule for m in sr.matches] == [3, 2, 1, 0]


def test_grpc_matches_come_before_an_httproutes_on_the_same_port() -> None:
    http = route("http", rules=[{"backendRefs": [backend("echo")]}], created="2025-01-01T00:00:00Z")
    grpc = grpcroute("grpc", [{"matches": [method(SVC)], "backendRefs": [backend("echo-v2")]}])
    sr = routes_of([*BASE, http, grpc])
    first, second = sr.matches
    assert sr.rules[first.rule].route == "shop/grpc"
    assert sr.rules[second.rule].route == "shop/http"


def test_weights_and_header_edits_come_through_unchanged() -> None:
    edit = {"set": [{"name": "x-routed", "value": "yes"}], "remove": ["x-drop"]}
    rule = {
        "matches": [method(SVC, "Get")],
        "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": edit}],
        "backendRefs": [backend("echo", 3), backend("echo-v2", 1)],
    }
    sr = routes_of([*BASE, grpcroute("r", [rule])])
    [compiled] = sr.rules
    assert [(b.service, b.weight) for b in compiled.backends] == [
        ("echo.shop", 3),
        ("echo-v2.shop", 1),
    ]
    assert compiled.request_headers is not None
    assert compiled.request_headers.set == (("x-routed", "yes"),)
    assert compiled.request_headers.remove == ("x-drop",)


def test_compiling_keeps_the_routes_name_and_parents() -> None:
    obj = grpcroute("r", [{"backendRefs": [backend("echo")]}])
    typed = validate(obj)
    assert isinstance(typed, GRPCRoute)
    compiled = compile_grpcroute(typed)
    assert (compiled.metadata.namespace, compiled.metadata.name) == ("shop", "r")
    assert compiled.spec.parent_refs == typed.spec.parent_refs


def test_the_reconciler_writes_a_grpcroutes_status(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "db.sqlite"))
    try:
        good = grpcroute("good", [{"backendRefs": [backend("echo")]}])
        broken = grpcroute("broken", [{"backendRefs": [backend("missing")]}], parent="ghost")
        store.apply([*BASE[:3], good, broken])
        reconciler = RouteStatusReconciler(store)
        assert reconciler.reconcile() == 2
        assert reconciler.reconcile() == 0
        found = {
            (name, c["type"]): (c["status"], c["reason"])
            for name in ("good", "broken")
            for p in store.get("GRPCRoute", "shop", name)["status"]["parents"]
            for c in p["conditions"]
        }
        assert found == {
            ("good", "Accepted"): ("True", "Accepted"),
            ("good", "ResolvedRefs"): ("True", "ResolvedRefs"),
            ("broken", "Accepted"): ("False", "NoMatchingParent"),
            ("broken", "ResolvedRefs"): ("False", "BackendNotFound"),
        }
    finally:
        store.close()
