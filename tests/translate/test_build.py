from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from gossamer.translate import (
    InconsistentSnapshot,
    MeshView,
    ProxyInfo,
    Snapshot,
    build_snapshot,
    check_consistent,
)

BUNDLE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def service(
    name: str, ns: str, selector: dict[str, str], ports: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": selector, "ports": ports},
    }


def workload(
    name: str,
    ns: str,
    labels: dict[str, str],
    ports: list[dict[str, Any]],
    sa: str = "default",
    address: str = "127.0.0.1",
    inbound: int = 4143,
) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"address": address, "inboundPort": inbound, "serviceAccount": sa, "ports": ports},
    }


OBJECTS = [
    service("web", "shop", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": 8080}]),
    service(
        "api",
        "shop",
        {"app": "api"},
        [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "admin", "port": 9000, "targetPort": 9001},
        ],
    ),
    service("ledger", "bank", {"app": "ledger"}, [{"port": 7000, "targetPort": 7000}]),
    service("headless", "shop", {}, [{"port": 80, "targetPort": 80}]),
    workload(
        "web-1",
        "shop",
        {"app": "web"},
        [{"name": "http", "port": 8080, "appPort": 18080}],
        sa="web",
    ),
    workload(
        "api-1", "shop", {"app": "api"}, [{"name": "http", "port": 8081}], sa="api", inbound=5001
    ),
    workload(
        "api-2", "shop", {"app": "api"}, [{"name": "grpc", "port": 9090}], sa="api", inbound=5002
    ),
    workload("ledger-1", "bank", {"app": "ledger"}, [], sa="ledger", address="10.0.0.9"),
    workload("stray", "other", {"app": "api"}, [{"name": "http", "port": 8081}]),
]


def mesh(objects: list[dict[str, Any]] = OBJECTS) -> MeshView:
    return MeshView.from_objects(objects, trust_domain="example.org", trust_bundle=BUNDLE)


def test_snapshot_for_a_web_proxy_matches_golden(golden: Callable[[str, str], None]) -> None:
    snap = build_snapshot(
        mesh(), ProxyInfo("web-1", "shop", frozenset({"api.shop", "ledger.bank", "missing.shop"}))
    )
    golden("snapshots/web-1.json", json.dumps(snap.to_dict(), indent=2, sort_keys=True) + "\n")


def test_named_target_port_resolves_per_workload_and_skips_workloads_without_it() -> None:
    snap = build_snapshot(mesh(), ProxyInfo("web-1", "shop", frozenset({"api.shop"})))
    api = snap.service("api", "shop")
    assert api is not None
    http = next(p for p in api.ports if p.port == 80)
    assert [(e.workload, e.target_port) for e in http.endpoints] == [("api-1", 8081)]
    admin = next(p for p in api.ports if p.port == 9000)
    assert [(e.workload, e.target_port, e.inbound_port) for e in admin.endpoints] == [
        ("api-1", 9001, 5001),
        ("api-2", 9001, 5002),
    ]


def test_endpoints_carry_the_workload_identity() -> None:
    snap = build_snapshot(mesh(), ProxyInfo("web-1", "shop", frozenset({"ledger.bank"})))
    ledger = snap.service("ledger", "bank")
    assert ledger is not None
    [ep] = ledger.ports[0].endpoints
    assert ep.identity == "spiffe://example.org/ns/bank/sa/ledger"
    assert ep.address == "10.0.0.9"


def test_workloads_in_other_namespaces_are_not_selected() -> None:
    snap = build_snapshot(mesh(), ProxyInfo("web-1", "shop", frozenset({"api.shop"})))
    api = snap.service("api", "shop")
    assert api is not None
    assert all(e.namespace == "shop" for p in api.ports for e in p.endpoints)


def test_a_service_without_selector_has_no_endpoints() -> None:
    snap = build_snapshot(mesh(), ProxyInfo("web-1", "shop", frozenset({"headless.shop"})))
    headless = snap.service("headless", "shop")
    assert headless is not None and headless.ports[0].endpoints == ()


def test_proxy_sees_only_services_it_asked_for() -> None:
    snap = build_snapshot(mesh(), ProxyInfo("web-1", "shop", frozenset({"api.shop"})))
    assert [s.key for s in snap.services] == ["api.shop"]


