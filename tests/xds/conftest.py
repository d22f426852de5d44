"""Fixtures for the Envoy tests: a control plane serving xDS, and Envoy workloads.

An Envoy workload joins with a join token, registers its Workload, and runs a real
Envoy whose bootstrap points at the control plane's xDS listener; everything else it
learns over ADS. Every process is stopped when the test ends, passed or failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gossamer.xds.bootstrap import EnvoyWorkload, envoy_bootstrap, join, register, report_ready
from tests.e2e.conftest import (
    ControlPlaneProcess,
    free_port,
    start_control_plane,
    stop_process,
)
from tests.xds.envoyconfig import envoy_binary


@dataclass
class XdsControlPlane:
    cp: ControlPlaneProcess
    xds: tuple[str, int]


@pytest.fixture
def xds_control_plane(tmp_path: Path) -> Iterator[XdsControlPlane]:
    cp = start_control_plane(tmp_path / "cp", "--xds", "127.0.0.1:0")
    try:
        ready = dict(line.split("=", 1) for line in (tmp_path / "cp.ready").read_text().split())
        host, _, port = ready["xds"].rpartition(":")
        yield XdsControlPlane(cp, (host, int(port)))
    finally:
        stop_process(cp.proc)


@dataclass
class EnvoyProcess:
    name: str
    proc: subprocess.Popen[bytes]
    admin: str
    inbound: str
    outbound: str | None
    log: Path
    apps: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Tells the control plane the workload is ready (as the supervisor of
    # `--engine envoy` does once Envoy has its config): a registered Workload that
    # declares ports is no endpoint before that.
    on_ready: Callable[[], None] | None = None

    def stop(self) -> None:
        stop_process(self.proc)
        for app in self.apps:
            stop_process(app)

    def admin_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Envoy's /ready is LIVE once its first listeners and clusters came over xDS."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy {self.name} exited:\n{self.log.read_text()[-4000:]}")
            try:
                status, _ = self.admin_get("/ready")
                if status == 200:
                    if self.on_ready is not None:
                        self.on_ready()
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"envoy {self.name} not ready:\n{self.log.read_text()[-4000:]}")


def start_envoy_workload(
    xcp: XdsControlPlane,
    tmp: Path,
    name: str,
    *,
    namespace: str = "shop",
    service_account: str,
    labels: dict[str, str],
    ports: tuple[dict[str, Any], ...] = (),
    outbound: bool = True,
) -> EnvoyProcess:
    """Join, register, and start Envoy for one workload (its app is the caller's)."""
    cp = xcp.cp
    token = cp.cli(
        "token", "create", "-n", namespace, "--service-account", service_account, check=True
    ).stdout.strip()
    directory = tmp / "envoy" / name
    directory.mkdir(parents=True)
    files = join(cp.discovery, token, directory)
    inbound = ("127.0.0.1", free_port())
    out = ("127.0.0.1", free_port()) if outbound else None
    admin = ("127.0.0.1", free_port())
    workload = EnvoyWorkload(
        name=name,
        namespace=namespace,
        service_account=service_account,
        inbound=inbound,
        outbound=out,
        labels=labels,
        ports=ports,
    )
    register(cp.discovery, files, workload)
    config = directory / "envoy.json"
    config.write_text(json.dumps(envoy_bootstrap(workload, xcp.xds, files, admin), indent=1))
    log = tmp / f"envoy-{name}.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
             "-l", "info", "--drain-time-s", "1"],
            stdout=f, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return EnvoyProcess(
        name,
        proc,
        f"{admin[0]}:{admin[1]}",
        f"{inbound[0]}:{inbound[1]}",
        f"{out[0]}:{out[1]}" if out else None,
        log,
        on_ready=(lambda: report_ready(cp.discovery, files, workload, True)) if ports else None,
    )


def start_echo(name: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "gossamer.demo.apps", "echo", "--name", name,
             "--listen", str(port)],
            stdout=f, stderr=subprocess.STDOUT,
        )  # fmt: skip
