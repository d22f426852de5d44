"""What a workload, or its app, can and cannot do to the mesh: real control plane, real
`gossamer run` processes, a real client certificate for another identity (curl), and
the app's own /proc entries."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    echo_app,
    free_port,
    run_workload,
    stop_process,
)
from tests.e2e.test_control_plane import _openssl_csr, _request_certificate
from tests.e2e.test_mesh import SERVICE, served_by

pytestmark = pytest.mark.e2e


@pytest.fixture
def echo(control_plane: ControlPlaneProcess, tmp_path: Path) -> Iterator[Workload]:
    control_plane.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    port = free_port()
    w = run_workload(
        control_plane, tmp_path, "echo-1", service_account="echo", labels={"app": "echo"},
        app=echo_app("echo-1", port), port=f"http=8080:{port}",
    )  # fmt: skip
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


def _certificate_for(cp: ControlPlaneProcess, tmp: Path, sa: str) -> tuple[Path, Path]:
    """A real mesh certificate for shop/SA, as a compromised workload would hold."""
    token = cp.cli(
        "token", "create", "-n", "shop", "--service-account", sa, check=True
    ).stdout.strip()
    csr = _openssl_csr(tmp, f"spiffe://cluster.local/ns/shop/sa/{sa}")
    issued = _request_certificate(cp, tmp, token, csr)
    cert, key = tmp / f"{sa}.crt", tmp / f"{sa}.key"
    cert.write_text(issued["certificateChain"])
    (tmp / "w.key").rename(key)
    return cert, key


def _as(
    cp: ControlPlaneProcess, tmp: Path, cert: Path, key: Path, method: str, path: str, body: object
) -> tuple[int, dict]:
    bundle = tmp / "cp-bundle.pem"
    bundle.write_text((cp.data_dir / "ca" / "bundle.crt").read_text())
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "--cacert", str(bundle), "--cert", str(cert),
         "--key", str(key), "-X", method, "-H", "Content-Type: application/json",
         "--data-binary", json.dumps(body), f"https://{cp.discovery}{path}"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text) if text else {}


def test_a_workload_cannot_take_over_another_identitys_workload(
    control_plane: ControlPlaneProcess, echo: Workload, tmp_path: Path
) -> None:
    stored = json.loads(control_plane.cli("get", "wl", "echo-1", "-n", "shop", "-o", "json",
                                          check=True).stdout)  # fmt: skip
    cert, key = _certificate_for(control_plane, tmp_path, "attacker")
    hijack = {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "echo-1", "namespace": "shop", "labels": {"app": "echo"}},
        "spec": {"address": "127.0.0.1", "inboundPort": free_port(),
                 "serviceAccount": "attacker", "ports": [{"port": 8080, "appPort": 9}]},
    }  # fmt: skip
    code, answer = _as(control_plane, tmp_path, cert, key, "PUT",
                       "/v1/workloads/shop/echo-1", hijack)  # fmt: skip
    assert code == 403, answer
    assert "belongs to service account 'echo'" in answer["error"]["message"]
    code, answer = _as(control_plane, tmp_path, cert, key, "PUT",
                       "/v1/workloads/shop/echo-1/status", {"ready": True})  # fmt: skip
    assert code == 403, answer
    code, answer = _as(control_plane, tmp_path, cert, key, "DELETE",
                       "/v1/workloads/shop/echo-1", {})  # fmt: skip
    assert code == 403, answer
    after = json.loads(control_plane.cli("get", "wl", "echo-1", "-n", "shop", "-o", "json",
                                         check=True).stdout)  # fmt: skip
    assert after["spec"] == stored["spec"]
    # Its own workloads it may still register: the check is ownership, not a ban.
    own = {**hijack, "metadata": {"name": "attacker-1", "namespace": "shop"}}
    code, answer = _as(control_plane, tmp_path, cert, key, "PUT",
                       "/v1/workloads/shop/attacker-1", own)  # fmt: skip
    assert code == 200, answer


def test_a_registration_that_never_streams_leaves_endpoints_and_its_status_is_not_its_own(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    """A proxy writes no status, and a Workload it registers holds a lease even before
    (or without) a Ready report or a discovery stream: a registration that never
    streams is out of endpoints after LEASE_SECONDS."""
    cert, key = _certificate_for(control_plane, tmp_path, "ghost")
    ghost = {
        "metadata": {"labels": {"app": "echo"}},
        "spec": {"address": "127.0.0.1", "inboundPort": free_port(),
                 "serviceAccount": "ghost", "ports": [{"port": 8080, "appPort": 9}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"},
                                  {"type": "ProxyConnected", "status": "True"}]},
    }  # fmt: skip
    code, answer = _as(control_plane, tmp_path, cert, key, "PUT",
                       "/v1/workloads/shop/ghost-1", ghost)  # fmt: skip
    assert code == 200, answer
    stored = _workload(control_plane, "ghost-1")
    # What the body said was dropped: a Workload with ports is created not ready, until
    # its proxy reports (issue 13: not an endpoint before its proxy has a snapshot).
    assert _condition(stored, "Ready") == "False"
    assert [c["reason"] for c in stored["status"]["conditions"]] == ["NotReported", "Registered"]
    deadline = time.monotonic() + 30
    while _condition(_workload(control_plane, "ghost-1"), "ProxyConnected") != "False":
        assert time.monotonic() < deadline, _workload(control_plane, "ghost-1")
        time.sleep(0.5)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _wait_file(path: Path, proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 30
    while not (path.exists() and path.read_text()):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return path.read_text()


def test_no_control_plane_credential_reaches_the_app(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    admin_token = control_plane.token_file.read_text().strip()
    join_token = control_plane.cli(
        "token", "create", "-n", "shop", "--service-account", "app", check=True
    ).stdout.strip()
    pid_file = tmp_path / "app.pid"
    app = [sys.executable, "-c",
           f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
           "time.sleep(600)"]  # fmt: skip
    # The README's way: GOSSAMER_TOKEN in the environment, and a join token given.
    w = run_workload(
        control_plane, tmp_path, "app-1", service_account="app", labels={"app": "app"},
        app=app, extra=("--join-token", join_token), env={"GOSSAMER_TOKEN": admin_token},
    )  # fmt: skip
    try:
        app_pid = int(_wait_file(pid_file, w.proc, w.log))
        env = _environ(app_pid)
        assert env["GOSSAMER_OUTBOUND"] == w.outbound
        assert "GOSSAMER_TOKEN" not in env and "GOSSAMER_JOIN_TOKEN" not in env
        leaked = [k for k, v in env.items() if admin_token in v or join_token in v]
        assert not leaked, leaked
        # Nor on the proxy's or the app's command line, which every local user can read
        # (the supervisor's own is what the operator typed).
        for pid in _children(w.proc.pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert join_token not in cmdline and admin_token not in cmdline
    finally:
        w.stop()


def test_the_proxy_does_not_import_from_the_working_directory(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    # A module the proxy imports, planted where the app (and so the proxy) starts.
    planted = tmp_path / "cwd"
    planted.mkdir()
    marker = tmp_path / "imported"
    (planted / "h2.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    w = run_workload(
        control_plane, tmp_path, "cwd-1", service_account="cwd", labels={"app": "cwd"},
        app=[sys.executable, "-c", "import time; time.sleep(600)"], cwd=planted,
    )  # fmt: skip
    try:
        w.wait_ready()
        assert not marker.exists(), "the proxy imported h2.py from its working directory"
    finally:
        w.stop()


def test_a_killed_supervisor_takes_its_proxy_and_app_with_it(
    control_plane: ControlPlaneProcess, echo: Workload, tmp_path: Path
) -> None:
    deadline = time.monotonic() + 15
    while len(children := _children(echo.proc.pid)) < 2:  # the app starts after the proxy
        assert time.monotonic() < deadline, children
        time.sleep(0.05)
    assert len(children) == 2, children  # the proxy and the app
    echo.proc.send_signal(signal.SIGKILL)
    echo.proc.wait()
    deadline = time.monotonic() + 15
    while alive := [p for p in children if Path(f"/proc/{p}").exists() and not _zombie(p)]:
        assert time.monotonic() < deadline, f"still running after the supervisor died: {alive}"
        time.sleep(0.1)
    # The same workload starts again on the same ports: nothing was left holding them.
    inbound, outbound, admin = echo.inbound, echo.outbound, echo.admin
    port = free_port()
    again = run_workload(
        control_plane, tmp_path, "echo-1", service_account="echo", labels={"app": "echo"},
        app=echo_app("echo-1", port), port=f"http=8080:{port}",
        listeners=(inbound, outbound, admin),
    )  # fmt: skip
    try:
        again.wait_ready()
    finally:
        again.stop()


def test_a_supervisor_killed_while_its_proxy_starts_leaves_nothing_running(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    """kill -9 of `gossamer run` the moment its proxy child exists, before or just after
    that child's exec: the child must still die (its signal handlers are the
    supervisor's until exec, and a SIGTERM they catch is lost)."""
    survivors = []
    for i in range(5):
        w = run_workload(
            control_plane, tmp_path, f"race-{i}", service_account="race",
            labels={"app": "race"}, app=[sys.executable, "-c", "import time; time.sleep(600)"],
        )  # fmt: skip
        child = None
        try:
            deadline = time.monotonic() + 10
            while child is None and time.monotonic() < deadline:
                kids = _children(w.proc.pid)
                child = kids[0] if kids else None
            assert child is not None, "the supervisor started no proxy"
            w.proc.send_signal(signal.SIGKILL)
            w.proc.wait()
            deadline = time.monotonic() + 15
            while Path(f"/proc/{child}").exists() and not _zombie(child):
                if time.monotonic() > deadline:
                    survivors.append(child)
                    break
                time.sleep(0.1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGKILL)
            if child is not None and child in survivors:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
    assert not survivors, f"proxies outlived their supervisor: {survivors}"


