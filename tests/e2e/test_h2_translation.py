"""HTTP/2 clients of an HTTP/1.1-only app, end to end: a control plane, two `gossamer
run` workloads, real curl (--http2-prior-knowledge), h2load and grpcio, and tap,
access logs and spans for those streams, read as users read them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
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
from tests.e2e.test_live_traffic import Receiver, _finish, _start_cli

pytestmark = pytest.mark.e2e

# No appProtocol: the app is taken to speak HTTP/1.1 only.
SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: board, namespace: shop}
spec:
  selector: {app: board}
  ports: [{name: http, port: 80, targetPort: http}]
"""
# The demo's echo app (aiohttp, HTTP/1.1 only), and POST /echo-body answering with the
# request's body as it arrives.
APP = """
import sys
from aiohttp import web
from gossamer.demo.apps import echo

@web.middleware
async def echo_body(request, handler):
    if request.path != "/echo-body":
        return await handler(request)
    response = web.StreamResponse()
    await response.prepare(request)
    async for piece in request.content.iter_any():
        await response.write(piece)
    return response

app = echo(sys.argv[2])
app.middlewares.append(echo_body)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""
TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "10f067aa0ba902b7"


@dataclass
class Mesh:
    cp: ControlPlaneProcess
    client: Workload
    server: Workload
    receiver: Receiver
    access_log: Path

    @property
    def outbound_port(self) -> str:
        return self.client.outbound.rpartition(":")[2]


def curl_h2(mesh: Mesh, path: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """curl speaking HTTP/2 with prior knowledge to the client workload's proxy."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--http2-prior-knowledge",
         "--connect-to", f"board.shop:80:127.0.0.1:{mesh.outbound_port}", *args,
         f"http://board.shop{path}"],
        capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("h2")
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    access_log = tmp / "board-access.log"
    cp = start_control_plane(tmp / "cp")
    workloads: list[Workload] = []
    try:
        cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
        port = free_port()
        server = run_workload(
            cp, tmp, "board-1", service_account="board", labels={"app": "board"},
            app=[sys.executable, "-c", APP, str(port), "board-1"], port=f"http=8080:{port}",
            env={**otel, "GOSSAMER_ACCESS_LOG": str(access_log)},
        )  # fmt: skip
        workloads.append(server)
        client = run_workload(
            cp, tmp, "caller-1", service_account="caller", labels={"app": "caller"},
            app=sleeper(), env=otel,
        )  # fmt: skip
        workloads.append(client)
        for w in workloads:
            w.wait_ready()
        m = Mesh(cp, client, server, receiver, access_log)
        deadline = time.monotonic() + 30
        while curl_h2(m, "/warm-up", "-o", "/dev/null", "-w", "%{http_code}").stdout != b"200":
            assert time.monotonic() < deadline, "board never answered through the mesh"
            time.sleep(0.2)
        yield m
    finally:
        stop_all(workloads)
        stop_process(cp.proc)
        receiver.shutdown()
        receiver.server_close()


def test_curl_over_http2_gets_the_http11_apps_answer(mesh: Mesh) -> None:
    r = curl_h2(mesh, "/hello?x=1", "-w", "\n%{http_version} %{http_code}")
    assert r.returncode == 0, r.stderr
    body, _, status = r.stdout.rpartition(b"\n")
    assert status == b"2 200"
    seen = json.loads(body)
    assert (seen["servedBy"], seen["method"], seen["path"]) == ("board-1", "GET", "/hello?x=1")
    assert seen["headers"]["Host"] == "board.shop"


