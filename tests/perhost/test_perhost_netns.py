"""Per-host mode with workloads in network namespaces of their own (pods): the host
proxy runs each workload's data plane inside its namespace, capture works there as
with a sidecar, and captured traffic fails closed while the host proxy is down.

Host 0 runs the control plane, host 1 `gossamer host` (node-1); hosts 2 and 3 stand for
pods on node-1: each a network namespace with its own address, where `gossamer run
--host-proxy --capture` registers its workload over node-1's unix socket.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.hosts.conftest import (
    echo_app,
    require_namespaces,
    sleeper,
    start_control_plane,
    wait_until,
)
from tests.hosts.netns import Host, Network, stop
from tests.perhost.hosts import Ports, run_hosted, start_host_proxy

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
"""
# The proxy answers DNS in each pod; virtual IPs inside the tests' range.
MESH = ("--capture", "--dns", "127.0.0.1:15053", "--service-cidr", "198.19.0.0/16")
PORTS = Ports(inbound=4143, outbound=4140, admin=4191)
OUTSIDE = (
    "import http.server as h, socketserver; "
    "socketserver.TCPServer((%r, 80), h.SimpleHTTPRequestHandler).serve_forever()"
)


def curl(host: Host, url: str) -> tuple[int, str]:
    """(curl's exit code, the status and x-served-by) of a plain curl: no proxy."""
    r = host.run("curl", "-s", "--max-time", "10", "-o", "/dev/null", "-D", "-", url,
                 timeout=30)  # fmt: skip
    lines = r.stdout.replace("\r", "").split("\n")
    served = [x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("x-served-by:")]
    return r.returncode, (lines[0].split()[1] if r.stdout else "") + " " + "".join(served)


def listeners(host: Host) -> str:
    return host.run("ss", "-Htlnp").stdout


def test_pods_served_by_the_host_proxy_are_captured_in_their_own_namespaces(
    tmp_path: Path,
) -> None:
    require_namespaces()
    with Network(4) as net:
        cp_host, node_host, client_pod, echo_pod = net.hosts
        cp = start_control_plane(cp_host, tmp_path)
        cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
        node_host.popen(sys.executable, "-c", OUTSIDE % node_host.address,
                        log=tmp_path / "outside.log")  # fmt: skip
        node = start_host_proxy(cp, node_host, tmp_path, "node-1", ("shop", "echo"),
                                ("shop", "client"), extra=("--proxy-gid", "1337"))  # fmt: skip
        echo = run_hosted(node, tmp_path, "echo-1", PORTS, app=echo_app("echo-1"),
                          service_account="echo", labels={"app": "echo"},
                          port="http=8080:8081", pod=echo_pod, extra=MESH)  # fmt: skip
        client = run_hosted(node, tmp_path, "client-1", PORTS, app=sleeper(),
                            service_account="client", labels={"app": "client"},
                            pod=client_pod, extra=MESH)  # fmt: skip
        try:
            for w in (echo, client):
                wait_until(w.ready, f"{w.name} never became ready", timeout=90, log=w.log)
            # The workloads' listeners are in their own namespaces, held by the host
            # proxy's process; none is in the host's.
            for pod in (client_pod, echo_pod):
                held = listeners(pod)
                assert f"pid={node.proc.pid}," in held, held
                assert ":4140 " in held and ":4143 " in held
            assert ":4140 " not in listeners(node_host)

            # A plain curl in the client's pod: captured (DNS too), carried by the host
            # proxy over mTLS to echo-1's pod, where the host proxy hands it to the app
            # on that pod's loopback.
            wait_until(lambda: curl(client_pod, "http://echo.shop/") == (0, "200 echo-1"),
                       "the captured call never reached echo-1", log=node.log)  # fmt: skip
            items = cp.cli("get", "workloads", "-n", "shop", "-o", "json", check=True).stdout
            address = {i["metadata"]["name"]: i["spec"]["address"]
                       for i in json.loads(items)["items"]}  # fmt: skip
            assert address == {"echo-1": echo_pod.address, "client-1": client_pod.address}
            metrics = echo_pod.run("curl", "-s", "http://127.0.0.1:4191/metrics").stdout
            inbound = [line for line in metrics.splitlines()
                       if line.startswith("gossamer_requests_total{")
                       and 'direction="inbound"' in line and 'tls="true"' in line]  # fmt: skip
            assert inbound, metrics

            # The host proxy dies: the pods' captured connections are refused, none
            # escapes uncaptured to its destination.
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
            assert curl(client_pod, "http://echo.shop/")[0] == 6  # DNS is captured: no answer
            assert curl(client_pod, f"http://{node_host.address}/")[0] == 7
            assert "GET /" not in (tmp_path / "outside.log").read_text()
        finally:
            for w in (client, echo):
                w.stop()
            stop(node.proc)
        # The workloads stopped: their rules went with them.
        for pod in (client_pod, echo_pod):
            rules = pod.run("iptables", "-t", "nat", "-S").stdout
            assert "GOSSAMER" not in rules
