"""The dashboard in headless Chromium, driven over the DevTools protocol: the window
selector drives the charts, a service younger than the window starts with a gap, no
table scrolls sideways at 1400 px, and edge labels overlap neither each other nor the
nodes (issue 19). DOM and layout are asserted, not screenshots."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_all,
    stop_process,
)

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: ratings-and-reviews-backend, namespace: storefront-production}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: gossamer.dev/v1alpha1
kind: RetryPolicy
metadata: {name: ratings, namespace: storefront-production}
spec:
  targetRefs: [{group: "", kind: Service, name: ratings-and-reviews-backend}]
  attempts: 2
  retryOn: [5xx]
"""


@dataclass
class Mesh:
    cp: ControlPlaneProcess
    workloads: list[Workload]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Two callers of one service with a long name in a long namespace, with traffic."""
    tmp = tmp_path_factory.mktemp("dashboard")
    cp = start_control_plane(tmp / "cp", "--scrape-interval", "0.5")
    workloads: list[Workload] = []
    ns = "storefront-production"
    try:
        cp.cli("apply", "-f", "-", stdin=SERVICES, check=True)
        port = free_port()
        app = [sys.executable, "-m", "gossamer.demo.apps", "ratings", "--failure-rate", "0.1",
               "--listen", str(port)]  # fmt: skip
        workloads.append(
            run_workload(cp, tmp, "ratings-1", namespace=ns, service_account="ratings",
                         labels={"app": "ratings"}, app=app, port=f"http=8080:{port}")
        )  # fmt: skip
        for caller in ("web-checkout-frontend", "mobile-api-gateway"):
            workloads.append(
                run_workload(cp, tmp, f"{caller}-1", namespace=ns, service_account=caller,
                             labels={"app": caller}, app=sleeper())
            )  # fmt: skip
        for w in workloads:
            w.wait_ready()
        cp.cli("check", "--wait", "30s", "--workload", f"{ns}/ratings-1", check=True)
        for w in workloads[1:]:
            proxy = urllib.request.ProxyHandler({"http": f"http://{w.outbound}"})
            opener = urllib.request.build_opener(proxy)
            for i in range(20):
                with contextlib.suppress(OSError):  # a 500 from the flaky app is traffic too
                    opener.open(f"http://ratings-and-reviews-backend.{ns}/ratings/{i}", timeout=10)
        yield Mesh(cp, workloads)
    finally:
        stop_all(workloads)
        stop_process(cp.proc)


class Browser:
    """One headless Chromium page, evaluated over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=30)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"never true: {expression}")
            await asyncio.sleep(0.25)


def with_browser(url: str, steps: Any) -> Any:
    """Run `steps(browser)` against `url` in a 1400x900 headless Chromium."""
    assert CHROMIUM is not None, "Debian's chromium is needed (.ci/run installs it)"

    async def run(port: int) -> Any:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [t for t in await resp.json() if t["type"] == "page"]
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                browser = Browser(ws)
                await browser.call("Page.navigate", url=url)
                return await steps(browser)

    # Chromium's helpers may still write to the profile as they go: cleanup is lenient.
    with tempfile.TemporaryDirectory(
        prefix="gossamer-chromium-", ignore_cleanup_errors=True
    ) as profile:
        proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            active = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (active.exists() and active.read_text().strip()):
                assert time.monotonic() < deadline and proc.poll() is None, "no DevTools port"
                time.sleep(0.1)
            return asyncio.run(run(int(active.read_text().split()[0])))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its zygote and renderers too
            proc.wait()


NO_SIDEWAYS_SCROLL = """(() => {
  const wide = [...document.querySelectorAll("section.panel")]
    .filter((p) => p.scrollWidth > p.clientWidth + 1)
    .map((p) => p.querySelector("h2").textContent + ": " + p.scrollWidth + ">" + p.clientWidth);
  if (document.documentElement.scrollWidth > window.innerWidth) wide.push("page");
  return wide;
})()"""