def test_a_post_of_a_few_megabytes_round_trips_intact(mesh: Mesh, tmp_path: Path) -> None:
    sent = tmp_path / "upload"
    sent.write_bytes(os.urandom(3 * 1024 * 1024))
    got = tmp_path / "download"
    r = curl_h2(mesh, "/echo-body", "--data-binary", f"@{sent}", "-o", str(got),
                "-w", "%{http_version} %{http_code}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"2 200"
    assert got.read_bytes() == sent.read_bytes()


def test_h2load_completes_every_request_to_the_http11_app(mesh: Mesh) -> None:
    r = subprocess.run(
        ["h2load", "-n", "200", "-c", "2", "-m", "10", "-H", ":authority: board.shop",
         f"http://127.0.0.1:{mesh.outbound_port}/load"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "200 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout + r.stderr
    assert "200 2xx" in r.stdout, r.stdout


def test_a_grpc_client_of_a_port_not_declared_grpc_gets_a_clear_error(mesh: Mesh) -> None:
    options = [("grpc.default_authority", "board.shop")]
    with grpc.insecure_channel(f"127.0.0.1:{mesh.outbound_port}", options=options) as channel:
        call = channel.unary_unary("/shop.Board/Post")
        with pytest.raises(grpc.RpcError) as err:
            call(b"hello", timeout=20)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    details = err.value.details() or ""
    assert "not declared gRPC" in details and "appProtocol grpc" in details


def test_tap_shows_an_http2_request_made_after_it_started(mesh: Mesh) -> None:
    proc = _start_cli(mesh.cp, "tap", "board", "-n", "shop", "--path", "/tapped-h2",
                      "--direction", "inbound", "--max", "1", "-o", "json")  # fmt: skip
    try:
        r = curl_h2(mesh, "/tapped-h2/1", "-o", "/dev/null")
        assert r.returncode == 0, r.stderr
    finally:
        out = _finish(proc)
    [event] = [json.loads(line) for line in out.splitlines()]
    assert (event["protocol"], event["method"], event["path"], event["status"]) == (
        "HTTP/2", "GET", "/tapped-h2/1", 200,
    )  # fmt: skip
    assert event["source"]["identity"] == "spiffe://cluster.local/ns/shop/sa/caller"
    assert event["destination"]["workload"] == "board-1"
    # (latency: the loop's clock ticks in milliseconds, so a fast answer may read 0)
    assert event["grpc_status"] is None and event["latency_ms"] > 0


def test_the_access_log_has_a_line_for_an_http2_request(mesh: Mesh) -> None:
    assert curl_h2(mesh, "/logged-h2", "-o", "/dev/null").returncode == 0
    deadline = time.monotonic() + 10
    while True:
        text = mesh.access_log.read_text() if mesh.access_log.exists() else ""
        logged = [e for e in map(json.loads, text.splitlines()) if e["path"] == "/logged-h2"]
        if logged or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [event] = logged
    assert (event["direction"], event["protocol"], event["status"]) == ("inbound", "HTTP/2", 200)
    assert event["source"]["service"] == "caller-1" and event["trace_id"]


def test_spans_for_an_http2_request_through_two_hops_share_one_trace(mesh: Mesh) -> None:
    r = curl_h2(mesh, "/traced-h2", "-H", f"traceparent: 00-{TRACE_ID}-{PARENT}-01")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in mesh.receiver.spans() if s.trace_id.hex() == TRACE_ID]
        if len(spans) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    by_kind = {s.kind: s for s in spans}
    assert set(by_kind) == {2, 3}, spans  # SERVER (board's inbound), CLIENT (caller's)
    assert by_kind[3].parent_span_id.hex() == PARENT
    assert by_kind[2].parent_span_id == by_kind[3].span_id
    attrs = {kv.key: kv.value for kv in by_kind[2].attributes}
    assert attrs["network.protocol.version"].string_value == "2"
    assert attrs["url.path"].string_value == "/traced-h2"
    assert attrs["gossamer.source.identity"].string_value == (
        "spiffe://cluster.local/ns/shop/sa/caller"
    )
    # The app is a child of the inbound span, as for HTTP/1.1.
    headers = json.loads(r.stdout)["headers"]
    assert headers["traceparent"] == f"00-{TRACE_ID}-{by_kind[2].span_id.hex()}-01"
