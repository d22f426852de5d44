"""Retries in sight (issue 19, decision 0082): effective success (what callers got),
actual success (every try) and the retries between them, from the proxies' counters
to `gossamer stat -o wide` and `gossamer edges -o wide`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from tests.e2e.conftest import (
    ControlPlaneProcess,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_all,
    stop_process,
)

from gossamer.controlplane.telemetry import retry_fields
from gossamer.telemetry.golden import (
    Golden,
    parse_prometheus_text,
    retries_by_edge,
    retries_by_route,
)
from gossamer.telemetry.window import RETRY_VIEW, Scrape, summarize, window_golden

CALLER = """\
gossamer_requests_total{direction="outbound",src_namespace="shop",src_service="web",\
dst_namespace="shop",dst_service="ratings",code="200",tls="true"} %(ok)d
gossamer_requests_total{direction="outbound",src_namespace="shop",src_service="web",\
dst_namespace="shop",dst_service="ratings",code="500",tls="true"} %(failed)d
gossamer_retries_total{dst_namespace="shop",dst_service="ratings"} %(retries)d
gossamer_retries_total{dst_namespace="shop",dst_service="idle"} 0
process_start_time_seconds 100
"""


def _scrape(at: float, ok: int, failed: int, retries: int) -> Scrape:
    text = CALLER % {"ok": ok, "failed": failed, "retries": retries}
    return summarize(parse_prometheus_text(text), at)


def test_a_proxys_retries_belong_to_its_own_edge_to_that_destination() -> None:
    samples = parse_prometheus_text(CALLER % {"ok": 90, "failed": 10, "retries": 25})
    edges = retries_by_edge(samples)
    assert {key: t.requests for key, t in edges.items()} == {
        ("shop", "web", "shop", "ratings"): 25.0
    }


def test_a_routes_retries_are_its_own_and_its_callers_edge_counts_them_too() -> None:
    text = (CALLER % {"ok": 90, "failed": 10, "retries": 25}) + (
        'gossamer_retries_total{dst_namespace="shop",dst_service="ratings",'
        'route_namespace="shop",route_name="reads"} 7\n'
    )
    samples = parse_prometheus_text(text)
    assert {k: t.requests for k, t in retries_by_route(samples).items()} == {
        ("shop", "ratings", "shop", "reads"): 7.0
    }
    # The proxy counts a routed retry once, in the route's series: the edge adds both.
    assert retries_by_edge(samples)[("shop", "web", "shop", "ratings")].requests == 32.0


def test_retries_in_a_window_are_the_increase_like_requests() -> None:
    history = [_scrape(1000.0, 10, 0, 5), _scrape(1060.0, 100, 4, 30)]
    golden = window_golden([history], RETRY_VIEW, 1000.0, 1060.0)
    assert golden[("shop", "web", "shop", "ratings")].requests == 25.0


def _golden(requests: float, success_rate: float) -> Golden:
    return Golden(("k",), requests, success_rate, requests / 60, None, None, None)


def test_an_edges_actual_success_counts_every_try() -> None:
    # 100 calls, 96 succeeded after 30 retries: 96 good tries out of 130.
    fields = retry_fields(_golden(100, 0.96), None, 30)
    assert fields["effective_success_rate"] == 0.96
    assert fields["actual_success_rate"] == pytest.approx(96 / 130, abs=1e-6)
    assert fields["retries"] == 30


def test_a_service_has_both_views_from_its_callers_and_itself() -> None:
    fields = retry_fields(_golden(100, 0.973), _golden(130, 0.958), 30)
    assert (fields["effective_success_rate"], fields["actual_success_rate"]) == (0.973, 0.958)


def test_unknown_retries_leave_actual_unknown() -> None:
    fields = retry_fields(_golden(100, 0.9), None, None)
    assert (fields["actual_success_rate"], fields["retries"]) == (None, None)


FLAKY = """\
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: gossamer.dev/v1alpha1
kind: RetryPolicy
metadata: {name: ratings, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: ratings}]
  attempts: 3
  retryOn: [5xx]
  budget: {percent: 100, minRetriesPerSecond: 100}
"""
CALLS = 60


def _stats(cp: ControlPlaneProcess, *args: str) -> list[dict[str, object]]:
    result = cp.cli(*args, "-n", "shop", "-o", "json", "--window", "15m", check=True)
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


@pytest.mark.e2e
def test_stat_and_edges_show_effective_and_actual_success_and_retries(tmp_path: Path) -> None:
    """A service failing a third of its tries behind a RetryPolicy: callers see more
    success than it serves, and the tables say why."""
    cp = start_control_plane(tmp_path / "cp", "--scrape-interval", "0.5")
    workloads = []
    try:
        cp.cli("apply", "-f", "-", stdin=FLAKY, check=True)
        port = free_port()
        app = [
            sys.executable, "-m", "gossamer.demo.apps", "ratings", "--failure-rate", "0.33",
            "--listen", str(port),
        ]  # fmt: skip
        server = run_workload(
            cp, tmp_path, "ratings-1", service_account="ratings", labels={"app": "ratings"},
            app=app, port=f"http=8080:{port}",
        )  # fmt: skip
        client = run_workload(
            cp, tmp_path, "web-1", service_account="web", labels={"app": "web"}, app=sleeper()
        )
        workloads += [server, client]
        for w in workloads:
            w.wait_ready()
        # Both registered, ready, and every proxy on its latest snapshot.
        cp.cli("check", "--wait", "30s", "--workload", "shop/ratings-1", check=True)
        codes: Counter[str] = Counter()
        for i in range(CALLS):
            curl = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                 "-x", f"http://{client.outbound}", f"http://ratings.shop/ratings/{i}"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            codes[curl.stdout] += 1
        assert codes["200"] > 0 and sum(codes.values()) == CALLS, codes
        deadline = time.monotonic() + 30
        while True:
            [edge] = [e for e in _stats(cp, "edges") if e["name"] == "ratings"]
            [service] = [s for s in _stats(cp, "stat") if s["name"] == "ratings"]
            if edge["requests"] == CALLS and service["requests"] == CALLS + edge["retries"]:
                break
            assert time.monotonic() < deadline, (edge, service)
            time.sleep(0.5)
        retries = edge["retries"]
        assert isinstance(retries, int) and retries > 0
        # The caller got what curl saw; the service served every try.
        assert edge["effective_success_rate"] == pytest.approx(codes["200"] / CALLS, abs=1e-6)
        assert service["effective_success_rate"] == edge["effective_success_rate"]
        assert service["retries"] == retries
        assert service["actual_success_rate"] == service["success_rate"]
        assert edge["actual_success_rate"] == pytest.approx(
            codes["200"] / (CALLS + retries), abs=1e-6
        )
        assert service["actual_success_rate"] == pytest.approx(
            edge["actual_success_rate"], abs=1e-6
        )
        wide = cp.cli("stat", "-n", "shop", "-o", "wide", "--window", "15m", check=True).stdout
        header, *rows = wide.splitlines()
        assert header.split()[-3:] == ["EFFECTIVE", "ACTUAL", "RETRIES"]
        [row] = [r.split() for r in rows if r.startswith("ratings ")]
        assert row[-1] == str(retries)
        narrow = cp.cli("edges", "-n", "shop", "--window", "15m", check=True).stdout
        assert f"{retries} retries in the window: -o wide shows EFFECTIVE" in narrow
    finally:
        stop_all(workloads)
        stop_process(cp.proc)
