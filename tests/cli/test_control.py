"""`gossamer control get`: each TrafficControl's groups and limits on one line, from the
objects (unit) and from a real control plane (end to end)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from tests.e2e.conftest import ControlPlaneProcess, start_control_plane, stop_process

from gossamer.cli.control import control_row

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


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    proc = start_control_plane(tmp_path_factory.mktemp("control") / "cp")
    try:
        proc.cli("apply", "-f", "-", stdin=CONTROLS, check=True)
        yield proc
    finally:
        stop_process(proc.proc)


@pytest.mark.e2e
def test_control_get_lists_every_namespaces_controls(cp: ControlPlaneProcess) -> None:
    header, *lines = cp.cli("control", "get", "-A", check=True).stdout.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "FROM", "TO", "LIMITS", "MODE", "TTL", "AGE"]
    assert [line.split()[:2] for line in lines] == [
        ["data", "isolate-batch"],
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
