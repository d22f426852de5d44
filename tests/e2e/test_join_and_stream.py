"""A proxy's life with its control plane, with real processes: joining (or failing to,
clearly), a discovery stream that stays up on a quiet mesh, and a cache that never
carries one mesh's state into another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    GOSSAMER,
    ControlPlaneProcess,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_process,
)

pytestmark = pytest.mark.e2e

ECHO = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}%s]
"""


def _proxies(cp: ControlPlaneProcess) -> dict[str, dict]:
    out = subprocess.run(
        ["curl", "-s", "--max-time", "10", f"{cp.api}/v1/proxies"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return {p["workload"]: p for p in json.loads(out)["items"]}


def _until_connected(cp: ControlPlaneProcess, name: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        p = _proxies(cp).get(name)
        if p and p["upToDate"]:
            return p
        assert time.monotonic() < deadline, f"{name} never connected and caught up: {p}"
        time.sleep(0.2)


@pytest.mark.slow  # three minutes of quiet on purpose
@pytest.mark.timeout(300)
def test_a_quiet_mesh_keeps_its_stream_and_still_pushes_a_change_at_once(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=ECHO % "", check=True)
    w = run_workload(
        control_plane, tmp_path, "client", service_account="client", labels={"app": "client"},
        app=sleeper(), extra=("--upstream", f"echo.shop:80=127.0.0.1:{free_port()}"),
    )  # fmt: skip
    try:
        w.wait_ready()
        before = _until_connected(control_plane, "client")
        # Three minutes without a single change: only the control plane's pings flow.
        time.sleep(180)
        quiet = _proxies(control_plane)["client"]
        assert quiet["connectedSince"] == before["connectedSince"], "the stream was re-opened"
        assert "discovery:" not in w.log.read_text(), "the stream broke while the mesh was quiet"
        check = control_plane.cli("check", "-o", "json")
        rows = {r["workload"]: r for r in json.loads(check.stdout)["proxies"]}
        assert rows["client"]["state"] == "connected", check.stdout
        # A change now reaches the proxy on the stream it already has.
        applied = time.monotonic()
        port = ", {name: admin, port: 81, targetPort: 81}"
        control_plane.cli("apply", "-f", "-", stdin=ECHO % port, check=True)
        deadline = applied + 15
        while (p := _proxies(control_plane)["client"])["ackedVersion"] == before["ackedVersion"]:
            assert time.monotonic() < deadline, p
            time.sleep(0.02)
        print(f"after 180 s of quiet, the change was acknowledged in "
              f"{time.monotonic() - applied:.2f} s")  # fmt: skip
        assert p["upToDate"] and p["connectedSince"] == before["connectedSince"]
    finally:
        w.stop()


def test_a_cache_from_another_mesh_is_set_aside_and_the_proxy_joins_afresh(
    tmp_path: Path,
) -> None:
    discovery = f"127.0.0.1:{free_port()}"
    first = start_control_plane(tmp_path / "first", "--discovery", discovery)
    try:
        w = run_workload(first, tmp_path, "client", service_account="client",
                         labels={"app": "client"}, app=sleeper())  # fmt: skip
        try:
            w.wait_ready()
            _until_connected(first, "client")
        finally:
            w.stop()
    finally:
        stop_process(first.proc)
    # Another mesh (a new CA) at the same address; the same workload and state dir.
    second = start_control_plane(tmp_path / "second", "--discovery", discovery)
    try:
        w = run_workload(second, tmp_path, "client", service_account="client",
                         labels={"app": "client"}, app=sleeper())  # fmt: skip
        try:
            w.wait_ready()
            _until_connected(second, "client")
            assert "is not for this control plane" in w.log.read_text()
            assert "serving the last snapshot" not in w.log.read_text()
        finally:
            w.stop()
    finally:
        stop_process(second.proc)


def _proxy(cp_discovery: str, tmp: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSAMER_")}
    return subprocess.Popen(
        [*GOSSAMER, "proxy", "--name", "lost", "-n", "shop", "--discovery", cp_discovery,
         "--state-dir", str(tmp / "state"), "--inbound", f"127.0.0.1:{free_port()}",
         "--outbound", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def test_a_proxy_without_a_join_token_stops_at_once_and_says_what_to_pass(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    proc = _proxy(control_plane.discovery, tmp_path)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert proc.returncode != 0
    assert "no join token" in out and "--join-token" in out, out
    assert "retrying" not in out


def test_gossamer_run_without_a_join_token_fails_with_the_proxys_reason(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSAMER_")}
    started = time.monotonic()
    result = subprocess.run(
        [*GOSSAMER, "run", "--name", "lost", "-n", "shop", "--discovery", control_plane.discovery,
         "--state-dir", str(tmp_path / "state"), "--inbound", f"127.0.0.1:{free_port()}",
         "--outbound", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}",
         "--", "true"],
        capture_output=True, text=True, env=env, timeout=90,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no join token" in result.stderr, result.stderr
    assert "not ready after 60s" not in result.stderr
    print(f"gossamer run gave up after {time.monotonic() - started:.1f} s")


def test_a_proxy_still_joining_an_unreachable_control_plane_stops_on_a_signal(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    token = control_plane.cli(
        "token", "create", "-n", "shop", "--service-account", "default", check=True
    ).stdout.strip()
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = _proxy(nowhere, tmp_path, "--join-token", token)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # it is trying, and says so
                if "control plane unreachable" in line:
                    break
            proc.send_signal(sig)
            proc.wait(timeout=15)
        finally:
            stop_process(proc)
            proc.stdout.close()
        assert proc.returncode is not None
