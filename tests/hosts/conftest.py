"""Fixtures for the multi-host tests: a network of namespaces, the control plane on its
first host, `gossamer run` workloads on the others.

Each host has its own port space, so the ports here are fixed, not picked free: two
tests (or two runs) never share a namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hosts.netns import Host, Network, stop, sweep_stale, unavailable_reason

GOSSAMER = [sys.executable, "-m", "gossamer.cli.main"]
API_PORT, DISCOVERY_PORT = 15000, 15012
INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT = 4143, 4140, 4191

_REASON: list[str | None] = []


def require_namespaces() -> None:
    """Skip, saying why, where network namespaces cannot be made; else clear out what a
    crashed earlier run left."""
    if not _REASON:
        _REASON.append(unavailable_reason())
        if _REASON[0] is None:
            sweep_stale()
    if _REASON[0] is not None:
        pytest.skip(_REASON[0])


@pytest.fixture
def network(request: pytest.FixtureRequest) -> Iterator[Network]:
    """Hosts on one bridge: 4 unless the test says `@pytest.mark.parametrize("network",
    [N], indirect=True)`."""
    require_namespaces()
    count = getattr(request, "param", 4)
    with Network(count) as net:
        yield net


def wait_until(check: object, what: str, timeout: float = 30.0, log: Path | None = None) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(what + (f"\n{log.read_text()}" if log else ""))
        time.sleep(0.2)


@dataclass
class HostControlPlane:
    host: Host
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    @property
    def api(self) -> str:
        return f"http://{self.host.address}:{API_PORT}"

    @property
    def discovery(self) -> str:
        return f"{self.host.address}:{DISCOVERY_PORT}"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "admin.token"

    def cli(
        self, *args: str, stdin: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`gossamer ARGS` on the control plane's host, with the admin token."""
        env = {
            **os.environ,
            "GOSSAMER_SERVER": self.api,
            "GOSSAMER_TOKEN": self.token_file.read_text().strip(),
        }
        result = subprocess.run(
            self.host.command(*GOSSAMER, *args),
            input=stdin, capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"gossamer {' '.join(args)} failed: {result.stderr}")
        return result


def start_control_plane(host: Host, tmp: Path) -> HostControlPlane:
    data_dir, ready, log = tmp / "cp", tmp / "cp.ready", tmp / "cp.log"
    proc = host.popen(
        *GOSSAMER, "control-plane", "--data-dir", str(data_dir),
        "--api", f"{host.address}:{API_PORT}", "--discovery", f"{host.address}:{DISCOVERY_PORT}",
        "--ready-file", str(ready), "--log-level", "debug",
        log=log,
    )  # fmt: skip
    cp = HostControlPlane(host, proc, data_dir, log)

    def up() -> bool:
        assert proc.poll() is None, f"the control plane exited:\n{log.read_text()}"
        return ready.exists()

    wait_until(up, "the control plane never became ready", log=log)
    return cp


@dataclass
class HostWorkload:
    """One `gossamer run` on a host: inbound on the host's address, outbound and the app
    on its loopback, admin on every address (the control plane scrapes it)."""

    name: str
    host: Host
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def outbound(self) -> str:
        return f"127.0.0.1:{OUTBOUND_PORT}"

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """curl on this workload's host (where its app would run)."""
        return self.host.run("curl", "-s", "--max-time", "10", *args, timeout=30)

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"{self.name} exited:\n{self.log.read_text()}"
        r = self.curl(
            "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{ADMIN_PORT}/ready"
        )
        return r.stdout == "200"

    def config(self) -> dict[str, object]:
        r = self.curl(f"http://127.0.0.1:{ADMIN_PORT}/config")
        loaded: dict[str, object] = json.loads(r.stdout)
        return loaded

    def stop(self) -> None:
        stop(self.proc)


def run_workload(
    cp: HostControlPlane,
    host: Host,
    tmp: Path,
    name: str,
    *,
    app: list[str],
    service_account: str,
    labels: dict[str, str],
    namespace: str = "shop",
    port: str | None = None,
    extra: tuple[str, ...] = (),
) -> HostWorkload:
    log = tmp / f"{name}.log"
    flags = [
        "--name", name, "-n", namespace, "--service-account", service_account,
        "--inbound", f"{host.address}:{INBOUND_PORT}",
        "--outbound", f"127.0.0.1:{OUTBOUND_PORT}", "--admin", f"0.0.0.0:{ADMIN_PORT}",
        "--address", host.address,
        "--discovery", cp.discovery, "--server", cp.api, "--token-file", str(cp.token_file),
        "--state-dir", str(tmp / "state" / name), *extra,
    ]  # fmt: skip
    for k, v in labels.items():
        flags += ["-l", f"{k}={v}"]
    if port:
        flags += ["--port", port]
    proc = host.popen(*GOSSAMER, "run", *flags, "--", *app, log=log)
    return HostWorkload(name, host, proc, log)


def echo_app(name: str, port: int = 8081) -> list[str]:
    return [*GOSSAMER[:1], "-m", "gossamer.demo.apps", "echo", "--name", name,
            "--listen", str(port)]  # fmt: skip


def sleeper() -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(600)"]


@pytest.fixture
def control_plane(network: Network, tmp_path: Path) -> HostControlPlane:
    """The control plane on the network's first host (ended with the network)."""
    return start_control_plane(network.hosts[0], tmp_path)
