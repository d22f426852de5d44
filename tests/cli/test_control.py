"""`gossamer control get`: each TrafficControl's groups and limits on one line; `gossamer
control explain`: which controls govern a call and which limit binds. From the objects
(unit) and from a real control plane (end to end)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from tests.e2e.conftest import ControlPlaneProcess, start_control_plane, stop_process

from gossamer.cli.control import control_row, explain_report
from gossamer.translate.build import MeshView

CONTROLS = """\
apiVersion: gossamer.dev/v1alpha1
kind: TrafficControl
metadata: {name: shield-payments, namespace: shop}
spec:
  from: {selector: {matchLabels: {tier: web}}}
  to: {namespaces: ["*"], selector: {matchLabels: {team: payments}}}
  rate: {limit: 200/s, burst: 50}
  concurrency: {maxInFlight: 20, maxPending: 50, queueTimeout: 500ms}
  circuitBreaker: {consecutiveFailures: 5, failurePercent: 50, ejectionTime: 30s}
  retryBudget: {percent: 10, minRetriesPerSecond: 1}
  mode: DryRun
  ttl: 30m
---
apiVersion: gossamer.dev/v1alpha1
kind: TrafficControl
metadata: {name: isolate-batch, namespace: data}
spec:
  from: {namespaces: ["*"]}
  to: {selector: {matchLabels: {app: batch}}}
  concurrency: {adaptive: {algorithm: AIMD, minLimit: 2, maxLimit: 50, initialLimit: 10}}
  quarantine: {allow: [{namespaces: [ops], selector: {matchLabels: {team: sre}}}]}
