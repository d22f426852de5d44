"""Unchanged clients across hosts: `gossamer run --capture --dns` answers service names
with virtual IPs and captures the app's DNS and TCP; curl, a Python script and a grpcio
client call services by name, through the mesh with mTLS, and show in `gossamer stat`.
Traffic to outside the mesh passes through, or is refused under REGISTRY_ONLY; counted
either way."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from gossamer.dns.names import virtual_ip
from tests.hosts.conftest import (
    HostControlPlane,
    HostWorkload,
    echo_app,
    run_workload,
    sleeper,
    wait_until,
)
from tests.hosts.netns import Host, Network

pytestmark = pytest.mark.e2e

# Virtual IPs inside the test's own range (198.18.0.0/15), not the default 240.240/16.
SERVICE_CIDR = "198.19.0.0/16"
MESH = ("--capture", "--dns", "127.0.0.1:15053", "--service-cidr", SERVICE_CIDR)

OBJECTS = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: grpc, port: 50051, targetPort: grpc, appProtocol: grpc}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  ports: [{name: tcp, port: 5432, targetPort: tcp, appProtocol: tcp}]
"""

REGISTRY_ONLY = """
apiVersion: gossamer.dev/v1alpha1
kind: MeshPolicy
metadata: {name: closed, namespace: shop}
spec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}
"""

GRPC_SERVER = """
import grpc, sys, time
from concurrent import futures
who = grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"grpc-1 got " + req)
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Who": who}),))
server.add_insecure_port("127.0.0.1:50052")
server.start()
server.wait_for_termination()
"""

GRPC_CLIENT = """
import grpc
with grpc.insecure_channel("echo:50051") as channel:
    print(channel.unary_unary("/test.Echo/Who")(b"hello", timeout=10).decode())
"""

# An opaque TCP server (it speaks a line protocol of its own) and an unchanged client.
TCP_SERVER = """
import socketserver
class Upper(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline().upper())
socketserver.TCPServer(("127.0.0.1", 5433), Upper).serve_forever()
"""

TCP_CLIENT = """
import socket
with socket.create_connection(("db", 5432), timeout=10) as s:
    s.sendall(b"hello over tcp\\n")
    print(s.makefile().readline().strip())
"""

PYTHON_CLIENT = """
import json, urllib.request
with urllib.request.urlopen("http://echo.shop.svc.cluster.local/from-python", timeout=10) as r:
    print(r.headers["x-served-by"], json.loads(r.read())["path"])
"""

# A resolver outside the mesh (the host's own, for the client): one name, one address.
UPSTREAM_DNS = """
import socket, sys
import dns.message, dns.rrset
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    data, peer = s.recvfrom(4096)
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    name = q.question[0].name.to_text()
    if name == "outside.example." and q.question[0].rdtype == 1:
        r.answer.append(dns.rrset.from_text(name, 30, "IN", "A", sys.argv[1]))
    s.sendto(r.to_wire(), peer)
"""

OUTSIDE_HTTP = (
    "import http.server as h, socketserver\n"
    "class H(h.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('x-served-by', 'outside')\n"
    "        self.send_header('content-length', '0'); self.end_headers()\n"
    # socketserver's, not http.server's HTTPServer: that one looks its own name up in
    # DNS first, from a host with no resolver to ask.
    "socketserver.TCPServer((%r, 80), H).serve_forever()\n"
)

LOOKUP = """
import sys
import dns.resolver
r = dns.resolver.Resolver()
for name, kind in (("echo.shop", "A"), ("echo.shop.mesh", "A"), ("echo", "AAAA")):
    try:
        print(name, kind, sorted(a.to_text() for a in r.resolve(name, kind)))
    except dns.resolver.NoAnswer:
        print(name, kind, "no answer")
"""