def test_unknown_interest_is_listed_but_has_no_service() -> None:
    snap = build_snapshot(mesh(), ProxyInfo("web-1", "shop", frozenset({"nope.shop"})))
    assert snap.interests == ("nope.shop",)
    assert snap.services == ()


def test_proxy_self_lists_its_ports_and_services() -> None:
    snap = build_snapshot(mesh(), ProxyInfo("web-1", "shop"))
    assert snap.proxy.services == ("web",)
    assert [(p.port, p.app_port) for p in snap.proxy.ports] == [(8080, 18080)]
    assert snap.proxy.identity == "spiffe://example.org/ns/shop/sa/web"


def test_a_local_port_takes_its_app_protocol_from_the_service_port_targeting_it() -> None:
    grpc_port = {"name": "grpc", "port": 80, "targetPort": "grpc", "appProtocol": "grpc"}
    objects = [
        service("echo", "shop", {"app": "echo"}, [grpc_port]),
        service("plain", "shop", {"app": "echo"}, [{"port": 81, "targetPort": 8081}]),
        workload(
            "echo-1",
            "shop",
            {"app": "echo"},
            [
                {"name": "grpc", "port": 8080},
                {"port": 8081},
                {"port": 8082, "appProtocol": "http"},  # the workload's own word wins
            ],
        ),
    ]
    snap = build_snapshot(mesh(objects), ProxyInfo("echo-1", "shop"))
    assert [(p.port, p.app_protocol) for p in snap.proxy.ports] == [
        (8080, "grpc"),
        (8081, None),
        (8082, "http"),
    ]


def test_version_changes_when_an_endpoint_changes_and_only_then() -> None:
    info = ProxyInfo("web-1", "shop", frozenset({"api.shop"}))
    first = build_snapshot(mesh(), info)
    assert build_snapshot(mesh(), info).version == first.version
    moved = [
        *OBJECTS[:-1],
        workload("api-3", "shop", {"app": "api"}, [{"name": "http", "port": 8081}]),
    ]
    assert build_snapshot(mesh(moved), info).version != first.version


def test_unregistered_proxy_gets_no_snapshot() -> None:
    with pytest.raises(InconsistentSnapshot, match="not registered"):
        build_snapshot(mesh(), ProxyInfo("ghost", "shop"))


def test_json_round_trip_keeps_the_snapshot() -> None:
    snap = build_snapshot(
        mesh(), ProxyInfo("web-1", "shop", frozenset({"api.shop", "ledger.bank"}))
    )
    assert Snapshot.from_json(snap.to_json()) == snap


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda s: replace(s, version="bogus"), "version does not match"),
        (lambda s: replace(s, interests=()), "was not asked for"),
        (lambda s: replace(s, trust_bundle=""), "trust bundle is empty"),
        (lambda s: replace(s, trust_domain="other.org"), "outside other.org"),
    ],
    ids=[
        "a stale version is refused",
        "a service nobody asked for is refused",
        "an empty trust bundle is refused",
        "an endpoint identity from another trust domain is refused",
    ],
)
def test_inconsistent_snapshots_are_refused(
    mutate: Callable[[Snapshot], Snapshot], problem: str
) -> None:
    snap = build_snapshot(mesh(), ProxyInfo("web-1", "shop", frozenset({"api.shop"})))
    with pytest.raises(InconsistentSnapshot, match=problem):
        check_consistent(mutate(snap))


def _with_status(obj: dict[str, Any], ready: str) -> dict[str, Any]:
    return {**obj, "status": {"conditions": [{"type": "Ready", "status": ready}]}}


@pytest.mark.parametrize(
    ("ready", "expected"),
    [("False", ["api-2"]), ("True", ["api-1", "api-2"]), (None, ["api-1", "api-2"])],
    ids=[
        "a workload whose app is not listening is not an endpoint",
        "a ready workload is an endpoint",
        "a workload without a Ready condition is an endpoint",
    ],
)
def test_only_ready_workloads_are_endpoints(ready: str | None, expected: list[str]) -> None:
    objects = [
        _with_status(o, ready) if ready and o["metadata"]["name"] == "api-1" else o for o in OBJECTS
    ]
    snap = build_snapshot(mesh(objects), ProxyInfo("web-1", "shop", frozenset({"api.shop"})))
    api = snap.service("api", "shop")
    assert api is not None
    admin = next(p for p in api.ports if p.port == 9000)
    assert [e.workload for e in admin.endpoints] == expected
