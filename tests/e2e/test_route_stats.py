"""Per-route golden metrics end to end: a control plane, `gossamer run` proxies, two
HTTPRoutes, a known number of requests per rule with a known number of failures, and
the exact numbers read back by `gossamer routes --stats`, `gossamer stat --routes` and
the dashboard's service page in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    echo_app,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_all,
    stop_process,
)
from tests.e2e.test_observability import dump_dom

pytestmark = pytest.mark.e2e

# One workload behind two Services, so that one route's rules can send calls to two
# services without a third process.
OBJECTS = """
apiVersion: v1
kind: Service
metadata: {name: meter, namespace: shop}
spec: {selector: {app: meter}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: meter-canary, namespace: shop}
spec: {selector: {app: meter}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pages, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: meter}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: meter, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /b}}]
    filters:  # /b/503 reaches the echo app as /status/503, which answers 503
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /status}}
    backendRefs: [{name: meter-canary, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: meter}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /c}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /status/500}}
    backendRefs: [{name: meter, port: 80}]
---
# Nothing calls meter-grpc: it is here for the dashboard to list its route and policy.
apiVersion: v1
kind: Service
metadata: {name: meter-grpc, namespace: shop}
spec: {selector: {app: meter}, ports: [{name: grpc, port: 80, targetPort: http}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: calls, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: meter-grpc}]
  rules:
  - matches: [{method: {service: shop.Meter}}]
    backendRefs: [{name: meter-grpc, port: 80}]
---
apiVersion: gossamer.dev/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: meter-grpc, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: meter-grpc}]
  maxRequests: 1000