def served_by(host: Host, url: str) -> str:
    r = host.run("curl", "-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                 "-D", "-", url, timeout=30)  # fmt: skip
    for line in r.stdout.replace("\r", "").split("\n"):
        if line.lower().startswith("x-served-by:"):
            return line.split(":", 1)[1].strip()
    return f"curl exit {r.returncode}"


def metric(host: Host, name: str, *having: str) -> float:
    """The sum of the proxy's samples that start with `name` and contain `having`."""
    r = host.run("curl", "-s", "--max-time", "5", "http://127.0.0.1:4191/metrics")
    return sum(
        float(x.rsplit(" ", 1)[1])
        for x in r.stdout.splitlines()
        if x.startswith(name) and all(h in x for h in having)
    )


@pytest.mark.parametrize("network", [6], indirect=True)
def test_unchanged_clients_call_services_by_name_through_the_mesh(
    network: Network, control_plane: HostControlPlane, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=OBJECTS, check=True)
    _, echo_host, grpc_host, client_host, outside, db_host = network.hosts
    outside.popen(sys.executable, "-c", UPSTREAM_DNS, outside.address, log=tmp_path / "dns.log")
    outside.popen(sys.executable, "-c", OUTSIDE_HTTP % outside.address,
                  log=tmp_path / "outside.log")  # fmt: skip
    client_host.etc("resolv.conf", f"nameserver {outside.address}\n")
    started: list[HostWorkload] = []
    try:
        started.append(run_workload(
            control_plane, echo_host, tmp_path, "echo-1", service_account="echo",
            labels={"app": "echo"}, app=echo_app("echo-1"), port="http=8080:8081",
            extra=(*MESH, "--access-log", str(tmp_path / "echo.access")),
        ))  # fmt: skip
        started.append(run_workload(
            control_plane, grpc_host, tmp_path, "grpc-1", service_account="echo",
            labels={"app": "echo"}, app=[sys.executable, "-c", GRPC_SERVER],
            port="grpc=50051:50052/grpc", extra=MESH,
        ))  # fmt: skip
        started.append(run_workload(
            control_plane, db_host, tmp_path, "db-1", service_account="db",
            labels={"app": "db"}, app=[sys.executable, "-c", TCP_SERVER],
            port="tcp=5432:5433/tcp", extra=MESH,
        ))  # fmt: skip
        client = run_workload(control_plane, client_host, tmp_path, "client",
                              service_account="client", labels={"app": "client"},
                              app=sleeper(), extra=MESH)  # fmt: skip
        started.append(client)
        for w in started:
            wait_until(w.ready, f"{w.name} never became ready", log=w.log)

        # The proxy's resolver: services by name, with their virtual IPs.
        vip = virtual_ip("echo", "shop", ipaddress.IPv4Network(SERVICE_CIDR))
        looked_up = client_host.run(sys.executable, "-c", LOOKUP).stdout.splitlines()
        assert looked_up == [
            f"echo.shop A ['{vip}']",
            f"echo.shop.mesh A ['{vip}']",
            "echo AAAA no answer",
        ], client.log.read_text()

        # curl, a Python script and a grpcio client, none told about the mesh.
        wait_until(lambda: served_by(client_host, "http://echo/") == "echo-1",
                   "curl http://echo/ never reached echo-1", log=client.log)  # fmt: skip
        python = client_host.run(sys.executable, "-c", PYTHON_CLIENT)
        assert python.stdout.split() == ["echo-1", "/from-python"], python.stderr
        grpc_call = client_host.run(sys.executable, "-c", GRPC_CLIENT)
        assert grpc_call.stdout.strip() == "grpc-1 got hello", grpc_call.stderr
        # Opaque TCP by name too: the virtual IP and port name the service port.
        tcp_call = client_host.run(sys.executable, "-c", TCP_CLIENT)
        assert tcp_call.stdout.strip() == "HELLO OVER TCP", tcp_call.stderr
        wait_until(
            lambda: metric(db_host, 'gossamer_tcp_bytes_total{direction="inbound"',
                           'tls="true"', 'flow="received"') > 0,
            "db-1's proxy counted no bytes received over mTLS",
        )  # fmt: skip

        # With mTLS, as the client's identity ...
        access = tmp_path / "echo.access"

        def from_python() -> list[dict[str, Any]]:
            lines = access.read_text().splitlines() if access.exists() else []
            return [e for e in map(json.loads, lines) if e["path"] == "/from-python"]

        wait_until(from_python, "echo-1's proxy logged no call from the Python script")
        (event,) = from_python()
        assert event["tls"] is True
        assert event["source"]["identity"] == "spiffe://cluster.local/ns/shop/sa/client"

        # ... and the calls show in `gossamer stat`.
        def stat_has_calls() -> bool:
            r = control_plane.cli("stat", "-n", "shop", "-o", "json")
            rows = json.loads(r.stdout) if r.returncode == 0 else []
            echo = [row for row in rows if row.get("name") == "echo"]
            return bool(echo) and echo[0].get("requests", 0) >= 3

        wait_until(stat_has_calls, "gossamer stat never showed the calls to echo", timeout=60)

        # Outside the mesh: the host's resolver answers, the connection passes through.
        assert served_by(client_host, "http://outside.example/") == "outside"
        assert (
            metric(client_host, 'gossamer_outside_mesh_connections_total{action="passthrough"}')
            >= 1
        )
        assert metric(client_host, 'gossamer_dns_queries_total{answer="forwarded"}') >= 1
        assert metric(client_host, 'gossamer_dns_queries_total{answer="mesh"}') >= 3

        # REGISTRY_ONLY: refused, counted; the mesh's services still answer.
        control_plane.cli("apply", "-f", "-", stdin=REGISTRY_ONLY, check=True)
        wait_until(
            lambda: served_by(client_host, "http://outside.example/").startswith("curl exit"),
            "REGISTRY_ONLY never refused outside traffic",
            log=client.log,
        )
        assert metric(client_host, 'gossamer_outside_mesh_connections_total{action="refused"}') >= 1
        assert "refused a connection to" in client.log.read_text()
        assert served_by(client_host, "http://echo/") == "echo-1"
    finally:
        for w in started:
            w.stop()
