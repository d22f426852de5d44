"""Fairness on the host proxy: a workload that floods it with connections is capped at
its own share, and another workload on the same host proxy is still served.

The host proxy runs with a small RLIMIT_NOFILE (512: it refuses connections past
descriptor 384, decision 0044's ceiling), so without a per-workload cap the flood would
take the whole process's budget and the quiet workload's calls would be refused too.
"""

from __future__ import annotations

import json
import subprocess
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
from tests.hosts.netns import Network, stop
from tests.perhost.hosts import Ports, run_hosted, start_host_proxy

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
"""
CAP = 100
# Opens 600 connections to the noisy workload's outbound listener, each with half a
# request, and holds them until stdin closes; prints how many it opened.
FLOOD = """
import socket, sys
held = []
for _ in range(600):
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: echo.shop\\r\\n")
        held.append(s)
    except OSError:
        pass
print(len(held), flush=True)
sys.stdin.read()
"""


def test_one_workload_flooding_the_host_proxy_does_not_starve_another(tmp_path: Path) -> None:
    require_namespaces()
    with Network(2) as net:
        cp_host, node_host = net.hosts
        cp = start_control_plane(cp_host, tmp_path)
        cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
        node = start_host_proxy(
            cp, node_host, tmp_path, "node-1", ("shop", "echo"), ("shop", "client"),
            extra=("--max-connections-per-workload", str(CAP)),
            wrapper=("prlimit", "--nofile=512:512"),
        )  # fmt: skip
        started = [
            run_hosted(node, tmp_path, "echo-1", Ports(4143, 4140, 4191), app=echo_app("echo-1"),
                       service_account="echo", labels={"app": "echo"}, port="http=8080:8081"),
            run_hosted(node, tmp_path, "noisy", Ports(4153, 4150, 4192), app=sleeper(),
                       service_account="client", labels={"app": "noisy"}),
            run_hosted(node, tmp_path, "quiet", Ports(4163, 4160, 4193), app=sleeper(),
                       service_account="client", labels={"app": "quiet"}),
        ]  # fmt: skip
        _, noisy, quiet = started
        flood = None
        try:
            for w in started:
                wait_until(w.ready, f"{w.name} never became ready", timeout=90, log=w.log)

            def quiet_call() -> str:
                r = quiet.curl("-o", "/dev/null", "-w", "%{http_code}",
                               "-x", f"http://{quiet.outbound}", "http://echo.shop/")  # fmt: skip
                return r.stdout

            wait_until(lambda: quiet_call() == "200", "the quiet workload never got through")
            flood = subprocess.Popen(
                node_host.command(sys.executable, "-c", FLOOD, "4150"),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert flood.stdout is not None
            opened = int(flood.stdout.readline())
            assert opened == 600  # accepted by the kernel; the proxy refuses past the cap
            # While the flood holds its connections, the quiet workload is served.
            assert [quiet_call() for _ in range(20)] == ["200"] * 20
            config = noisy.curl("http://127.0.0.1:4192/config").stdout
            fairness = json.loads(config)["fairness"]
            assert fairness["maxConnections"] == CAP
            assert fairness["connections"] <= CAP
            assert fairness["refusedAtCap"]["outbound"] >= 600 - CAP
            assert "holds its cap of 100 connections" in node.log.read_text()
        finally:
            if flood is not None:
                flood.kill()
                flood.communicate()
            for w in started:
                w.stop()
            stop(node.proc)
