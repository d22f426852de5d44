"""Requests cross the mesh: real control plane, real `gossamer run` proxies, curl, openssl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

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

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
"""


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-s", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


@pytest.fixture
def mesh(control_plane: ControlPlaneProcess, tmp_path: Path) -> Iterator[dict[str, Workload]]:
    control_plane.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    started: dict[str, Workload] = {}
    try:
        for name in ("echo-1", "echo-2"):
            started[name] = run_workload(
                control_plane, tmp_path, name, service_account="echo", labels={"app": "echo"},
                app=echo_app(name, port := free_port()), port=f"http=8080:{port}",
            )  # fmt: skip
        started["client"] = run_workload(
            control_plane, tmp_path, "client", service_account="client",
            labels={"app": "client"}, app=sleeper(),
        )  # fmt: skip
        for w in started.values():
            w.wait_ready()
        # The proxies are ready before their apps listen (the app starts second):
        # wait until both replicas answer through the mesh.
        deadline = time.monotonic() + 30
        while set(served_by(started["client"].outbound, 6)) != {"echo-1", "echo-2"}:
            assert time.monotonic() < deadline, "echo replicas never both answered"
            time.sleep(0.2)
        yield started
    finally:
        stop_all(started.values())


def served_by(outbound: str, n: int, url: str = "http://echo.shop/") -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        r = curl("-x", f"http://{outbound}", "-D", "-", "-o", "/dev/null", url)
        status = r.stdout.split(" ", 2)[1] if r.stdout.startswith("HTTP/") else "none"
        who = [line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
               if line.lower().startswith("x-served-by:")]  # fmt: skip
        seen[who[0] if who and status == "200" else f"failed:{status}"] += 1
    return seen


def test_curl_through_the_outbound_listener_reaches_the_service(
    mesh: dict[str, Workload],
) -> None:
    out = mesh["client"].outbound
    # Absolute-form, as HTTP_PROXY sends it.
    r = curl("-x", f"http://{out}", "http://echo.shop/hello?x=1")
    body = json.loads(r.stdout)
    assert body["servedBy"] in {"echo-1", "echo-2"}
    assert body["path"] == "/hello?x=1"
    # Origin-form with a Host header, in each of the Kubernetes name forms.
    for host in ("echo", "echo.shop", "echo.shop.svc.cluster.local", "echo.shop:80"):
        r = curl("-H", f"Host: {host}", f"http://{out}/by-host")
        assert json.loads(r.stdout)["path"] == "/by-host", host


def test_an_unknown_host_gets_an_error_that_says_why(mesh: dict[str, Workload]) -> None:
    r = curl("-D", "-", "-H", "Host: nothing.shop", f"http://{mesh['client'].outbound}/")
    status = r.stdout.split()[1]
    assert status in {"404", "502", "503"}
    assert "gossamer-error:" in r.stdout.lower()
    assert "nothing.shop" in r.stdout