"""
# path → (status, how many times)
SENT = {"/a/x": (200, 5), "/b/200": (200, 3), "/b/503": (503, 2), "/c": (500, 4)}
EXPECTED = {  # (route, service) → (requests, success rate)
    ("pages", "meter"): (5, 1.0),
    ("pages", "meter-canary"): (5, 0.6),
    ("broken", "meter"): (4, 0.0),
}
ROW_FIELDS = {
    "name", "namespace", "service", "service_namespace", "requests", "success_rate", "rps",
    "p50_ms", "p95_ms", "p99_ms", "stale",
    "effective_success_rate", "effective_rps", "actual_success_rate", "retries",
}  # fmt: skip


@dataclass
class Routed:
    cp: ControlPlaneProcess
    client: Workload


def _status(outbound: str, url: str) -> int:
    r = subprocess.run(
        ["curl", "-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
         "-x", f"http://{outbound}", url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return int(r.stdout or 0)


def _until(outbound: str, url: str, status: int) -> None:
    deadline = time.monotonic() + 30
    while _status(outbound, url) != status:
        assert time.monotonic() < deadline, f"{url} never answered {status}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    """A client whose calls to `meter` the routes matched exactly as SENT says."""
    tmp = tmp_path_factory.mktemp("route-stats")
    cp = start_control_plane(tmp / "cp", "--scrape-interval", "0.5")
    workloads: list[Workload] = []
    try:
        cp.cli("apply", "-f", "-", stdin=OBJECTS, check=True)
        port = free_port()
        workloads.append(
            run_workload(
                cp, tmp, "meter-1", service_account="meter", labels={"app": "meter"},
                app=echo_app("meter-1", port), port=f"http=8080:{port}",
            )
        )  # fmt: skip
        client = run_workload(
            cp, tmp, "client-1", service_account="client", labels={"app": "client"}, app=sleeper()
        )
        workloads.append(client)
        for w in workloads:
            w.wait_ready()
        # Warm up with calls that are no route's: meter-canary has no route of its own
        # (200 once the client's proxy knows its endpoint, which is meter's too), and
        # on meter a path no rule matches is a 404 once that proxy has the routes.
        _until(client.outbound, "http://meter-canary.shop/", 200)
        _until(client.outbound, "http://meter.shop/warm-up", 404)
        codes = Counter(
            (path, _status(client.outbound, f"http://meter.shop{path}"))
            for path, (_, times) in SENT.items()
            for _ in range(times)
        )
        assert codes == {(path, status): n for path, (status, n) in SENT.items()}
        yield Routed(cp, client)
    finally:
        stop_all(workloads)
        stop_process(cp.proc)


def _json(cp: ControlPlaneProcess, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        cp.cli(*args, "-o", "json", "--window", "15m", check=True).stdout
    )
    return rows


def _counted(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, float]]:
    return {(r["name"], r["service"]): (r["requests"], r["success_rate"]) for r in rows}


def _eventually_counted(routed: Routed, *args: str) -> list[dict[str, Any]]:
    """The rows once every request of SENT is in them (scrapes come every 0.5 s)."""
    deadline = time.monotonic() + 30
    while True:
        rows = _json(routed.cp, *args)
        total = sum(r["requests"] for r in rows)
        if total >= sum(n for _, n in SENT.values()) or time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


def test_routes_stats_reports_the_exact_count_and_success_rate_per_route(
    routed: Routed,
) -> None:
    rows = _eventually_counted(routed, "routes", "--stats", "-n", "shop")
    assert _counted(rows) == EXPECTED
    for row in rows:
        assert set(row) == ROW_FIELDS
        assert (row["namespace"], row["service_namespace"]) == ("shop", "shop")
        assert row["rps"] > 0 and row["stale"] is False
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    # `stat --routes` is the same view (rps aside: it moves as scrapes go on).
    assert _counted(_json(routed.cp, "stat", "--routes", "-n", "shop")) == EXPECTED
    # The warm-up calls (a 404 no rule matched, calls to a service no route is
    # attached to) are in the edges, and in no route's row.
    edges = {e["name"]: e["requests"] for e in _json(routed.cp, "edges", "-n", "shop")}
    assert edges["meter"] > 5 + 4 and edges["meter-canary"] > 5


def test_routes_stats_narrows_to_a_route_or_a_service(routed: Routed) -> None:
    _eventually_counted(routed, "routes", "--stats", "-n", "shop")
    one_route = _json(routed.cp, "stat", "--routes", "pages", "-n", "shop")
    assert _counted(one_route) == {k: v for k, v in EXPECTED.items() if k[0] == "pages"}
    one_service = _json(routed.cp, "routes", "meter-canary.shop", "--stats")
    assert _counted(one_service) == {("pages", "meter-canary"): (5, 0.6)}
    other = _json(routed.cp, "routes", "--stats", "-n", "default")
    assert other == []


def test_routes_stats_prints_a_table_of_routes(routed: Routed) -> None:
    _eventually_counted(routed, "routes", "--stats", "-n", "shop")
    table = routed.cp.cli("routes", "--stats", "-n", "shop", "--window", "15m", check=True)
    header, *lines = table.stdout.splitlines()
    assert header.split() == [
        "ROUTE", "SERVICE", "SUCCESS", "RPS", "P50", "P95", "P99", "REQUESTS", "STALE",
    ]  # fmt: skip
    cells = {(c[0], c[1]): (c[2], c[-2]) for c in (line.split() for line in lines)}
    assert cells == {
        ("broken", "meter.shop"): ("0.00%", "4"),
        ("pages", "meter.shop"): ("100.00%", "5"),
        ("pages", "meter-canary.shop"): ("60.00%", "5"),
    }


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium")
def test_the_dashboards_service_page_shows_each_routes_rows(routed: Routed) -> None:
    _eventually_counted(routed, "routes", "--stats", "-n", "shop")
    dom, log = dump_dom(routed.cp.api + "/#/service/shop/meter")
    assert 'data-page="service"' in dom, dom[-3000:]
    shown = {
        (route, to): (success, requests)
        for route, to, success, requests in re.findall(
            r'<tr data-route="shop/(\w+)">(?:<td>[^<]*</td>){3}<td>([\w.-]+)</td>'
            r'<td class="\w*">([\d.]+%)</td><td>[^<]*</td><td>[^<]*</td><td>(\d+)</td>',
            dom,
        )
    }
    assert shown == {
        ("broken", "meter.shop"): ("0.00%", "4"),
        ("pages", "meter.shop"): ("100.00%", "5"),
        ("pages", "meter-canary.shop"): ("60.00%", "5"),
    }, dom[-3000:]
    # Each row has a sparkline of its requests per second with traffic in it.
    sparks = re.findall(r'<tr data-route="shop/\w+">.*?<svg[^>]*data-spark="(\d+)"', dom)
    assert len(sparks) == 3 and all(int(n) >= 1 for n in sparks), dom[-3000:]
    assert "data-js-errors" not in dom
    assert "Uncaught" not in log


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium")
def test_the_dashboard_lists_grpcroutes_and_traffic_policies_of_a_service(
    routed: Routed,
) -> None:
    dom, log = dump_dom(routed.cp.api + "/#/service/shop/meter-grpc")
    assert 'data-page="service"' in dom, dom[-3000:]
    assert re.search(r'<tr data-route="shop/calls"><td>GRPCRoute</td><td>calls</td>', dom), dom[
        -3000:
    ]
    assert 'data-policy="CircuitBreakerPolicy/meter-grpc"' in dom, dom[-3000:]
    assert 'data-route="shop/pages"' not in dom  # it names meter in its parentRefs
    assert "data-js-errors" not in dom
    assert "Uncaught" not in log
