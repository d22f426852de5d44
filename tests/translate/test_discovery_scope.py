"""What a proxy's identity may see in its snapshot (docs/decisions/0024-...): its own
workload and policies, and for the services it asks about their endpoints (workload
name, namespace, address, ports, SPIFFE ID), routes and traffic policies. Nothing of
any other workload: no labels, no status, no authorization policy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gossamer.resources import to_dict, validate
from gossamer.translate import MeshView, ProxyInfo, build_snapshot

API_VERSIONS = {
    "Service": "v1",
    "Workload": "gossamer.dev/v1alpha1",
    "AuthorizationPolicy": "security.istio.io/v1",
    "MeshPolicy": "gossamer.dev/v1alpha1",
    "RetryPolicy": "gossamer.dev/v1alpha1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
}


def obj(
    kind: str,
    name: str,
    namespace: str,
    spec: dict[str, Any],
    *,
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    stored = to_dict(
        validate({"apiVersion": API_VERSIONS[kind], "kind": kind, "metadata": meta, "spec": spec})
    )
    stored["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    stored["metadata"]["generation"] = 1
    if status is not None:
        stored["status"] = status
    return stored


def workload(name: str, ns: str, labels: dict[str, str], sa: str, port: int) -> dict[str, Any]:
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "ProxyConnected",
        "message": f"status-of-{name}",
    }
    return obj(
        "Workload",
        name,
        ns,
        {
            "address": "10.0.0.1",
            "inboundPort": 4143,
            "serviceAccount": sa,
            "ports": [{"name": "http", "port": port}],
        },
        labels=labels,
        status={"conditions": [ready], "proxy": {"node": f"node-of-{name}"}},
    )


def service(name: str, ns: str) -> dict[str, Any]:
    return obj(
        "Service",
        name,
        ns,
        {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    )


def targeting(svc: str) -> dict[str, Any]:
    return {"targetRefs": [{"group": "", "kind": "Service", "name": svc}]}


# Every string that must not reach the web proxy carries "secret".
MESH = [
    service("web", "shop"),
    service("api", "shop"),
    service("billing", "bank"),
    workload("web-1", "shop", {"app": "web", "team": "storefront"}, "web", 8080),
    workload("api-1", "shop", {"app": "api", "tier": "secret-api-label"}, "api", 8081),
    workload("billing-1", "bank", {"app": "billing", "pci": "secret-pci-label"}, "billing", 8082),
    workload("batch-1", "shop", {"app": "batch", "cron": "secret-batch-label"}, "batch", 8083),
    # The api workload's own inbound policy is its proxy's business, not its callers'.
    obj(
        "AuthorizationPolicy",
        "secret-api-inbound",
        "shop",
        {
            "selector": {"matchLabels": {"app": "api"}},
            "rules": [
                {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/secret-caller"]}}]}
            ],
        },
    ),
    obj(
        "AuthorizationPolicy",
        "secret-billing-deny",
        "bank",
        {"action": "DENY", "rules": [{"from": [{"source": {"notNamespaces": ["bank"]}}]}]},
    ),
    obj("MeshPolicy", "secret-bank-default", "bank", {"defaultAction": "DENY_ALL"}),
    obj("RetryPolicy", "secret-billing-retries", "bank", {**targeting("billing"), "attempts": 5}),
    obj(
        "HTTPRoute",
        "secret-billing-route",
        "bank",
        {
            "parentRefs": [{"group": "", "kind": "Service", "name": "billing"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/secret-path"}}],
                    "backendRefs": [{"name": "billing", "port": 80}],
                }
            ],
        },
    ),
    # The web workload's own policy, and a route and retries for the service it calls.
    obj(
        "AuthorizationPolicy",
        "web-inbound",
        "shop",
        {
            "selector": {"matchLabels": {"app": "web"}},
            "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
        },
    ),
    obj("RetryPolicy", "api-retries", "shop", {**targeting("api"), "attempts": 2}),
    obj(
        "HTTPRoute",
        "api-route",
        "shop",
        {
            "parentRefs": [{"group": "", "kind": "Service", "name": "api"}],
            "rules": [{"backendRefs": [{"name": "api", "port": 80}]}],
        },
    ),
]


@pytest.fixture
def snapshot_json() -> str:
    mesh = MeshView.from_objects(MESH, trust_domain="cluster.local", trust_bundle="PEM")
    return build_snapshot(mesh, ProxyInfo("web-1", "shop", frozenset({"api.shop"}))).to_json()


def test_a_snapshot_holds_no_other_workloads_labels_status_or_policies(snapshot_json: str) -> None:
    assert "secret" not in snapshot_json
    for leaked in ("billing", "bank", "batch", "status-of-", "node-of-", "ProxyConnected"):
        assert leaked not in snapshot_json, leaked


def test_a_snapshot_holds_the_endpoints_routes_and_policies_of_what_was_asked(
    snapshot_json: str,
) -> None:
    # The other side of the line: what the proxy needs to call api and to serve itself.
    for needed in (
        "api-1",
        "spiffe://cluster.local/ns/shop/sa/api",
        "10.0.0.1",
        "api-route",
        "web-inbound",
    ):
        assert needed in snapshot_json, needed
    [retries] = json.loads(snapshot_json)["policies"]
    assert retries["retry"]["attempts"] == 2


def test_the_proxys_own_labels_are_not_echoed_back(snapshot_json: str) -> None:
    # A proxy knows its labels (it registered them); the snapshot has no need of them.
    assert "storefront" not in snapshot_json