LABEL_OVERLAPS = """(() => {
  const box = (el) => {
    const b = el.getBBox();
    return { x: b.x, y: b.y, w: b.width, h: b.height };
  };
  const meet = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
  const labels = [...document.querySelectorAll("svg.topology .edge-label")].map(box);
  const nodes = [...document.querySelectorAll("svg.topology .node rect")].map(box);
  const found = [];
  labels.forEach((a, i) => labels.slice(i + 1).forEach((b) => {
    if (meet(a, b)) found.push("label/label");
  }));
  labels.forEach((a) => nodes.forEach((n) => { if (meet(a, n)) found.push("label/node"); }));
  return { labels: labels.length, found };
})()"""


def test_the_overview_fits_1400px_and_edge_labels_do_not_overlap(mesh: Mesh) -> None:
    async def steps(b: Browser) -> Any:
        await b.until("document.querySelectorAll('svg.topology .edge-label').length >= 2")
        await b.until("[...document.querySelectorAll('td')].some((td) => td.textContent === '20')")
        return (
            await b.eval(NO_SIDEWAYS_SCROLL),
            await b.eval(LABEL_OVERLAPS),
            await b.eval(
                "[...document.querySelectorAll('section.panel h2')].map((h) => h.textContent)"
            ),
        )

    wide, overlaps, titles = with_browser(mesh.cp.api + "/", steps)
    assert wide == []
    assert overlaps == {"labels": 2, "found": []}
    # Each view says its window, so its numbers can be compared with `stat -w`.
    assert "Edges (last 1m, as the callers counted)" in titles


def test_the_window_selector_drives_the_charts_and_a_new_service_starts_with_a_gap(
    mesh: Mesh,
) -> None:
    chart = "document.querySelector('.charts svg.chart-svg[aria-label=\"Requests per second\"]')"

    async def steps(b: Browser) -> Any:
        await b.until(f"{chart} && {chart}.dataset.points === '12'")  # 1m in 5s steps
        one = await b.eval(f"[{chart}.dataset.firstPoint, document.body.innerText.includes('-1m')]")
        await b.eval(
            "(() => { const w = document.getElementById('window'); w.value = '15m';"
            " w.dispatchEvent(new Event('change')); return true; })()"
        )
        await b.until(f"{chart} && {chart}.dataset.points === '60'")  # 15m in 15s steps
        fifteen = await b.eval(f"Number({chart}.dataset.firstPoint)")
        wide = await b.eval(NO_SIDEWAYS_SCROLL)
        policy = await b.eval("document.querySelector('[data-policy=\"RetryPolicy/ratings\"]')"
                              ".textContent")  # fmt: skip
        return one, fifteen, wide, policy

    url = mesh.cp.api + "/#/service/storefront-production/ratings-and-reviews-backend"
    (first_of_1m, axis), first_of_15m, wide, policy = with_browser(url, steps)
    assert axis is True and int(first_of_1m) >= 0
    # The mesh is a minute or two old: most of 15 minutes is before it, a gap, not 0.
    assert first_of_15m > 40
    assert wide == []
    # The service page shows each policy's target and settings, as `gossamer get` does.
    assert policy.startswith(
        "RetryPolicy storefront-production/ratings → Service/ratings-and-reviews-backend: "
        "attempts=2, "
    )


def test_a_series_step_before_the_first_scrape_is_no_data_not_zero() -> None:
    """What the dashboard draws as a gap: the proxy started at 35 s (scraped from 40 s),
    so the steps ending at 10, 20 and 30 s have no data; the one it started in has."""
    from gossamer.telemetry.golden import Totals
    from gossamer.telemetry.window import Scrape, series

    key = ("shop", "api")
    history = [
        Scrape(at=t, started_at=35.0, views={"service": {key: Totals(t - 40, 0, {})}})
        for t in (40.0, 45.0, 50.0, 55.0, 60.0)
    ]
    points = series([history], "service", key, end=60, window=60, step=10)
    assert [p.covered for p in points] == [False, False, False, True, True, True]
    assert [p.golden.requests for p in points][-2:] == [10, 10]
