"""HTTPRoute status: computed by a pure function, written back once, kept stable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gossamer.controlplane.routestatus import RouteStatusReconciler, httproute_status
from gossamer.resources import HTTPRoute, parse_documents, to_dict, validate
from gossamer.store import open_store
from gossamer.translate import MeshView

OBJECTS = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}, {group: "", kind: Service, name: ghost}]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
"""


def _objects() -> list[dict[str, Any]]:
    return [to_dict(validate(o)) for o in parse_documents(OBJECTS)]


def test_status_keeps_transition_times_while_conditions_hold() -> None:
    objects = _objects()
    mesh = MeshView.from_objects(objects, trust_domain="", trust_bundle="")
    route = validate(objects[1])
    assert isinstance(route, HTTPRoute)
    first = httproute_status(route, mesh, None, "2026-01-01T00:00:00Z")
    again = httproute_status(route, mesh, first, "2026-01-02T00:00:00Z")
    assert again == first
    [parent] = first["parents"]
    assert parent["controllerName"] == "gossamer.dev/mesh"
    assert parent["parentRef"] == {"group": "", "kind": "Service", "name": "echo"}
    assert [(c["type"], c["status"]) for c in parent["conditions"]] == [
        ("Accepted", "True"),
        ("ResolvedRefs", "True"),
    ]


def test_other_controllers_entries_are_left_alone() -> None:
    objects = _objects()
    mesh = MeshView.from_objects(objects, trust_domain="", trust_bundle="")
    route = validate(objects[1])
    assert isinstance(route, HTTPRoute)
    theirs = {"parentRef": {"name": "gw"}, "controllerName": "example.com/gateway"}
    status = httproute_status(route, mesh, {"parents": [theirs]}, "2026-01-01T00:00:00Z")
    assert status["parents"][0] == theirs
    assert len(status["parents"]) == 2


def test_the_reconciler_writes_each_routes_status_once(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "db.sqlite"))
    try:
        store.apply(_objects())
        reconciler = RouteStatusReconciler(store)
        assert reconciler.reconcile() == 2
        assert reconciler.reconcile() == 0  # nothing changed: nothing written
        broken = store.get("HTTPRoute", "shop", "broken")["status"]["parents"]
        found = {
            (p["parentRef"]["name"], c["type"]): (c["status"], c["reason"], c["message"])
            for p in broken
            for c in p["conditions"]
        }
        assert found[("ghost", "Accepted")][:2] == ("False", "NoMatchingParent")
        assert found[("echo", "Accepted")][:2] == ("True", "Accepted")
        assert found[("echo", "ResolvedRefs")] == (
            "False",
            "BackendNotFound",
            "backend Service shop/missing does not exist (requests sent there get a 500)",
        )
        # The backend appears: the condition flips.
        store.apply(
            [
                to_dict(
                    validate(
                        {**_objects()[0], "metadata": {"name": "missing", "namespace": "shop"}}
                    )
                )
            ]
        )
        assert reconciler.reconcile() == 1
        broken = store.get("HTTPRoute", "shop", "broken")["status"]["parents"]
        assert [c["status"] for c in broken[0]["conditions"]] == ["True", "True"]
    finally:
        store.close()
