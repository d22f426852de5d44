"""Golden metrics end to end: real proxies, a known number of requests and failures, and
the numbers read back by `gossamer stat`, by a real Prometheus through the control
plane's file_sd file, and in the dashboard in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
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

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: meter, namespace: shop}
spec:
  selector: {app: meter}
  ports: [{name: http, port: 80, targetPort: http}]
"""
OK, FAILED = 17, 3
DASHBOARDS = Path(__file__).parents[2] / "dashboards" / "grafana"


@dataclass
class Metered:
    cp: ControlPlaneProcess
    client: Workload
    server: Workload
    sd_file: Path


def _ready(cp: ControlPlaneProcess, name: str) -> bool:
    r = cp.cli("get", "workload", name, "-n", "shop", "-o", "json")
    if r.returncode != 0:
        return False
    conditions = json.loads(r.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _curl_status(outbound: str, path: str) -> str:
    r = subprocess.run(
        ["curl", "-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
         "-x", f"http://{outbound}", f"http://meter.shop{path}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return r.stdout


def stat_json(cp: ControlPlaneProcess, *args: str) -> list[dict[str, Any]]:
    r = cp.cli(*args, "-n", "shop", "-o", "json", "--window", "15m", check=True)
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metered]:
    """A client that made exactly OK good and FAILED failing calls to `meter`."""
    tmp = tmp_path_factory.mktemp("observability")
    sd_file = tmp / "sd" / "gossamer.json"
    cp = start_control_plane(
        tmp / "cp", "--scrape-interval", "0.5", "--prometheus-sd-file", str(sd_file)
    )
    workloads: list[Workload] = []
    try:
        cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
        port = free_port()
        server = run_workload(
            cp, tmp, "meter-1", service_account="meter", labels={"app": "meter"},
            app=echo_app("meter-1", port), port=f"http=8080:{port}",
        )  # fmt: skip
        workloads.append(server)
        client = run_workload(
            cp, tmp, "client-1", service_account="client", labels={"app": "client"}, app=sleeper()
        )
        workloads.append(client)
        for w in workloads:
            w.wait_ready()
        deadline = time.monotonic() + 30
        while not _ready(cp, "meter-1"):
            assert time.monotonic() < deadline, "meter-1 never became ready"
            time.sleep(0.2)
        codes = Counter(_curl_status(client.outbound, "/") for _ in range(OK))
        codes += Counter(_curl_status(client.outbound, "/status/500") for _ in range(FAILED))
        assert codes == {"200": OK, "500": FAILED}
        yield Metered(cp, client, server, sd_file)
    finally:
        stop_all(workloads)
        stop_process(cp.proc)


def _eventually(read: Any, done: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def test_stat_reports_the_exact_count_and_success_rate(metered: Metered) -> None:
    rows = _eventually(
        lambda: stat_json(metered.cp, "stat", "meter"),
        lambda rows: rows and rows[0]["requests"] >= OK + FAILED,
    )
    [row] = rows
    assert set(row) == {
        "name", "namespace", "requests", "success_rate", "rps", "p50_ms", "p95_ms", "p99_ms",
        "stale", "effective_success_rate", "effective_rps", "actual_success_rate", "retries",
    }  # fmt: skip
    assert (row["name"], row["namespace"]) == ("meter", "shop")
    assert row["requests"] == OK + FAILED
    assert row["success_rate"] == pytest.approx(OK / (OK + FAILED))
    assert row["rps"] > 0 and row["stale"] is False
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]

    edges = _eventually(
        lambda: stat_json(metered.cp, "edges"),
        lambda rows: any(r["requests"] >= OK + FAILED for r in rows),
    )
    [edge] = [e for e in edges if e["name"] == "meter"]
    assert (edge["src_name"], edge["src_namespace"]) == ("client-1", "shop")
    assert edge["requests"] == OK + FAILED
    assert edge["success_rate"] == pytest.approx(OK / (OK + FAILED))

    table = metered.cp.cli("stat", "-n", "shop", "--window", "15m", check=True).stdout
    assert table.splitlines()[0].split() == [
        "NAME", "SUCCESS", "RPS", "P50", "P95", "P99", "REQUESTS", "STALE",
    ]  # fmt: skip
    assert "85.00%" in table


def test_a_window_longer_than_what_is_kept_is_a_clear_error(metered: Metered) -> None:
    r = metered.cp.cli("stat", "-n", "shop", "--window", "1h")
    assert r.returncode == 1
    assert "window: must be more than 0 and at most 15m" in r.stderr


def test_gossamer_dashboard_prints_the_url(metered: Metered) -> None:
    r = metered.cp.cli("dashboard", "--no-browser", check=True)
    assert r.stdout.strip() == metered.cp.api + "/"


def _prometheus_query(address: str, query: str) -> float | None:
    url = f"http://{address}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            result = json.load(resp)["data"]["result"]
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else None


def _prometheus_status(address: str, query: str) -> str:
    url = f"http://{address}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(json.load(resp)["status"])
    except urllib.error.HTTPError as err:
        return f"{err.code}: {err.read()[:300]!r}"


def _dashboard_queries() -> list[str]:
    """Every query of the Grafana dashboards, with their variables filled in."""
    values = {"$__rate_interval": "1m", "$namespace": "shop", "$service": "meter",
              "$route": "none"}  # fmt: skip
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in values.items():
                    expr = expr.replace(var, value)
                found.append(expr)
    assert found
    return found


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus")
def test_a_real_prometheus_scrapes_the_mesh_through_file_sd(
    metered: Metered, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "- job_name: gossamer\n"
        f"  file_sd_configs: [{{files: ['{metered.sd_file}'], refresh_interval: 1s}}]\n"
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={address}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        total = 'sum(gossamer_requests_total{direction="inbound",dst_service="meter"})'
        requests = _eventually(
            lambda: _prometheus_query(address, total), lambda v: v is not None, timeout=60
        )
        assert requests == OK + FAILED, log.read_text()[-3000:]
        failed = _prometheus_query(
            address,
            'sum(gossamer_requests_total{direction="inbound",dst_service="meter",code=~"5.."})',
        )
        assert failed == FAILED
        up = _eventually(
            lambda: _prometheus_query(address, 'up{component="control-plane"}'),
            lambda v: v == 1,
        )
        assert up == 1, "Prometheus did not scrape the control plane's own /metrics"
        for expr in _dashboard_queries():
            status = _prometheus_status(address, expr)
            assert status == "success", f"Grafana query fails in Prometheus: {expr}: {status}"
    finally:
        stop_process(proc)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(url: str) -> tuple[str, str]:
    browser = _chromium()
    assert browser is not None
    with tempfile.TemporaryDirectory(prefix="gossamer-chromium-") as profile:
        r = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr",
             "--virtual-time-budget=5000", "--dump-dom", url],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    return r.stdout, r.stderr


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium")
def test_the_dashboard_shows_the_topology_and_a_service_page(metered: Metered) -> None:
    stat_json(metered.cp, "stat", "meter")  # the fixture's requests are already counted
    dom, log = dump_dom(metered.cp.api + "/")
    assert 'data-service="shop/meter"' in dom, dom[-3000:]
    assert 'data-service="shop/client-1"' in dom  # the caller, through its edge
    assert "data-js-errors" not in dom
    assert "Uncaught" not in log

    dom, log = dump_dom(metered.cp.api + "/#/service/shop/meter")
    assert 'data-page="service"' in dom, dom[-3000:]
    assert "85.00%" in dom  # the success rate card
    assert "spiffe://cluster.local/ns/shop/sa/meter" in dom  # its workload's certificate
    assert "data-js-errors" not in dom
    assert "Uncaught" not in log
