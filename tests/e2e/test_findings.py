"""Findings end to end: a control plane scraping real `gossamer run` proxies. Healthy
calls give no finding; calls to a failing service behind a RetryPolicy are a retry
storm that `gossamer findings` lists with its evidence, shows as a TrafficControl, and
applies with one command."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    ControlPlaneProcess,
    echo_app,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_all,
    stop_process,
)

pytestmark = pytest.mark.e2e

MESH = """\
apiVersion: v1
kind: Service
metadata: {name: meter, namespace: shop}
spec:
  selector: {app: meter}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: gossamer.dev/v1alpha1
kind: RetryPolicy
metadata: {name: meter, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: meter}]
  attempts: 3
  retryOn: [5xx]
  budget: {percent: 100, minRetriesPerSecond: 100}
"""
CALLS = 30
# One step holds the whole test's calls, or at least half of each phase's.
WINDOW = ("--window", "2m", "--step", "1m")


def _send(outbound: str, path: str) -> Counter[str]:
    codes: Counter[str] = Counter()
    for _ in range(CALLS):
        curl = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
             "-x", f"http://{outbound}", f"http://meter.shop{path}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        codes[curl.stdout] += 1
    return codes


def _counted(cp: ControlPlaneProcess, calls: int) -> None:
    """Wait until the control plane's scrapes hold `calls` calls on the edge to meter."""
    deadline = time.monotonic() + 30
    while True:
        out = cp.cli("edges", "-n", "shop", "-o", "json", "--window", "15m", check=True).stdout
        rows: list[dict[str, Any]] = [r for r in json.loads(out) if r["name"] == "meter"]
        if rows and rows[0]["requests"] == calls:
            return
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)


def _findings(cp: ControlPlaneProcess) -> list[dict[str, Any]]:
    out = cp.cli("findings", *WINDOW, "-o", "json", check=True).stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def test_a_retry_storm_is_found_shown_and_contained_with_one_command(tmp_path: Path) -> None:
    cp = start_control_plane(tmp_path / "cp", "--scrape-interval", "0.5")
    workloads = []
    try:
        cp.cli("apply", "-f", "-", stdin=MESH, check=True)
        port = free_port()
        server = run_workload(
            cp, tmp_path, "meter-1", service_account="meter", labels={"app": "meter"},
            app=echo_app("meter-1", port), port=f"http=8080:{port}",
        )  # fmt: skip
        client = run_workload(
            cp, tmp_path, "web-1", service_account="web", labels={"app": "web"}, app=sleeper()
        )
        workloads += [server, client]
        for w in workloads:
            w.wait_ready()
        cp.cli("check", "--wait", "30s", "--workload", "shop/meter-1", check=True)

        assert _send(client.outbound, "/") == {"200": CALLS}
        _counted(cp, CALLS)
        assert _findings(cp) == []
        assert "no findings in the last 2m" in cp.cli("findings", *WINDOW, check=True).stdout

        assert _send(client.outbound, "/status/503") == {"503": CALLS}
        _counted(cp, 2 * CALLS)
        [storm] = _findings(cp)
        assert storm["kind"] == "RetryStorm"
        # web-1 is a workload no Service selects: its proxy reports its own name.
        assert storm["edges"] == ["web-1.shop -> meter.shop"]
        assert storm["evidence"]["retriesPerCall"] >= 1.0  # 2 per failing call
        assert storm["evidence"]["destinationSuccessRate"] < 0.9

        table = cp.cli("findings", *WINDOW, check=True).stdout
        assert storm["id"] in table and "RetryStorm" in table
        shown = cp.cli("findings", storm["id"], *WINDOW, check=True).stdout
        [control] = [d for d in yaml.safe_load_all(shown.split("\n---\n", 1)[1]) if d]
        assert control["kind"] == "TrafficControl"
        assert control["spec"]["from"]["selector"] == {"matchLabels": {"app": "web"}}
        assert control["spec"]["to"]["selector"] == {"matchLabels": {"app": "meter"}}

        applied = cp.cli("findings", "--apply", storm["id"], *WINDOW, check=True).stdout
        name = control["metadata"]["name"]
        assert f"trafficcontrol/{name} (shop) created" in applied
        got = cp.cli("get", "trafficcontrols", name, "-n", "shop", "-o", "json", check=True)
        stored = json.loads(got.stdout)
        assert stored["spec"]["retryBudget"] == control["spec"]["retryBudget"]

        too_long = cp.cli("findings", "--window", "20m")
        assert too_long.returncode == 1
        assert "window: must be more than 0 and at most 15m, not 20m" in too_long.stderr
        too_fine = cp.cli("findings", "--window", "15m", "--step", "1s")
        assert too_fine.returncode == 1
        assert "step: at most 240 steps per window; use a longer step" in too_fine.stderr

        missing = cp.cli("findings", "--apply", "storm-00000000", *WINDOW)
        assert missing.returncode == 1
        assert f"no finding storm-00000000 in the last 2m (findings: {storm['id']})" in (
            missing.stderr
        )
    finally:
        stop_all(workloads)
        stop_process(cp.proc)