"""
DOCS: list[dict[str, Any]] = list(yaml.safe_load_all(CONTROLS))
ROWS = {
    "shield-payments": [
        "shield-payments",
        "tier=web in shop",
        "team=payments in *",
        "rate 200/s burst 50; concurrency 20 +50 pending 500ms; breaker 5 failures in a row "
        "or 50% of 20+ in 10s, open 30s; retry budget 10% min 1/s",
        "DryRun",
        "30m",
    ],
    "isolate-batch": [
        "isolate-batch",
        "all in *",
        "app=batch in data",
        "concurrency AIMD 2..50 from 10; quarantine (allowed: team=sre in ops)",
        "Enforce",
        "-",
    ],
}


@pytest.mark.parametrize("doc", DOCS, ids=[d["metadata"]["name"] for d in DOCS])
def test_a_row_says_the_groups_and_every_limit(doc: dict[str, Any]) -> None:
    assert control_row(doc)[:-1] == ROWS[doc["metadata"]["name"]]


MESH = """\
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: shop}
spec: {selector: {app: ledger}, ports: [{name: http, port: 80}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {address: 127.0.0.1, inboundPort: 4143, serviceAccount: web}
---
apiVersion: gossamer.dev/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: shop, labels: {app: api}}
spec: {address: 127.0.0.2, inboundPort: 4143, serviceAccount: api}
"""


def _control(name: str, src: str, dst: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "TrafficControl",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "from": {"selector": {"matchLabels": {"app": src}}},
            "to": {"selector": {"matchLabels": {"app": dst}}},
            **spec,
        },
    }


EXPLAINED = [
    _control("a-rate", "web", "api", rate={"limit": "10/s"}),
    _control("b-dry", "web", "api", rate={"limit": "2/s"}, mode="DryRun"),
    _control(
        "c-allowed",
        "web",
        "api",
        quarantine={"allow": [{"selector": {"matchLabels": {"app": "web"}}}]},
    ),
    _control("d-bulkhead", "web", "api", concurrency={"maxInFlight": 5}),
    _control("e-other-source", "batch", "api", rate={"limit": "1/s"}),
    _control("f-other-service", "web", "ledger", rate={"limit": "1/s"}),
    _control("g-neither", "batch", "ledger", rate={"limit": "1/s"}),
]


def test_explain_lists_the_governing_controls_the_binding_limits_and_near_misses() -> None:
    objects = [*yaml.safe_load_all(MESH), *EXPLAINED]
    expiring = _control("h-expired", "web", "api", concurrency={"maxInFlight": 1}, ttl="1m")
    expiring["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    mesh = MeshView.from_objects([*objects, expiring], trust_domain="", trust_bundle="")
    report = explain_report(
        mesh, mesh.workloads[("shop", "web-1")], mesh.services[("shop", "api")], 1.8e9
    )
    assert [(c["control"], c["effect"]) for c in report["controls"]] == [
        ("shop/a-rate", "applies"),
        ("shop/b-dry", "counts what it would refuse (DryRun), refuses nothing"),
        ("shop/c-allowed", "the source is allowed by its quarantine, and it sets nothing else"),
        ("shop/d-bulkhead", "applies"),
        ("shop/h-expired", "expired (ttl): applies to nothing"),
    ]
    assert report["tightest"] == {"rate": "shop/a-rate", "concurrency": "shop/d-bulkhead"}
    assert report["tightestDryRun"] == {"rate": "shop/b-dry"}
    assert report["quarantinedBy"] == []
    assert report["nearMisses"] == [
        {
            "control": "shop/e-other-source",
            "notApplied": "from (app=batch in shop) does not hold web-1",
        },
        {
            "control": "shop/f-other-service",
            "notApplied": "to (app=ledger in shop) holds no workload api selects",
        },
    ]


def test_explain_names_the_quarantine_that_refuses_every_call() -> None:
    objects = [*yaml.safe_load_all(MESH), _control("q", "web", "api", quarantine={})]
    mesh = MeshView.from_objects(objects, trust_domain="", trust_bundle="")
    report = explain_report(
        mesh, mesh.workloads[("shop", "web-1")], mesh.services[("shop", "api")], 0.0
    )
    assert report["quarantinedBy"] == ["shop/q"]
    assert report["controls"][0]["effect"] == "quarantine: refuses every call"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    proc = start_control_plane(tmp_path_factory.mktemp("control") / "cp")
    try:
        # isolate-batch's allow list (team=sre in ops) lets no workload of this mesh
        # through: an apply without --force refuses it.
        proc.cli("apply", "--force", "-f", "-", stdin=CONTROLS, check=True)
        proc.cli("apply", "-f", "-", stdin=MESH, check=True)
        proc.cli("apply", "-f", "-", stdin=yaml.safe_dump_all(EXPLAINED[:2]), check=True)
        yield proc
    finally:
        stop_process(proc.proc)


@pytest.mark.e2e
def test_control_get_lists_every_namespaces_controls(cp: ControlPlaneProcess) -> None:
    header, *lines = cp.cli("control", "get", "-A", check=True).stdout.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "FROM", "TO", "LIMITS", "MODE", "TTL", "AGE"]
    assert [line.split()[:2] for line in lines] == [
        ["data", "isolate-batch"],
        ["shop", "a-rate"],
        ["shop", "b-dry"],
        ["shop", "shield-payments"],
    ]
    assert "concurrency AIMD 2..50 from 10; quarantine (allowed: team=sre in ops)" in lines[0]


@pytest.mark.e2e
def test_control_get_one_as_json_is_the_stored_object(cp: ControlPlaneProcess) -> None:
    out = cp.cli("control", "get", "shield-payments", "-n", "shop", "-o", "json", check=True)
    stored = json.loads(out.stdout)
    assert stored["spec"]["rate"] == {"limit": "200/s", "burst": 50, "scope": "Edge"}


@pytest.mark.e2e
def test_control_get_says_when_a_namespace_has_none(cp: ControlPlaneProcess) -> None:
    out = cp.cli("control", "get", "-n", "empty", check=True).stdout
    assert out == "no TrafficControls in namespace empty\n"


@pytest.mark.e2e
def test_control_explain_says_what_governs_a_call(cp: ControlPlaneProcess) -> None:
    out = cp.cli("control", "explain", "--from", "web-1.shop", "--to", "api.shop", check=True)
    assert out.stdout.splitlines() == [
        "calls from workload web-1.shop to service api.shop: 2 TrafficControl(s) govern them",
        "  shop/a-rate (Enforce): applies",
        "    rate 10/s",
        "  shop/b-dry (DryRun): counts what it would refuse (DryRun), refuses nothing",
        "    rate 2/s",
        "tightest (the lowest of each kind binds):",
        "  rate: shop/a-rate",
        "tightest in DryRun (counts what it would refuse, refuses nothing):",
        "  rate: shop/b-dry",
        "not applied: data/isolate-batch: to (app=batch in data) holds no workload api selects",
    ]
    as_json = cp.cli(
        "control", "explain", "--from", "web-1.shop", "--to", "api.shop", "-o", "json", check=True
    )
    assert json.loads(as_json.stdout)["tightest"] == {"rate": "shop/a-rate"}


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (
            ["--from", "nobody.shop", "--to", "api.shop"],
            "--from: no workload nobody in namespace shop",
        ),
        (
            ["--from", "web-1.shop", "--to", "nothing.shop"],
            "--to: no service nothing in namespace shop",
        ),
        (["--from", "web-1.shop", "--to", "a.b.c"], "--to 'a.b.c': expected SERVICE[.NAMESPACE]"),
    ],
    ids=["unknown workload", "unknown service", "not a name"],
)
def test_control_explain_says_which_name_it_cannot_find(
    cp: ControlPlaneProcess, flags: list[str], error: str
) -> None:
    result = cp.cli("control", "explain", *flags)
    assert result.returncode == 1
    assert f"error: {error}" in result.stderr
