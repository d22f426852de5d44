"""Tap, top, access logs and tracing end to end: a control plane, two `gossamer run`
workloads, real curl, the CLI, and an OTLP receiver decoding with the OpenTelemetry
project's own classes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import (
    GOSSAMER,
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

pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: meter, namespace: shop}
spec:
  selector: {app: meter}
  ports: [{name: http, port: 80, targetPort: http}]
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP receiver: each POST /v1/traces body, decoded."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.requests: list[Any] = []

    def spans(self) -> list[Any]:
        return [s for r in list(self.requests) for rs in r.resource_spans
                for ss in rs.scope_spans for s in ss.spans]  # fmt: skip


class _ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = pb.ExportTraceServiceRequest()
        request.ParseFromString(body)
        assert isinstance(self.server, Receiver)
        self.server.requests.append(request)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Live:
    cp: ControlPlaneProcess
    client: Workload
    server: Workload
    receiver: Receiver
    access_log: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    access_log = tmp / "meter-access.log"
    cp = start_control_plane(tmp / "cp")
    workloads: list[Workload] = []
    try:
        cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
        port = free_port()
        server = run_workload(
            cp, tmp, "meter-1", service_account="meter", labels={"app": "meter"},
            app=echo_app("meter-1", port), port=f"http=8080:{port}",
            env={**otel, "GOSSAMER_ACCESS_LOG": str(access_log)},
        )  # fmt: skip
        workloads.append(server)
        client = run_workload(
            cp, tmp, "client-1", service_account="client", labels={"app": "client"},
            app=sleeper(), env=otel,
        )  # fmt: skip
        workloads.append(client)
        for w in workloads:
            w.wait_ready()
        deadline = time.monotonic() + 30
        while _curl(client, "/warm-up")[0] != "200":
            assert time.monotonic() < deadline, "meter never answered through the mesh"
            time.sleep(0.2)
        yield Live(cp, client, server, receiver, access_log)
    finally:
        stop_all(workloads)
        stop_process(cp.proc)
        receiver.shutdown()
        receiver.server_close()


def _curl(client: Workload, path: str, *headers: str) -> tuple[str, str]:
    args = ["curl", "-s", "--max-time", "10", "-w", "\n%{http_code}", "-x",
            f"http://{client.outbound}", f"http://meter.shop{path}"]  # fmt: skip
    for h in headers:
        args += ["-H", h]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    body, _, code = r.stdout.rpartition("\n")
    return code, body


def _start_cli(cp: ControlPlaneProcess, *args: str) -> subprocess.Popen[str]:
    """A streaming CLI command, once it says on stderr that the tap has started."""
    proc = subprocess.Popen(
        [*GOSSAMER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cp.env(), start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()  # bounded: the tap answers or the process exits
    if not line.startswith("tapping "):
        stop_process(proc)  # type: ignore[arg-type]
        raise AssertionError(f"gossamer {' '.join(args)}: {line}{proc.stderr.read()}")
    return proc


def _finish(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            stop_process(proc)  # type: ignore[arg-type]
    return out


def test_tap_shows_a_request_made_after_it_started(live: Live) -> None:
    proc = _start_cli(live.cp, "tap", "meter", "-n", "shop", "--path", "/tapped",
                      "--direction", "inbound", "--max", "1", "-o", "json")  # fmt: skip
    try:
        assert _curl(live.client, "/tapped/1")[0] == "200"
    finally:
        out = _finish(proc)
    [event] = [json.loads(line) for line in out.splitlines()]
    assert (event["method"], event["path"], event["status"]) == ("GET", "/tapped/1", 200)
    assert event["source"]["identity"] == "spiffe://cluster.local/ns/shop/sa/client"
    assert event["destination"]["workload"] == "meter-1"
    assert event["latency_ms"] > 0 and proc.returncode == 0


def test_a_tap_of_a_service_that_does_not_exist_is_a_clear_error(live: Live) -> None:
    r = live.cp.cli("tap", "nope", "-n", "shop", "--max", "1")
    assert r.returncode == 1
    assert "service shop/nope not found" in r.stderr


def test_top_ranks_the_busiest_paths_of_a_service(live: Live) -> None:
    proc = _start_cli(live.cp, "top", "meter", "-n", "shop", "--duration", "6s", "-o", "json")
    try:
        for path in ("/top/a", "/top/a?page=2", "/top/a", "/top/b"):
            assert _curl(live.client, path)[0] == "200"
    finally:
        out = _finish(proc)
    rows = json.loads(out)
    assert [(r["method"], r["path"], r["requests"]) for r in rows] == [
        ("GET", "/top/a", 3),
        ("GET", "/top/b", 1),
    ]
    assert rows[0]["success_rate"] == 1.0 and rows[0]["best_ms"] <= rows[0]["worst_ms"]


def test_spans_for_a_request_through_two_hops_share_one_trace_with_parent_links(
    live: Live,
) -> None:
    code, _ = _curl(live.client, "/traced", f"traceparent: 00-{TRACE_ID}-{PARENT}-01")
    assert code == "200"
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in live.receiver.spans() if s.trace_id.hex() == TRACE_ID]
        if len(spans) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    by_kind = {s.kind: s for s in spans}
    assert set(by_kind) == {2, 3}, spans  # SERVER (meter's inbound), CLIENT (client's outbound)
    assert by_kind[3].parent_span_id.hex() == PARENT
    assert by_kind[2].parent_span_id == by_kind[3].span_id
    names = {kv.key: kv.value.string_value for kv in by_kind[2].attributes}
    assert names["gossamer.destination.workload"] == "meter-1"
    assert names["gossamer.source.identity"] == "spiffe://cluster.local/ns/shop/sa/client"


def test_the_access_log_has_a_json_line_per_request(live: Live) -> None:
    assert _curl(live.client, "/logged")[0] == "200"
    deadline = time.monotonic() + 10
    while True:
        text = live.access_log.read_text() if live.access_log.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        logged = [e for e in lines if e["path"] == "/logged"]
        if logged or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [event] = logged
    assert (event["direction"], event["status"]) == ("inbound", 200)
    assert event["trace_id"] and event["source"]["service"] == "client-1"
    assert os.path.getsize(live.access_log) > 0


class Page:
    """One tab of a real headless Chromium, driven over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def eval(self, expression: str) -> Any:
        msg_id = next(self.ids)
        await self.ws.send_json(
            {"id": msg_id, "method": "Runtime.evaluate",
             "params": {"expression": expression, "returnByValue": True, "awaitPromise": True}}
        )  # fmt: skip
        async with asyncio.timeout(10):
            while True:
                reply = await self.ws.receive_json()
                if reply.get("id") == msg_id:
                    break
        result = reply["result"]
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value or time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def chromium_page(url: str) -> AsyncIterator[Page]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None
    with tempfile.TemporaryDirectory(prefix="gossamer-chromium-") as profile:
        proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-port=0", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                assert proc.poll() is None, "chromium exited"
                assert time.monotonic() < deadline, "chromium never opened its DevTools port"
                await asyncio.sleep(0.1)
            port = port_file.read_text().split()[0]
            async with aiohttp.ClientSession(trust_env=False) as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    targets = await resp.json()
                [target] = [t for t in targets if t["type"] == "page"]
                async with session.ws_connect(target["webSocketDebuggerUrl"]) as ws:
                    yield Page(ws)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