def test_what_the_app_started_ends_with_a_killed_supervisor(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    """An app that is a shell starting the real server (npm start, a wrapper script): its
    children end with kill -9 of `gossamer run` too, not only the shell."""
    pid_file = tmp_path / "server.pid"
    script = (f"{sys.executable} -c 'import time; time.sleep(600)' & "
              f"echo $! > {pid_file}; wait")  # fmt: skip
    w = run_workload(control_plane, tmp_path, "wrapped-1", service_account="wrapped",
                     labels={"app": "wrapped"}, app=["sh", "-c", script])  # fmt: skip
    server = None
    try:
        server = int(_wait_file(pid_file, w.proc, w.log))
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait()
        deadline = time.monotonic() + 15
        while Path(f"/proc/{server}").exists() and not _zombie(server):
            assert time.monotonic() < deadline, "the app's child outlived gossamer run"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(w.proc.pid, signal.SIGKILL)
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _workload(cp: ControlPlaneProcess, name: str) -> dict:
    return json.loads(cp.cli("get", "wl", name, "-n", "shop", "-o", "json", check=True).stdout)


def _condition(obj: dict, kind: str) -> str | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return str(cond["status"])
    return None


def test_a_killed_workload_leaves_endpoints_within_seconds_and_comes_back(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    started: dict[str, Workload] = {}
    ports = {name: free_port() for name in ("echo-1", "echo-2")}
    try:
        for name, port in ports.items():
            started[name] = run_workload(
                control_plane, tmp_path, name, service_account="echo", labels={"app": "echo"},
                app=echo_app(name, port), port=f"http=8080:{port}",
            )  # fmt: skip
        started["client"] = run_workload(
            control_plane, tmp_path, "client", service_account="client",
            labels={"app": "client"}, app=[sys.executable, "-c", "import time; time.sleep(600)"],
        )  # fmt: skip
        for w in started.values():
            w.wait_ready()
        out = started["client"].outbound
        deadline = time.monotonic() + 30
        while set(served_by(out, 6)) != {"echo-1", "echo-2"}:
            assert time.monotonic() < deadline, "echo replicas never both answered"
        # kill -9 of the whole workload: supervisor, proxy and app, no goodbye.
        os.killpg(started["echo-2"].proc.pid, signal.SIGKILL)
        started["echo-2"].proc.wait()
        killed_at = time.monotonic()
        while _condition(_workload(control_plane, "echo-2"), "ProxyConnected") != "False":
            assert time.monotonic() - killed_at < 60, _workload(control_plane, "echo-2")
            time.sleep(0.5)
        print(f"echo-2 left endpoints {time.monotonic() - killed_at:.1f}s after kill -9")
        time.sleep(2)  # the push to the client
        assert served_by(out, 20) == {"echo-1": 20}
        assert "left endpoints" in control_plane.log.read_text()
        # Its proxy comes back, and so does the workload.
        started["echo-2"] = run_workload(
            control_plane, tmp_path, "echo-2", service_account="echo", labels={"app": "echo"},
            app=echo_app("echo-2", ports["echo-2"]), port=f"http=8080:{ports['echo-2']}",
        )  # fmt: skip
        started["echo-2"].wait_ready()
        deadline = time.monotonic() + 30
        while set(served_by(out, 6)) != {"echo-1", "echo-2"}:
            assert time.monotonic() < deadline, "echo-2 never came back"
        assert _condition(_workload(control_plane, "echo-2"), "ProxyConnected") == "True"
    finally:
        for w in started.values():
            with_group = w.proc.poll() is None
            w.stop()
            if with_group:
                stop_process(w.proc)
