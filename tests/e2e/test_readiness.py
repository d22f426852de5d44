"""The app's readiness, as the agent reports it: a probe that fails once or twice (a
busy app's backlog full for a moment, a late event loop) does not take the workload out
of the mesh; three failures in a row do (gossamer.readiness, Kubernetes' defaults).

Under load, a single slow connect used to flip the workload to not ready for a second:
every client's endpoints emptied and every call was answered "no endpoints" (seen in the
gRPC streaming benchmark as calls that succeeded with no data)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from gossamer.readiness import FAILURE_THRESHOLD, ReadinessGate
from tests.e2e.conftest import ControlPlaneProcess, free_port, run_workload
from tests.hosts.conftest import wait_until

# Listens on argv[1], its pid in argv[2]. SIGUSR1: stops listening for 1.5 s (two probe
# periods at most), then listens again. SIGUSR2: stops listening for good.
FLAKY_APP = """
import os, signal, socket, sys, threading, time
port = int(sys.argv[1])
open(sys.argv[2], "w").write(str(os.getpid()))
blip, gone = threading.Event(), threading.Event()
signal.signal(signal.SIGUSR1, lambda *_: blip.set())
signal.signal(signal.SIGUSR2, lambda *_: gone.set())
def listen():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    s.settimeout(0.05)
    return s
sock = listen()
while True:
    if gone.is_set():
        sock.close()
        time.sleep(600)
    if blip.is_set():
        blip.clear()
        sock.close()
        time.sleep(1.5)
        sock = listen()
    try:
        conn, _ = sock.accept()
        conn.close()
    except OSError:
        pass
"""


def test_the_gate_needs_failures_in_a_row_once_ready() -> None:
    gate = ReadinessGate()
    assert gate.observe(False) is False  # starting: not ready until a success
    assert gate.observe(True) is True
    for _ in range(FAILURE_THRESHOLD - 1):
        assert gate.observe(False) is True
    assert gate.observe(True) is True  # a success starts the count again
    for _ in range(FAILURE_THRESHOLD - 1):
        assert gate.observe(False) is True
    assert gate.observe(False) is False
    assert gate.observe(True) is True


def _lines(cp: ControlPlaneProcess, text: str) -> int:
    return cp.log.read_text().count(text)


@pytest.mark.e2e
def test_a_probe_failing_briefly_keeps_the_workload_and_a_dead_app_is_taken_out(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    port, pid_file = free_port(), tmp_path / "app.pid"
    w = run_workload(cp, tmp_path, "app-1", service_account="app", labels={"app": "app"},
                     app=[sys.executable, "-c", FLAKY_APP, str(port), str(pid_file)],
                     port=f"http=8080:{port}")  # fmt: skip
    try:
        w.wait_ready()
        wait_until(lambda: _lines(cp, "workload shop/app-1 is ready") >= 1, "never reported ready")
        not_ready = f"workload shop/app-1 is not ready: app not listening on 127.0.0.1:{port}"
        assert _lines(cp, not_ready) == 0
        app = int(pid_file.read_text())

        os.kill(app, signal.SIGUSR1)  # 1.5 s without a listener: one or two failed probes
        time.sleep(4.0)  # the listener is back, and a probe has seen it
        assert _lines(cp, not_ready) == 0, cp.log.read_text()

        os.kill(app, signal.SIGUSR2)  # gone for good: three failures in a row
        wait_until(lambda: _lines(cp, not_ready) == 1, "a dead app was never reported not ready")
    finally:
        w.stop()
