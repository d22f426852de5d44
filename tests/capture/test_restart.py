"""Capture outlives its proxy, as a Kubernetes pod's rules outlive a restart of its
sidecar: rules installed once with `gossamer capture install`, the proxy (in the
proxy's group) killed and started again. While it is down nothing gets out, and then
traffic flows again, with the same rules."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.capture.test_run_capture import OUTSIDE, curl, gossamer_rules
from tests.hosts.conftest import (
    ADMIN_PORT,
    GOSSAMER,
    INBOUND_PORT,
    OUTBOUND_PORT,
    HostControlPlane,
    HostWorkload,
    echo_app,
    run_workload,
    wait_until,
)
from tests.hosts.netns import Network

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
"""
PROXY_GID = "1337"


def test_capture_survives_a_proxy_restart_failing_closed_meanwhile(
    network: Network, control_plane: HostControlPlane, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    _, echo_host, client_host, outside = network.hosts
    outside.popen(sys.executable, "-c", OUTSIDE % outside.address, log=tmp_path / "outside.log")
    echo = run_workload(
        control_plane, echo_host, tmp_path, "echo-1", service_account="echo",
        labels={"app": "echo"}, app=echo_app("echo-1"), port="http=8080:8081",
    )  # fmt: skip
    installed = client_host.run(
        *GOSSAMER, "capture", "install", "--outbound-port", str(OUTBOUND_PORT),
        "--inbound-port", str(INBOUND_PORT), "--proxy-gid", PROXY_GID, "--dns-port", "15053",
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    rules = gossamer_rules(client_host)

    def start_proxy() -> HostWorkload:
        log = tmp_path / "client.log"
        proc = client_host.popen(
            "setpriv", "--regid", PROXY_GID, "--clear-groups", "--",
            *GOSSAMER, "proxy", "--name", "client", "-n", "shop",
            "--service-account", "client", "--address", client_host.address,
            "--inbound", f"{client_host.address}:{INBOUND_PORT}",
            "--outbound", f"127.0.0.1:{OUTBOUND_PORT}", "--admin", f"0.0.0.0:{ADMIN_PORT}",
            "--dns", "127.0.0.1:15053", "--service-cidr", "198.19.0.0/16",
            "--discovery", control_plane.discovery, "--server", control_plane.api,
            "--token-file", str(control_plane.token_file), "--state-dir", str(tmp_path / "state"),
            log=log,
        )  # fmt: skip
        proxy = HostWorkload("client", client_host, proc, log)
        wait_until(proxy.ready, "the client's proxy never became ready", log=log)
        return proxy

    try:
        wait_until(echo.ready, "echo-1 never became ready", log=echo.log)
        proxy = start_proxy()
        wait_until(lambda: curl(client_host, "http://echo.shop/") == (0, "200 echo-1"),
                   "the captured call never reached echo-1", log=proxy.log)  # fmt: skip

        os.kill(proxy.proc.pid, signal.SIGKILL)
        proxy.proc.wait(timeout=10)
        # Down: no name is answered, no connection gets out, to the mesh or past it.
        assert curl(client_host, "http://echo.shop/")[0] == 6
        assert curl(client_host, f"http://{outside.address}/")[0] == 7
        assert "GET /" not in (tmp_path / "outside.log").read_text()
        assert gossamer_rules(client_host) == rules

        proxy = start_proxy()  # as the kubelet restarts a native sidecar
        wait_until(lambda: curl(client_host, "http://echo.shop/") == (0, "200 echo-1"),
                   "traffic never flowed again after the restart", log=proxy.log)  # fmt: skip
        assert curl(client_host, f"http://{outside.address}/")[1].startswith("200")
        assert gossamer_rules(client_host) == rules
    finally:
        echo.stop()
    removed = client_host.run(*GOSSAMER, "capture", "remove")
    assert removed.returncode == 0 and gossamer_rules(client_host) == []