def test_traffic_between_proxies_is_tls13_and_needs_a_mesh_certificate(
    mesh: dict[str, Workload], tmp_path: Path
) -> None:
    inbound = mesh["echo-1"].inbound
    request = "GET / HTTP/1.1\r\nHost: echo.shop\r\nConnection: close\r\n\r\n"
    # No client certificate: refused, and no HTTP answer.
    anonymous = subprocess.run(
        ["openssl", "s_client", "-connect", inbound, "-tls1_3", "-quiet"],
        input=request, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "HTTP/1.1" not in anonymous.stdout
    assert "alert" in anonymous.stderr.lower() or anonymous.returncode != 0
    # TLS 1.2 is not offered at all.
    old = subprocess.run(["openssl", "s_client", "-connect", inbound, "-tls1_2"],
                         input="", capture_output=True, text=True, timeout=30)  # fmt: skip
    assert old.returncode != 0
    assert "Cipher    : 0000" in old.stdout  # no cipher was ever agreed
    # With the client proxy's own mesh certificate: TLS 1.3 and an answer from echo-1.
    state = mesh["client"].state_dir
    ok = subprocess.run(
        ["openssl", "s_client", "-connect", inbound, "-cert", str(state / "cert.pem"),
         "-key", str(state / "key.pem"), "-CAfile", str(state / "bundle.pem"),
         "-servername", "p8080.echo-1.shop.gossamer", "-alpn", "gossamer/h1", "-ign_eof"],
        input=request, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "TLSv1.3" in ok.stdout, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "Verify return code: 0 (ok)" in ok.stdout
    assert '"servedBy":"echo-1"' in ok.stdout.replace(" ", "")


def test_a_workload_that_goes_away_stops_receiving_traffic(
    mesh: dict[str, Workload], control_plane: ControlPlaneProcess
) -> None:
    out = mesh["client"].outbound
    # Requests keep coming while echo-2 shuts down: it leaves the mesh and drains
    # before its app stops, so none of them fails.
    stopper = threading.Thread(target=mesh["echo-2"].stop)
    stopper.start()
    during: Counter[str] = Counter()
    while stopper.is_alive():
        during += served_by(out, 2)
    stopper.join()
    assert not [k for k in during if k.startswith("failed")], during
    listed = control_plane.cli("get", "wl", "-n", "shop", "-o", "json", check=True).stdout
    assert "echo-2" not in [w["metadata"]["name"] for w in json.loads(listed)["items"]]
    assert served_by(out, 20) == Counter({"echo-1": 20})


def test_a_workload_whose_app_is_not_listening_yet_gets_no_traffic(
    mesh: dict[str, Workload], control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    port = free_port()
    late = run_workload(
        control_plane, tmp_path, "echo-3", service_account="echo", labels={"app": "echo"},
        app=["sh", "-c", f"sleep 3; exec {' '.join(echo_app('echo-3', port))}"],
        port=f"http=8080:{port}",
    )  # fmt: skip
    try:
        late.wait_ready()
        status = json.loads(
            control_plane.cli("get", "wl", "echo-3", "-n", "shop", "-o", "json").stdout
        )["status"]
        assert [c["status"] for c in status["conditions"] if c["type"] == "Ready"] == ["False"]
        # While its app sleeps, echo-3 is registered but no endpoint: nothing fails.
        seen = served_by(mesh["client"].outbound, 20)
        assert set(seen) <= {"echo-1", "echo-2"}, seen
        deadline = time.monotonic() + 20
        while True:
            wl = json.loads(
                control_plane.cli("get", "wl", "echo-3", "-n", "shop", "-o", "json").stdout
            )
            if [c["status"] for c in wl["status"]["conditions"] if c["type"] == "Ready"] == [
                "True"
            ]:
                break
            assert time.monotonic() < deadline, "echo-3 never became ready"
            time.sleep(0.2)
    finally:
        late.stop()


def test_requests_keep_flowing_when_the_control_plane_dies(
    mesh: dict[str, Workload], control_plane: ControlPlaneProcess
) -> None:
    out = mesh["client"].outbound
    assert sum(served_by(out, 5).values()) == 5
    control_plane.proc.send_signal(signal.SIGKILL)
    control_plane.proc.wait(timeout=10)
    seen = served_by(out, 30)
    assert not [k for k in seen if k.startswith("failed")], seen
    assert set(seen) <= {"echo-1", "echo-2"}
    # New connections to the peers are made with the certificates proxies already hold.
    r = curl("-x", f"http://{out}", "-H", "Connection: close", "http://echo.shop/again")
    assert json.loads(r.stdout)["path"] == "/again"


def test_gossamer_run_exits_with_the_apps_exit_code_and_deregisters(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    w = run_workload(
        control_plane, tmp_path, "job", service_account="job", labels={"app": "job"},
        app=["sh", "-c", 'test -n "$HTTP_PROXY" && test -n "$GOSSAMER_OUTBOUND" && exit 7'],
    )  # fmt: skip
    try:
        assert w.proc.wait(timeout=60) == 7, w.log.read_text()
    finally:
        w.stop()
    listed = control_plane.cli("get", "wl", "-n", "shop", "-o", "json", check=True).stdout
    assert json.loads(listed)["items"] == []


def _demo_processes() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "gossamer-demo-" in cmd or "gossamer.demo.apps" in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def test_the_demo_runs_and_leaves_no_process_behind() -> None:
    assert _demo_processes() == []
    result = subprocess.run([*GOSSAMER, "demo", "--duration", "6", "--interval", "2"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for service in ("web", "catalog", "ratings"):
        assert f"demo       {service}" in result.stdout
    # Traffic flowed: the last table shows requests per second for web.
    last = result.stdout.rsplit("SERVICE", 1)[1]
    web_row = next(line for line in last.splitlines() if " web " in f" {line} ")
    assert float(web_row.split()[3]) > 0
    assert "demo stopped" in result.stdout
    time.sleep(0.5)
    assert _demo_processes() == []


def test_certificates_renew_before_expiry_without_failing_requests(tmp_path: Path) -> None:
    cp = start_control_plane(tmp_path / "cp", "--certificate-ttl", "12s")
    workloads: list[Workload] = []
    try:
        cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
        port = free_port()
        workloads.append(
            run_workload(
                cp,
                tmp_path,
                "echo-1",
                service_account="echo",
                labels={"app": "echo"},
                app=echo_app("echo-1", port),
                port=f"http=8080:{port}",
            )
        )
        workloads.append(
            run_workload(cp, tmp_path, "client", service_account="client", labels={}, app=sleeper())
        )
        for w in workloads:
            w.wait_ready()
        client = workloads[1]
        deadline = time.monotonic() + 30
        while served_by(client.outbound, 1) != Counter({"echo-1": 1}):
            assert time.monotonic() < deadline, "echo never answered"
            time.sleep(0.2)
        first = {w.name: (w.state_dir / "cert.pem").read_text() for w in workloads}
        # Well past one lifetime of the first certificates: renewal must have happened
        # (at two thirds of 12 s) on both sides, with no request lost meanwhile.
        seen: Counter[str] = Counter()
        end = time.monotonic() + 16
        while time.monotonic() < end:
            seen += served_by(client.outbound, 5)
            time.sleep(0.2)
        assert set(seen) == {"echo-1"}, seen
        for w in workloads:
            assert (w.state_dir / "cert.pem").read_text() != first[w.name], w.name
        # A fresh connection now handshakes with renewed certificates on both ends.
        r = curl("-x", f"http://{client.outbound}", "-H", "Connection: close",
                 "http://echo.shop/after-renewal")  # fmt: skip
        assert json.loads(r.stdout)["path"] == "/after-renewal"
    finally:
        stop_all(workloads)
        stop_process(cp.proc)