STATUS = "(document.querySelector('[data-tap-status]')?.textContent || '')"
ROWS = "[...document.querySelectorAll('[data-tap-row]')].map((r) => r.textContent).join('\\n')"
CLICK = "document.querySelector('[data-tap-toggle]').click(), true"


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="needs Debian's chromium",
)
@pytest.mark.asyncio
async def test_the_dashboards_live_tap_shows_requests_made_after_it_started(live: Live) -> None:
    token = live.cp.token_file.read_text().strip()
    async with chromium_page(live.cp.api + "/#/service/shop/meter") as page:
        assert await page.until("Boolean(document.querySelector('[data-tap-toggle]'))")
        await page.eval(CLICK)  # no token yet: it says what is missing
        assert "needs an API token" in await page.until(STATUS + ".includes('token') && " + STATUS)

        await page.eval(f"sessionStorage.setItem('gossamer.adminToken', {json.dumps(token)})")
        await page.eval(CLICK)
        status = await page.until(STATUS + ".startsWith('Tapping') && " + STATUS)
        assert status == "Tapping 1 proxy(ies): meter-1", await page.eval(STATUS)
        for i in range(3):
            assert _curl(live.client, f"/dashboard-tap/{i}")[0] == "200"
        rows = await page.until(f"({ROWS}).includes('/dashboard-tap/2') && {ROWS}")
        assert rows, await page.eval(STATUS)
        for i in range(3):
            assert f"/dashboard-tap/{i}" in rows
        assert "spiffe://cluster.local/ns/shop/sa/client" in rows  # the caller's identity
        assert "client-1.shop" in rows and "meter-1.shop" in rows
        await asyncio.sleep(5.5)  # the page redraws every 5 s: the tap and its rows stay
        assert "/dashboard-tap/0" in await page.eval(ROWS)
        assert await page.eval(STATUS) == status

        await page.eval(CLICK)
        assert (await page.until(STATUS + ".startsWith('Stopped') && " + STATUS)).startswith(
            "Stopped (3 request(s))"
        )
        await page.eval("location.hash = '#/service/shop/nope'")
        await page.until("document.querySelector('h1')?.textContent.startsWith('nope')")
        await page.until("Boolean(document.querySelector('[data-tap-toggle]'))")
        await page.eval(CLICK)
        failed = await page.until(STATUS + ".startsWith('Tap failed') && " + STATUS)
        assert failed.startswith("Tap failed: service shop/nope not found"), failed
        assert await page.eval("document.body.getAttribute('data-js-errors')") is None
