"""Metric names are a contract: what the proxy and control plane export, the docs list
and the Grafana dashboards query must agree."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest

from gossamer.controlplane.telemetry import Telemetry
from gossamer.proxy.observe.metrics import Metrics
from gossamer.store import SqliteStore

ROOT = Path(__file__).parents[2]
DASHBOARDS = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
DOCS = (ROOT / "docs" / "observability.md").read_text()


def _exported() -> set[str]:
    proxy = Metrics()
    proxy.request_stats("inbound", "a", "b", "c", "d", 200, True).observe(0.001)
    proxy.tcp_stats("outbound", "a", "b", True)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "store.db")
        try:
            text = Telemetry(store).render_metrics({"gossamer_controlplane_connected_proxies": 0})
        finally:
            store.close()
    return set(re.findall(r"^# TYPE (\S+)", proxy.render() + text, re.MULTILINE))


EXPORTED = _exported()


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def queried(expr: str) -> set[str]:
    names = set(re.findall(r"\b(gossamer_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_every_exported_metric_is_documented() -> None:
    for name in EXPORTED:
        assert f"`{name}`" in DOCS, f"{name} is exported but not in docs/observability.md"


def test_every_label_a_proxy_exports_is_documented() -> None:
    proxy = Metrics()
    # Every kind of request series: plain, gRPC, routed, routed gRPC.
    for grpc_status in (None, "0"):
        for route in (None, ("shop", "reads")):
            proxy.request_stats(
                "outbound", "a", "b", "c", "d", 200, True, grpc_status, route
            ).observe(0.001)
    proxy.tcp_stats("outbound", "a", "b", True)
    labels = set(re.findall(r'[{,]([a-z_]+)="', proxy.render()))
    assert {"grpc_status", "route_namespace", "route_name", "le", "flow"} <= labels
    for label in labels:
        assert f"`{label}`" in DOCS, f"label {label} is exported but not in docs/observability.md"


def test_there_are_mesh_service_and_route_dashboards() -> None:
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert sorted(uids) == ["gossamer-mesh", "gossamer-route", "gossamer-service"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_a_dashboard_queries_only_metrics_that_exist(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["title"].startswith("Gossamer / ")
    found = exprs(dashboard)
    assert found, "a dashboard with no queries"
    known = EXPORTED
    for expr in found:
        for name in queried(expr):
            assert name in known, f"{path.name} queries {name}, which nothing exports"
