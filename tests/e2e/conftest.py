"""End-to-end fixtures: real `gossamer` processes on ephemeral ports, always cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

GOSSAMER = [sys.executable, "-m", "gossamer.cli.main"]


@dataclass
class ControlPlaneProcess:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    api: str
    discovery: str
    log: Path

    @property
    def token_file(self) -> Path:
        return self.data_dir / "admin.token"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "GOSSAMER_SERVER": self.api,
            "GOSSAMER_TOKEN": self.token_file.read_text().strip(),
        }

    def cli(
        self, *args: str, stdin: str | None = None, token: bool = True, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        env = self.env() if token else {**os.environ, "GOSSAMER_SERVER": self.api}
        if not token:
            env.pop("GOSSAMER_TOKEN", None)
        result = subprocess.run(
            [*GOSSAMER, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"gossamer {' '.join(args)} failed: {result.stderr}")
        return result


def wait_for_file(
    path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared:\n{log.read_text()}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_all(workloads: Iterable[Workload], timeout: float = 10.0) -> None:
    """Stop every workload at once: SIGTERM to each, then wait for each. A workload
    takes about two drains to stop (`gossamer run`'s and its proxy's --drain-seconds),
    so stopping a test's workloads one after another cost seconds per test."""
    procs = [w.proc for w in workloads]
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_control_plane(data_dir: Path, *extra: str) -> ControlPlaneProcess:
    ready = data_dir.parent / f"{data_dir.name}.ready"
    ready.unlink(missing_ok=True)
    log = data_dir.parent / f"{data_dir.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *GOSSAMER,
                "control-plane",
                "--data-dir",
                str(data_dir),
                "--api",
                "127.0.0.1:0",
                "--discovery",
                "127.0.0.1:0",
                "--log-level",
                "debug",
                "--ready-file",
                str(ready),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        lines = dict(line.split("=", 1) for line in wait_for_file(ready, proc, log).split())
    except BaseException:
        stop_process(proc)
        raise
    return ControlPlaneProcess(proc, data_dir, lines["api"], lines["discovery"], log)


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = start_control_plane(tmp_path / "cp")
    try:
        yield cp
    finally:
        stop_process(cp.proc)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port for a process a test starts to listen on, later.

    Not one the kernel picks for port 0: that comes from the ephemeral range, where
    every outgoing connection also takes its source port, so between this call and the
    process's bind another connection may take it (a rare, confusing failure). Ports
    below the ephemeral range are taken only by listeners; each is checked free and
    handed out once per test run.
    """
    import random
    import socket

    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(low - 12_000, 1024), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@dataclass
class Workload:
    """One app in `gossamer run`, as a user would start it."""

    name: str
    proc: subprocess.Popen[bytes]
    inbound: str
    outbound: str
    admin: str
    state_dir: Path
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)

    def wait_ready(self, timeout: float = 30.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://{self.admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready:\n{self.log.read_text()}")


def run_workload(
    cp: ControlPlaneProcess,
    tmp: Path,
    name: str,
    *,
    namespace: str = "shop",
    service_account: str,
    labels: dict[str, str],
    app: list[str],
    port: str | None = None,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    listeners: tuple[str, str, str] | None = None,
) -> Workload:
    inbound, outbound, admin = listeners or tuple(f"127.0.0.1:{free_port()}" for _ in range(3))
    state = tmp / "state" / name
    log = tmp / f"{name}.log"
    flags = [
        "--name", name, "-n", namespace, "--service-account", service_account,
        "--inbound", inbound, "--outbound", outbound, "--admin", admin,
        "--discovery", cp.discovery, "--server", cp.api, "--token-file", str(cp.token_file),
        "--state-dir", str(state), *extra,
    ]  # fmt: skip
    for k, v in labels.items():
        flags += ["-l", f"{k}={v}"]
    if port:
        flags += ["--port", port]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*GOSSAMER, "run", *flags, "--", *app],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **env} if env else None, cwd=cwd,
        )  # fmt: skip
    return Workload(name, proc, inbound, outbound, admin, state, log)


def echo_app(name: str, port: int) -> list[str]:
    return [sys.executable, "-m", "gossamer.demo.apps", "echo", "--name", name,
            "--listen", str(port)]  # fmt: skip


def sleeper() -> list[str]:
    """A client workload's app: it only has to stay up while the test uses its proxy."""
    return [sys.executable, "-c", "import time; time.sleep(600)"]
