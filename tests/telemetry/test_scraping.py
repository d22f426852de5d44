"""The control plane's scraper against fake proxies' /metrics on real sockets."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from gossamer.controlplane.telemetry import BadWindow, Telemetry, parse_duration, targets_from
from gossamer.resources import to_dict, validate
from gossamer.store import SqliteStore


def metrics_text(ok: int, failed: int, started: float = 1000.0) -> str:
    labels = (
        'direction="inbound",src_namespace="shop",src_service="web",'
        'dst_namespace="shop",dst_service="api",tls="true"'
    )
    out = []
    for code, n in (("200", ok), ("500", failed)):
        out.append(f'gossamer_requests_total{{{labels},code="{code}"}} {n}')
        out.append(
            f'gossamer_request_duration_seconds_bucket{{{labels},code="{code}",le="0.01"}} {n}'
        )
        out.append(
            f'gossamer_request_duration_seconds_bucket{{{labels},code="{code}",le="+Inf"}} {n}'
        )
    edge = (
        'direction="outbound",src_namespace="shop",src_service="api",'
        'dst_namespace="shop",dst_service="db",tls="true"'
    )
    out.append(f'gossamer_requests_total{{{edge},code="200"}} {ok}')
    out.append(f"process_start_time_seconds {started}")
    return "\n".join(out) + "\n"


@dataclass
class FakeProxy:
    """A proxy's admin listener whose /metrics says whatever the test sets."""

    port: int
    body: str = ""
    status: int = 200


@pytest_asyncio.fixture
async def fake_proxy() -> AsyncIterator[FakeProxy]:
    proxy = FakeProxy(0)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=proxy.body, status=proxy.status)

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    proxy.port = runner.addresses[0][1]
    try:
        yield proxy
    finally:
        await runner.cleanup()


def objects(admin_port: int | None) -> list[dict[str, Any]]:
    workload: dict[str, Any] = {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "api-1", "namespace": "shop", "labels": {"app": "api"}},
        "spec": {"address": "127.0.0.1", "inboundPort": 4143},
    }
    if admin_port is not None:
        workload["spec"]["adminPort"] = admin_port
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 80}]},
    }
    return [to_dict(validate(o)) for o in (workload, service)]


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def telemetry(tmp_path: Path, fake_proxy: FakeProxy) -> AsyncIterator[Telemetry]:
    store = SqliteStore(tmp_path / "store.db")
    store.apply(objects(fake_proxy.port))
    t = Telemetry(
        store,
        interval=5,
        sd_file=tmp_path / "sd" / "targets.json",
        self_target=lambda: "127.0.0.1:15000",
        clock=Clock(),
    )
    await t.start(scrape=False)
    try:
        yield t
    finally:
        await t.stop()
        store.close()


def advance(t: Telemetry, seconds: float) -> None:
    assert isinstance(t.clock, Clock)
    t.clock.now += seconds


@pytest.mark.asyncio
async def test_requests_between_scrapes_read_back_exactly(
    telemetry: Telemetry, fake_proxy: FakeProxy
) -> None:
    fake_proxy.body = metrics_text(ok=0, failed=0)
    await telemetry.scrape_once()
    advance(telemetry, 10)
    fake_proxy.body = metrics_text(ok=18, failed=2)
    await telemetry.scrape_once()
    [edge] = telemetry.edges(60)
    assert (edge["requests"], edge["success_rate"], edge["stale"]) == (18, 1.0, False)
    [row] = telemetry.services(60)
    assert row == {
        "name": "api",
        "namespace": "shop",
        "requests": 20,
        "success_rate": 0.9,
        "rps": 2.0,
        "p50_ms": 5.0,
        "p95_ms": 9.5,
        "p99_ms": 9.9,
        # Called from outside the mesh only: no caller's proxy says what callers got.
        "effective_success_rate": None,
        "effective_rps": None,
        "actual_success_rate": 0.9,
        "retries": None,
        "stale": False,
    }


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, "this is not prometheus text\n", "not a Prometheus sample"),
        (500, "boom", "answered 500"),
    ],
    ids=["malformed metrics", "an error status"],
)
@pytest.mark.asyncio
async def test_a_proxy_with_bad_metrics_is_stale_not_a_crash(
    telemetry: Telemetry, fake_proxy: FakeProxy, status: int, body: str, error: str
) -> None:
    for ok in (0, 5):
        fake_proxy.body = metrics_text(ok=ok, failed=0)
        await telemetry.scrape_once()
        advance(telemetry, 5)
    fake_proxy.status, fake_proxy.body = status, body
    await telemetry.scrape_once()
    [row] = telemetry.services(60)
    assert row["stale"] is True
    assert row["requests"] == 5  # what it said before it went bad still counts
    [target] = telemetry.target_status()
    assert target["stale"] and error in target["error"]
    [edge] = telemetry.edges(60)
    assert (edge["src_name"], edge["name"], edge["requests"]) == ("api", "db", 5)
    assert edge["stale"] is True  # the caller's proxy is the one that went bad


@pytest.mark.asyncio
async def test_a_proxy_that_is_down_is_stale(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    store = SqliteStore(tmp_path / "store.db")
    store.apply(objects(closed))
    t = Telemetry(store, interval=5, clock=Clock())
    await t.start(scrape=False)
    try:
        await t.scrape_once()
        [row] = t.services(60)
        assert (row["name"], row["requests"], row["stale"]) == ("api", 0, True)
        [target] = t.target_status()
        assert target["stale"] and target["error"]
    finally:
        await t.stop()
        store.close()


@pytest.mark.asyncio
async def test_the_file_sd_file_lists_proxies_and_the_control_plane(
    telemetry: Telemetry, fake_proxy: FakeProxy, tmp_path: Path
) -> None:
    fake_proxy.body = metrics_text(ok=0, failed=0)
    await telemetry.scrape_once()
    groups = json.loads((tmp_path / "sd" / "targets.json").read_text())
    assert groups == [
        {"targets": ["127.0.0.1:15000"], "labels": {"component": "control-plane"}},
        {
            "targets": [f"127.0.0.1:{fake_proxy.port}"],
            "labels": {"component": "proxy", "namespace": "shop", "workload": "api-1"},
        },
    ]


def test_only_workloads_with_an_admin_port_are_targets() -> None:
    with_port, service = objects(4191)
    without_port, _ = objects(None)
    without_port["metadata"]["name"] = "api-2"
    [target] = targets_from([with_port, without_port], [service])
    assert (target.workload, target.address, target.services) == (
        "api-1",
        "127.0.0.1:4191",
        ("api",),
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1m", 60), ("15m", 900), ("90", 90), ("1.5m", 90)],
    ids=["seconds", "minutes", "the longest window", "a bare number is seconds", "fractions"],
)
def test_windows_are_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["0s", "16m", "1d", "soon", ""],
    ids=["zero", "longer than kept", "days", "words", "empty"],
)
def test_a_bad_window_is_refused(text: str) -> None:
    with pytest.raises(BadWindow):
        parse_duration(text)
