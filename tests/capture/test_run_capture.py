"""`gossamer run --capture` across hosts: an app without HTTP_PROXY reaches a service
through the mesh, captured connections fail closed while the proxy is down, and the
rules leave with the workload."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.hosts.conftest import (
    HostControlPlane,
    echo_app,
    run_workload,
    sleeper,
    wait_until,
)
from tests.hosts.netns import Host, Network

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
"""

# socketserver's, not http.server's HTTPServer: that one looks its own name up in DNS
# first, from a host with no resolver to ask.
OUTSIDE = (
    "import http.server as h, socketserver; "
    "socketserver.TCPServer((%r, 80), h.SimpleHTTPRequestHandler).serve_forever()"
)
# The proxy answers DNS; virtual IPs inside the test's own range (198.18.0.0/15).
MESH = ("--capture", "--dns", "127.0.0.1:15053", "--service-cidr", "198.19.0.0/16")


def curl(host: Host, url: str, *flags: str) -> tuple[int, str]:
    """(curl's exit code, the status and x-served-by) of a plain curl: no proxy."""
    r = host.run("curl", "-s", "--max-time", "10", "-o", "/dev/null", "-D", "-", *flags, url,
                 timeout=30)  # fmt: skip
    lines = r.stdout.replace("\r", "").split("\n")
    served = [x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("x-served-by:")]
    return r.returncode, (lines[0].split()[1] if r.stdout else "") + " " + "".join(served)


def proxy_pid(host: Host, supervisor: int) -> int:
    """The `gossamer proxy` child of a `gossamer run`."""
    for pid in host.run("ip", "netns", "pids", host.netns).stdout.split():
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor and b"proxy" in cmdline:
            return int(pid)
    raise AssertionError("no proxy under the supervisor")


def gossamer_rules(host: Host) -> list[str]:
    return [
        x for x in host.run("iptables", "-t", "nat", "-S").stdout.splitlines() if "GOSSAMER" in x
    ]


def test_an_unchanged_app_is_carried_by_the_mesh_fails_closed_and_leaves_no_rules(
    network: Network, control_plane: HostControlPlane, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    _, echo_host, client_host, outside = network.hosts
    outside.popen(sys.executable, "-c", OUTSIDE % outside.address, log=tmp_path / "outside.log")
    echo = run_workload(
        control_plane, echo_host, tmp_path, "echo-1", service_account="echo",
        labels={"app": "echo"}, app=echo_app("echo-1"), port="http=8080:8081",
        extra=(*MESH, "--access-log", str(tmp_path / "echo.access")),
    )  # fmt: skip
    client = run_workload(
        control_plane, client_host, tmp_path, "client", service_account="client",
        labels={"app": "client"}, app=sleeper(), extra=MESH,
    )  # fmt: skip
    for w in (echo, client):
        wait_until(w.ready, f"{w.name} never became ready", log=w.log)
    assert gossamer_rules(client_host), "no capture rules on the client's host"

    # A plain curl, no proxy setting: captured, routed by the mesh, over mTLS.
    wait_until(lambda: curl(client_host, "http://echo.shop/") == (0, "200 echo-1"),
               "the captured call never reached echo-1", log=client.log)  # fmt: skip
    access = tmp_path / "echo.access"

    def inbound() -> list[dict[str, Any]]:
        events = [json.loads(x) for x in access.read_text().splitlines()] if access.exists() else []
        return [e for e in events if e["direction"] == "inbound"]

    wait_until(inbound, "echo-1's proxy logged no inbound call")
    assert all(e["tls"] for e in inbound())
    assert inbound()[-1]["source"]["identity"] == "spiffe://cluster.local/ns/shop/sa/client"

    # The proxy dies: captured connections are refused, none escapes to its destination.
    os.kill(proxy_pid(client_host, client.proc.pid), signal.SIGKILL)
    wait_until(lambda: "captured connections are refused" in client.log.read_text(),
               "gossamer run never said the proxy was down", log=client.log)  # fmt: skip
    assert curl(client_host, "http://echo.shop/")[0] == 6  # DNS is captured too: no answer
    assert curl(client_host, f"http://{outside.address}/")[0] == 7
    assert not (tmp_path / "outside.log").read_text().count("GET /")

    # The workload stops: its rules go with it, and traffic flows as before capture.
    client.stop()
    assert client.proc.returncode is not None
    assert gossamer_rules(client_host) == []
    assert curl(client_host, f"http://{outside.address}/")[1].startswith("200")
    echo.stop()
    assert gossamer_rules(echo_host) == []
