"""`gossamer describe service|workload` and `gossamer proxy-config`, against a real
control plane and a real proxy."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    echo_app,
    free_port,
    run_workload,
    start_control_plane,
    stop_process,
)

from gossamer.cli.describe import print_report

pytestmark = pytest.mark.e2e

OBJECTS = """\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-v1, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: echo, port: 80}]
---
apiVersion: gossamer.dev/v1alpha1
kind: RetryPolicy
metadata: {name: echo, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  attempts: 2
  retryOn: [5xx]
---
apiVersion: gossamer.dev/v1alpha1
kind: RetryPolicy
metadata: {name: other, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: other}]
  attempts: 1
"""


@dataclass
class Described:
    cp: ControlPlaneProcess
    echo: Workload


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Described]:
    tmp = tmp_path_factory.mktemp("describe")
    cp = start_control_plane(tmp / "cp")
    echo = None
    try:
        cp.cli("apply", "-f", "-", stdin=OBJECTS, check=True)
        port = free_port()
        echo = run_workload(
            cp, tmp, "echo-1", service_account="echo", labels={"app": "echo"},
            app=echo_app("echo-1", port), port=f"http=8080:{port}",
        )  # fmt: skip
        echo.wait_ready()
        cp.cli("check", "--wait", "30s", "--workload", "shop/echo-1", check=True)
        yield Described(cp, echo)
    finally:
        if echo is not None:
            echo.stop()
        stop_process(cp.proc)


def test_describe_service_shows_workloads_routes_policies_and_metrics(mesh: Described) -> None:
    out = mesh.cp.cli("describe", "service", "echo", "-n", "shop", check=True).stdout
    assert out.startswith("Service shop/echo\n  selector: app=echo\n  ports: http 80→http\n")
    workloads = out.split("Workloads (1):\n")[1].split("\n\n")[0].splitlines()
    assert workloads[0].split() == [
        "WORKLOAD", "ADDRESS", "READY", "PROXY", "SNAPSHOT", "CERT-LEFT",
    ]  # fmt: skip
    row = workloads[1].split()
    # Connected; on its latest snapshot or about to be (a status change can push one).
    assert row[:4] == ["echo-1", mesh.echo.inbound, "yes", "connected"]
    assert row[4] in ("up", "behind")
    assert "HTTPRoute shop/echo-v1 (producer port 80): 1 rules, accepted" in out
    assert "RetryPolicy shop/echo → Service/echo: attempts=2," in out
    assert "shop/other" not in out  # a policy for another service is not this one's
    assert "Golden metrics, last 1m" in out


def test_describe_as_json_has_every_section(mesh: Described) -> None:
    out = mesh.cp.cli("describe", "svc", "echo", "-n", "shop", "-o", "json", check=True).stdout
    report = json.loads(out)
    assert set(report) >= {"workloads", "routes", "policies", "metrics", "edges", "ports"}
    [wl] = report["workloads"]
    assert wl["identity"] == "spiffe://cluster.local/ns/shop/sa/echo"
    assert wl["connected"] is True and wl["certificateLeftSeconds"] > 0


def test_describe_workload_shows_its_services_proxy_and_policies(mesh: Described) -> None:
    out = mesh.cp.cli("describe", "workload", "echo-1", "-n", "shop", check=True).stdout
    assert out.startswith("Workload shop/echo-1\n  labels: app=echo\n")
    assert "  services: echo\n" in out
    assert "identity: spiffe://cluster.local/ns/shop/sa/echo" in out
    assert "RetryPolicy shop/echo" in out


def test_describing_what_does_not_exist_fails(mesh: Described) -> None:
    result = mesh.cp.cli("describe", "service", "nope", "-n", "shop")
    assert result.returncode == 1 and "nope" in result.stderr


def test_proxy_config_prints_the_snapshot_the_proxy_runs(mesh: Described) -> None:
    dumped = mesh.cp.cli("proxy-config", "echo-1.shop", check=True).stdout
    config = yaml.safe_load(dumped)
    assert config["ready"] is True
    assert mesh.echo.inbound.rpartition(":")[2] in json.dumps(config["addresses"]["inbound"])
    assert config["snapshot"]["proxy"]["workload"] == "echo-1"
    summary = mesh.cp.cli("proxy-config", "echo-1", "-n", "shop", "-o", "table", check=True)
    assert summary.stdout.startswith("proxy of shop/echo-1\n")
    assert f"  snapshot: {config['snapshot']['version']}" in summary.stdout


def test_proxy_config_of_an_unknown_workload_says_how_to_list_them(
    mesh: Described, tmp_path: Path
) -> None:
    result = mesh.cp.cli("proxy-config", "ghost", "-n", "shop")
    assert result.returncode == 1
    assert "no registered workload shop/ghost" in result.stderr


REPORT = {
    "kind": "Service",
    "name": "shop/ratings",
    "selector": {"app": "ratings"},
    "ports": [{"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"}],
    "workloads": [
        {"workload": "ratings-1", "address": "10.0.0.7:4143", "ready": True, "connected": True,
         "snapshot": "5dae181d2a736054", "upToDate": True, "identity": "spiffe://x/ns/shop/sa/r",
         "certificateLeftSeconds": 86000.0},
        {"workload": "ratings-2", "address": "10.0.0.8:4143", "ready": False, "connected": False,
         "snapshot": None, "upToDate": False, "identity": None, "certificateLeftSeconds": None},
    ],
    "routes": [{"kind": "HTTPRoute", "name": "shop/ratings-v2", "role": "producer", "port": 80,
                "rules": 2, "status": "accepted"}],
    "policies": [{"kind": "RetryPolicy", "name": "shop/ratings", "targets": "Service/ratings",
                  "settings": "attempts=2,retryOn=5xx"}],
    "window": "1m",
    "metrics": {"requests": 1300, "success_rate": 0.958, "rps": 21.7, "p50_ms": 12.5,
                "p95_ms": 35.0, "p99_ms": 39.0, "stale": False, "effective_success_rate": 0.973,
                "actual_success_rate": 0.958, "retries": 20},
    "edges": [{"src_name": "web", "src_namespace": "shop", "name": "ratings", "namespace": "shop",
               "requests": 1280, "success_rate": 0.973, "rps": 21.3, "p50_ms": 13.0,
               "p95_ms": 36.0, "p99_ms": 40.0, "stale": False, "effective_success_rate": 0.973,
               "actual_success_rate": 0.958, "retries": 20}],
}  # fmt: skip


def test_describe_service_text_matches_golden(golden: Callable[[str, str], None]) -> None:
    out = io.StringIO()
    print_report(REPORT, out)
    golden("cli/describe-service.txt", out.getvalue())
