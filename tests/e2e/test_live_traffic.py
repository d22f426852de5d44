"""Tap, top, access logs and tracing end to end: a control plane, two `gossamer run`
workloads, real curl, the CLI, and an OTLP receiver decoding with the OpenTelemetry
project's own classes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
        for w in workloads:
            w.stop()
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
