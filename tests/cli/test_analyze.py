"""`gossamer analyze` and apply's warnings: configuration accepted that does nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from tests.e2e.conftest import ControlPlaneProcess, start_control_plane, stop_process

from gossamer.cli.analyze import findings
from gossamer.resources import parse_documents, to_dict, validate

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80}]
"""


def _objects(text: str) -> list[dict[str, object]]:
    """As the store holds them: validated, defaults filled in."""
    return [to_dict(validate(d)) for d in parse_documents(SERVICE + "---\n" + text)]


CASES = {
    "a Service parent without group": (
        """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
""",
        "spec.parentRefs[0].group",
        'a Service parent needs group: ""',
    ),
    "a parent Service that does not exist": (
        """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: ehco}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
""",
        "spec.parentRefs[0].name",
        "Service shop/ehco does not exist",
    ),
    "a backend that does not exist": (
        """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo-v2, port: 80}]}]
""",
        "spec.rules[0].backendRefs[0].name",
        "requests this rule sends there get a 500",
    ),
    "a policy that targets nothing": (
        """\
apiVersion: gossamer.dev/v1alpha1
kind: RetryPolicy
metadata: {name: p, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: nothing}]
  attempts: 2
""",
        "spec.targetRefs[0].name",
        "the policy applies to nothing",
    ),
}


@pytest.mark.parametrize(("text", "path", "says"), CASES.values(), ids=CASES.keys())
def test_inert_configuration_is_found_at_its_field(text: str, path: str, says: str) -> None:
    [found] = [f for f in findings(_objects(text)) if f.level == "warning"]
    assert found.path == path
    assert says in found.message


def test_configuration_that_works_has_no_warning() -> None:
    text = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web, "*/sa/ops"]}}]}]
"""
    assert [f for f in findings(_objects(text)) if f.level == "warning"] == []


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    proc = start_control_plane(tmp_path_factory.mktemp("analyze") / "cp")
    try:
        yield proc
    finally:
        stop_process(proc.proc)


@pytest.mark.e2e
def test_apply_stores_an_inert_route_and_warns_and_analyze_fails(cp: ControlPlaneProcess) -> None:
    route = CASES["a Service parent without group"][0]
    applied = cp.cli("apply", "-f", "-", stdin=SERVICE + "---\n" + route, check=True)
    assert "httproute/r (shop) created" in applied.stdout
    assert (
        "warning: HTTPRoute shop/r: spec.parentRefs[0].group: kind Service in group "
        '"gateway.networking.k8s.io" names nothing' in applied.stderr
    )
    analyzed = cp.cli("analyze", "-n", "shop")
    assert analyzed.returncode == 1
    assert analyzed.stdout.splitlines()[0].split() == ["LEVEL", "OBJECT", "FIELD", "WHAT"]
    as_json = json.loads(cp.cli("analyze", "-n", "shop", "-o", "json").stdout)
    assert as_json["warnings"] == 1
    assert as_json["items"][0]["path"] == "spec.parentRefs[0].group"
    fixed = route.replace("{kind: Service", '{group: "", kind: Service')
    assert cp.cli("apply", "-f", "-", stdin=fixed, check=True).stderr == ""
    clean = cp.cli("analyze", "-n", "shop")
    assert (clean.returncode, clean.stdout) == (0, "✓ nothing inert found in namespace shop\n")


@pytest.mark.e2e
def test_authz_explain_warns_about_a_principal_no_identity_has(cp: ControlPlaneProcess) -> None:
    cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    result = cp.cli("authz", "explain", "--from", "web", "--to", "echo.shop")
    assert "warning: --from 'web' is not TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT" in (
        result.stderr
    )
