"""`gossamer routes`: which rule a request takes and why the earlier ones do not fit."""

from __future__ import annotations

import io
from collections.abc import Callable

from gossamer.cli.routes import explain
from gossamer.resources import parse_documents, to_dict, validate
from gossamer.translate import MeshView

OBJECTS = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-canary, namespace: shop}
spec: {selector: {app: canary}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: shop, creationTimestamp: "2026-11-26T10:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - name: canary
    matches: [{path: {type: PathPrefix, value: /v1}, headers: [{name: x-canary, value: "1"}]}]
    backendRefs: [{name: echo-canary, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: echo, port: 80, weight: 90}, {name: echo-canary, port: 80, weight: 10}]
    timeouts: {request: 2s}
"""


def _mesh() -> MeshView:
    objects = [to_dict(validate(o)) for o in parse_documents(OBJECTS)]
    return MeshView.from_objects(objects, trust_domain="", trust_bundle="")


def test_routes_shows_the_rule_a_request_takes_and_why(golden: Callable[[str, str], None]) -> None:
    out = io.StringIO()
    code = explain(_mesh(), "echo", "shop", "shop", None, "GET", "/v1/x", [("x-canary", "2")], out)
    assert code == 0
    golden("cli/routes-echo.txt", out.getvalue())


def test_routes_says_when_no_rule_matches() -> None:
    out = io.StringIO()
    assert explain(_mesh(), "echo", "shop", "shop", None, "GET", "/v2", [], out) == 1
    assert "404: no rule matches" in out.getvalue()
    assert "path /v2 does not match PathPrefix /v1" in out.getvalue()


def test_routes_for_a_service_without_routes_says_so() -> None:
    out = io.StringIO()
    assert explain(_mesh(), "echo-canary", "shop", "shop", None, "GET", "/", [], out) == 0
    assert "no HTTPRoute applies" in out.getvalue()
