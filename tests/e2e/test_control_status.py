"""`gossamer control status` (issue 16): TrafficControls at work, from the proxies' own
counts, live: a DryRun control counts what it would refuse on the edge it governs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
from tests.e2e.test_traffic_control_aggregate import _get

pytestmark = pytest.mark.e2e

OBJECTS = """\
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: gossamer.dev/v1alpha1
kind: TrafficControl
metadata: {name: watch, namespace: shop}
spec:
  from: {selector: {matchLabels: {tier: web}}}
  to: {selector: {matchLabels: {app: api}}}
  rate: {limit: 1/m, burst: 1}
  concurrency: {maxInFlight: 7}
  mode: DryRun
"""


@pytest.fixture
def fast_scrapes(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = start_control_plane(tmp_path / "cp", "--scrape-interval", "0.5")
    try:
        yield cp
    finally:
        stop_process(cp.proc)


def test_control_status_shows_the_edge_its_limits_and_what_dry_run_would_refuse(
    fast_scrapes: ControlPlaneProcess, tmp_path: Path
) -> None:
    import asyncio

    cp = fast_scrapes
    cp.cli("apply", "-f", "-", stdin=OBJECTS, check=True)
    port = free_port()
    api = run_workload(cp, tmp_path, "api-1", service_account="api", labels={"app": "api"},
                       app=echo_app("api-1", port), port=f"http=8080:{port}")  # fmt: skip
    web = run_workload(cp, tmp_path, "web-1", service_account="web", labels={"tier": "web"},
                       app=sleeper())  # fmt: skip
    try:
        for w in (api, web):
            w.wait_ready()
        for _ in range(150):  # the api workload in the mesh, ready: calls reach it
            got = cp.cli("get", "workload", "api-1", "-n", "shop", "-o", "json", check=True)
            conditions = json.loads(got.stdout).get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                break
            time.sleep(0.2)

        async def three() -> list[int]:
            return [await _get(web.outbound) for _ in range(3)]

        statuses = asyncio.run(three())
        found: dict[str, object] = {}
        for _ in range(100):  # the next scrapes bring the counts
            out = cp.cli("control", "status", "-n", "shop", "-o", "json", check=True).stdout
            found = json.loads(out)
            edges = found.get("shop/watch", {}).get("edges", [])  # type: ignore[union-attr]
            if edges and edges[0]["wouldRefuse"].get("rate") == 2:
                break
            time.sleep(0.2)
        shown = cp.cli("control", "status", "-n", "shop", check=True).stdout
    finally:
        stop_all((web, api))

    assert statuses == [200, 200, 200]  # DryRun refuses nothing
    entry = found["shop/watch"]
    assert isinstance(entry, dict)
    [edge] = entry["edges"]
    assert (edge["source"], edge["service"]) == ("web-1.shop", "api.shop")
    assert edge["wouldRefuse"]["rate"] == 2 and edge["refused"] == {}
    assert edge["limit"] == 7 and edge["rate"] == pytest.approx(1 / 60, rel=1e-3)
    assert entry["wouldRefuse"] == 2
    assert "shop/watch" in shown and "would refuse rate 2" in shown


SWEEPING = """\
apiVersion: gossamer.dev/v1alpha1
kind: TrafficControl
metadata: {name: lockdown, namespace: shop}
spec:
  from: {namespaces: ["*"]}
  to: {selector: {matchLabels: {app: api}}}
  quarantine: {}
"""


def test_a_control_that_refuses_every_call_of_the_mesh_needs_force(
    control_plane: ControlPlaneProcess,
) -> None:
    refused = control_plane.cli("apply", "-f", "-", stdin=SWEEPING)
    assert refused.returncode == 1
    assert (
        "error: TrafficControl shop/lockdown: spec.quarantine: this quarantine refuses every "
        "call from every workload of the mesh"
    ) in refused.stderr
    assert "--force" in refused.stderr and "nothing was applied" in refused.stderr
    assert (
        control_plane.cli("get", "trafficcontrols", "-n", "shop", "-o", "json").stdout.count(
            "lockdown"
        )
        == 0
    )

    forced = control_plane.cli("apply", "-f", "-", "--force", stdin=SWEEPING)
    assert forced.returncode == 0, forced.stderr
    assert "trafficcontrol/lockdown (shop) created" in forced.stdout
