"""Which security policies reach a proxy: Istio's scope rules, by calling the pure function."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gossamer.resources import to_dict, validate
from gossamer.translate import MeshView, ProxyInfo, build_snapshot
from gossamer.translate.authz import SecurityIndex, SecurityView, security_for


def obj(kind: str, name: str, namespace: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    api = {
        "AuthorizationPolicy": "security.istio.io/v1",
        "MeshPolicy": "gossamer.dev/v1alpha1",
        "Service": "v1",
    }[kind]
    return to_dict(
        validate(
            {
                "apiVersion": api,
                "kind": kind,
                "metadata": {"name": name, "namespace": namespace, **meta},
                "spec": spec,
            }
        )
    )


def names(view: SecurityView) -> list[str]:
    return [p.key for p in view.policies]


OBJECTS = [
    obj("Service", "web", "shop", {"selector": {"app": "web"}, "ports": [{"port": 80}]}),
    obj("AuthorizationPolicy", "mesh-wide", "gossamer-system", {"action": "DENY"}),
    obj(
        "AuthorizationPolicy",
        "root-selector",
        "gossamer-system",
        {"selector": {"matchLabels": {"app": "web"}}},
    ),
    obj("AuthorizationPolicy", "namespace-wide", "shop", {"action": "AUDIT"}),
    obj("AuthorizationPolicy", "for-web", "shop", {"selector": {"matchLabels": {"app": "web"}}}),
    obj("AuthorizationPolicy", "for-db", "shop", {"selector": {"matchLabels": {"app": "db"}}}),
    obj(
        "AuthorizationPolicy",
        "via-service",
        "shop",
        {"targetRefs": [{"kind": "Service", "name": "web"}]},
    ),
    obj("AuthorizationPolicy", "elsewhere", "other", {}),
]


def test_a_workload_gets_mesh_namespace_selector_and_target_ref_policies() -> None:
    view = security_for(SecurityIndex.from_objects(OBJECTS), "shop", {"app": "web"})
    assert names(view) == [
        "gossamer-system/mesh-wide",
        "gossamer-system/root-selector",
        "shop/for-web",
        "shop/namespace-wide",
        "shop/via-service",
    ]


def test_a_workload_not_selected_gets_only_the_unselective_policies() -> None:
    view = security_for(SecurityIndex.from_objects(OBJECTS), "shop", {"app": "cache"})
    assert names(view) == ["gossamer-system/mesh-wide", "shop/namespace-wide"]


def test_the_most_specific_mesh_policy_sets_each_field() -> None:
    objects = [
        obj(
            "MeshPolicy",
            "default",
            "gossamer-system",
            {"mtls": {"mode": "STRICT"}, "defaultAction": "DENY_ALL"},
        ),
        obj("MeshPolicy", "migrating", "shop", {"mtls": {"mode": "PERMISSIVE"}}),
        obj(
            "MeshPolicy",
            "legacy",
            "shop",
            {"selector": {"matchLabels": {"app": "legacy"}}, "defaultAction": "ALLOW_ALL"},
        ),
    ]
    index = SecurityIndex.from_objects(objects)
    web = security_for(index, "shop", {"app": "web"})
    assert (web.mtls_mode, web.mtls_from) == ("PERMISSIVE", "shop/migrating")
    assert (web.default_action, web.default_from) == ("DENY_ALL", "gossamer-system/default")
    legacy = security_for(index, "shop", {"app": "legacy"})
    assert (legacy.default_action, legacy.default_from) == ("ALLOW_ALL", "shop/legacy")
    other = security_for(index, "other", {})
    assert (other.mtls_mode, other.default_action) == ("STRICT", "DENY_ALL")


def test_with_no_mesh_policy_the_mode_is_strict_and_everything_is_allowed() -> None:
    view = security_for(SecurityIndex(), "shop", {})
    assert (view.mtls_mode, view.default_action, view.policies) == ("STRICT", "ALLOW_ALL", ())


def test_the_snapshot_carries_the_security_view_through_json() -> None:
    workload = to_dict(
        validate(
            {
                "apiVersion": "gossamer.dev/v1alpha1",
                "kind": "Workload",
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
                "spec": {"address": "127.0.0.1", "inboundPort": 4143},
            }
        )
    )
    mesh = MeshView.from_objects(
        iter([*OBJECTS, workload]), trust_domain="cluster.local", trust_bundle="PEM"
    )
    snapshot = build_snapshot(mesh, ProxyInfo("web-1", "shop"))
    assert "shop/for-web" in names(snapshot.security)
    assert type(snapshot).from_json(snapshot.to_json()) == snapshot


def test_a_secured_workloads_snapshot_matches_golden(golden: Callable[[str, str], None]) -> None:
    workload = to_dict(
        validate(
            {
                "apiVersion": "gossamer.dev/v1alpha1",
                "kind": "Workload",
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
                "spec": {"address": "127.0.0.1", "inboundPort": 4143},
            }
        )
    )
    policy = obj(
        "AuthorizationPolicy",
        "web-readers",
        "shop",
        {
            "selector": {"matchLabels": {"app": "web"}},
            "rules": [
                {
                    "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}}],
                    "when": [{"key": "request.headers[x-env]", "notValues": ["prod"]}],
                }
            ],
        },
    )
    mesh_policy = obj("MeshPolicy", "default", "gossamer-system", {"mtls": {"mode": "STRICT"}})
    mesh = MeshView.from_objects(
        [*OBJECTS, workload, policy, mesh_policy], trust_domain="cluster.local", trust_bundle="PEM"
    )
    snapshot = build_snapshot(mesh, ProxyInfo("web-1", "shop"))
    security = json.dumps(snapshot.to_dict()["security"], indent=2, sort_keys=True) + "\n"
    golden("snapshots/web-1-security.json", security)
