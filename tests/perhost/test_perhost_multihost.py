"""Per-host mode across hosts: `gossamer host` on one host serving several workloads,
each with its own identity, sidecars on another, all in one mesh.

Host 0 runs the control plane; host 1 runs `gossamer host` (node-1) with echo-1 and
client-1 registered through it; host 2 runs sidecars: backend-1, client-2 and intruder.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hosts.conftest import (
    GOSSAMER,
    HostControlPlane,
    HostWorkload,
    echo_app,
    sleeper,
    start_control_plane,
    wait_until,
)
from tests.hosts.netns import Network, stop
from tests.perhost.hosts import (
    HostProxyProcess,
    Ports,
    host_object,
    run_hosted,
    run_sidecar,
    start_host_proxy,
)

pytestmark = pytest.mark.e2e

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: shop}
spec: {selector: {app: backend}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
"""

ECHO_PORTS = Ports(inbound=4143, outbound=4140, admin=4191)
CLIENT_PORTS = Ports(inbound=4153, outbound=4150, admin=4192)


def call(client: HostWorkload, url: str) -> tuple[int, dict[str, str]]:
    r = client.curl("-D", "-", "-o", "/dev/null", "-x", f"http://{client.outbound}", url)
    lines = r.stdout.replace("\r\n", "\n").split("\n")
    if not lines[0].startswith("HTTP/"):
        return 0, {}
    fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    return int(lines[0].split()[1]), fields


def served_by(client: HostWorkload, url: str) -> str:
    status, fields = call(client, url)
    return fields.get("x-served-by", "") if status == 200 else f"status {status}"


@dataclass
class Mesh:
    network: Network
    cp: HostControlPlane
    node: HostProxyProcess
    workloads: dict[str, HostWorkload]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    from tests.hosts.conftest import require_namespaces

    require_namespaces()
    with Network(3) as net:
        cp = start_control_plane(net.hosts[0], tmp_path)
        cp.cli("apply", "-f", "-", stdin=SERVICES, check=True)
        node = start_host_proxy(cp, net.hosts[1], tmp_path, "node-1",
                                ("shop", "echo"), ("shop", "client"))  # fmt: skip
        started: dict[str, HostWorkload] = {}
        try:
            started["echo-1"] = run_hosted(
                node, tmp_path, "echo-1", ECHO_PORTS, app=echo_app("echo-1"),
                service_account="echo", labels={"app": "echo"}, port="http=8080:8081",
            )  # fmt: skip
            started["client-1"] = run_hosted(
                node, tmp_path, "client-1", CLIENT_PORTS, app=sleeper(),
                service_account="client", labels={"app": "client"},
            )  # fmt: skip
            sidecars = net.hosts[2]
            started["backend-1"] = run_sidecar(
                cp, sidecars, tmp_path, "backend-1", ECHO_PORTS, service_account="backend",
                labels={"app": "backend"}, app=echo_app("backend-1"), port="http=8080:8081",
            )  # fmt: skip
            started["client-2"] = run_sidecar(
                cp, sidecars, tmp_path, "client-2", CLIENT_PORTS, service_account="client",
                labels={"app": "client"}, app=sleeper(),
            )  # fmt: skip
            for w in started.values():
                wait_until(w.ready, f"{w.name} never became ready", timeout=90, log=w.log)
            yield Mesh(net, cp, node, started)
        finally:
            for w in started.values():
                w.stop()
            stop(node.proc)


def test_hosted_and_sidecar_workloads_call_each_other_with_their_own_identities(
    mesh: Mesh,
) -> None:
    w = mesh.workloads
    # Sidecar → hosted, hosted → sidecar, hosted → hosted (two workloads, one process).
    wait_until(lambda: served_by(w["client-2"], "http://echo.shop/") == "echo-1",
               "the sidecar client never reached the hosted echo")  # fmt: skip
    wait_until(lambda: served_by(w["client-1"], "http://backend.shop/") == "backend-1",
               "the hosted client never reached the sidecar backend")  # fmt: skip
    wait_until(lambda: served_by(w["client-1"], "http://echo.shop/") == "echo-1",
               "the hosted client never reached the hosted echo")  # fmt: skip
    for _ in range(5):
        assert served_by(w["client-2"], "http://echo.shop/") == "echo-1"
        assert served_by(w["client-1"], "http://backend.shop/") == "backend-1"
    # One process, two workloads, each with its own metrics on its own admin listener:
    # echo-1 counted what it served, client-1 what it called, neither the other's.
    echo_metrics = w["echo-1"].metrics()  # type: ignore[attr-defined]
    client_metrics = w["client-1"].metrics()  # type: ignore[attr-defined]

    def series(text: str, *needles: str) -> list[str]:
        return [line for line in text.splitlines()
                if line.startswith("gossamer_requests_total{")
                and all(n in line for n in needles)]  # fmt: skip

    assert series(echo_metrics, 'direction="inbound"', 'dst_service="echo"', 'tls="true"')
    assert not series(echo_metrics, 'direction="outbound"')
    assert series(client_metrics, 'direction="outbound"', 'dst_service="backend"')
    assert series(client_metrics, 'direction="outbound"', 'dst_service="echo"')
    assert not series(client_metrics, 'direction="inbound"')
    # The control plane registered each hosted workload with its own identity, at the
    # host's address.
    items = json.loads(mesh.cp.cli("get", "workloads", "-n", "shop", "-o", "json",
                                   check=True).stdout)["items"]  # fmt: skip
    spec = {i["metadata"]["name"]: i["spec"] for i in items}
    assert spec["echo-1"]["serviceAccount"] == "echo"
    assert spec["client-1"]["serviceAccount"] == "client"
    assert spec["echo-1"]["address"] == spec["client-1"]["address"] == mesh.node.host.address
    assert spec["echo-1"]["inboundPort"] != spec["client-1"]["inboundPort"]


def test_authorization_sees_the_workload_not_the_host(mesh: Mesh, tmp_path: Path) -> None:
    w = mesh.workloads
    sidecars = mesh.network.hosts[2]
    intruder = run_sidecar(
        mesh.cp, sidecars, tmp_path, "intruder", Ports(4163, 4160, 4193),
        service_account="intruder", labels={"app": "intruder"}, app=sleeper(),
    )  # fmt: skip
    try:
        wait_until(intruder.ready, "the intruder never became ready", log=intruder.log)
        assert call(intruder, "http://echo.shop/")[0] == 403
        # The hosted client, an allowed identity on the same host as echo-1, gets through;
        # the sidecar client with the same identity from another host too.
        wait_until(lambda: served_by(w["client-1"], "http://echo.shop/") == "echo-1",
                   "the hosted client was not let through")  # fmt: skip
        assert served_by(w["client-2"], "http://echo.shop/") == "echo-1"
        wait_until(
            lambda: (
                "spiffe://cluster.local/ns/shop/sa/intruder: denied by shop/echo-allow"
                in mesh.node.log.read_text()
            ),
            "the host proxy logged no denial for the intruder",
        )
    finally:
        intruder.stop()


def test_a_host_cannot_register_a_workload_its_host_object_does_not_list(
    mesh: Mesh, tmp_path: Path
) -> None:
    rogue = run_hosted(
        mesh.node, tmp_path, "payments-1", Ports(4173, 4170, 4194), app=sleeper(),
        service_account="payments", labels={"app": "payments"},
    )  # fmt: skip
    code = rogue.proc.wait(timeout=60)
    assert code != 0
    assert "not registered on host 'node-1'" in rogue.log.read_text()
    audit = json.loads(mesh.cp.cli("audit", "-o", "json", check=True).stdout)["items"]
    refused = [i for i in audit if i["action"] == "certificate.refuse"]
    assert [i["name"] for i in refused] == ["spiffe://cluster.local/ns/shop/sa/payments"]
    # The others on the host are untouched.
    assert served_by(mesh.workloads["client-2"], "http://echo.shop/") == "echo-1"


def test_stat_and_tap_show_the_hosted_workload(mesh: Mesh) -> None:
    w = mesh.workloads
    wait_until(lambda: served_by(w["client-2"], "http://echo.shop/") == "echo-1",
               "echo.shop never answered")  # fmt: skip
    cp = mesh.cp
    proc = subprocess.Popen(
        cp.host.command(*GOSSAMER, "tap", "echo", "-n", "shop", "--path", "/tapped",
                        "--direction", "inbound", "--max", "1", "-o", "json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**cp_env(cp)},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("tapping "), line + proc.stderr.read()
        assert call(w["client-2"], "http://echo.shop/tapped/1")[0] == 200
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [event] = [json.loads(x) for x in out.splitlines()]
    assert event["destination"]["workload"] == "echo-1"
    assert event["source"]["identity"] == "spiffe://cluster.local/ns/shop/sa/client"

    def edges() -> list[dict[str, object]]:
        r = cp.cli("edges", "echo", "-n", "shop", "-o", "json", "--window", "15m")
        return json.loads(r.stdout) if r.returncode == 0 else []

    def from_both_clients() -> bool:
        callers = {e.get("src_name") for e in edges() if e.get("name") == "echo"}
        return {"client-1", "client-2"} <= callers

    assert served_by(w["client-1"], "http://echo.shop/") == "echo-1"
    # The golden metrics name the hosted caller as a workload of its own, like the sidecar.
    wait_until(from_both_clients, f"gossamer edges never showed both callers: {edges()}",
               timeout=60)  # fmt: skip


def cp_env(cp: HostControlPlane) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "GOSSAMER_SERVER": cp.api,
        "GOSSAMER_TOKEN": cp.token_file.read_text().strip(),
    }


GRPC_APP = """
import sys
from concurrent import futures
import grpc

def who(request, context):
    return b"grpc-1:" + request

handler = grpc.method_handlers_generic_handler(
    "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)})
server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handler])
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""

TCP_APP = """
import asyncio, sys

async def serve(reader, writer):
    while line := await reader.readline():
        writer.write(b"tcp-1:" + line)
        await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""

GRPC_CLIENT = """
import sys
import grpc
authority = [("grpc.default_authority", "grpc.shop:50051")]
with grpc.insecure_channel(sys.argv[1], options=authority) as ch:
    who = ch.unary_unary("/test.Echo/Who")
    print(who(b"hello", timeout=10).decode())
"""

TCP_CLIENT = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as s:
    s.sendall(b"ping\\n")
    print(s.makefile("rb").readline().decode().strip())
"""

PROTOCOL_SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: grpc, namespace: shop}
spec:
  selector: {app: grpc}
  ports: [{name: grpc, port: 50051, targetPort: grpc, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: tcpecho, namespace: shop}
spec:
  selector: {app: tcpecho}
  ports: [{name: tcp, port: 7000, targetPort: tcp, appProtocol: tcp}]
"""


def test_http2_grpc_and_tcp_reach_hosted_workloads_from_sidecars(
    mesh: Mesh, tmp_path: Path
) -> None:
    cp, node, sidecars = mesh.cp, mesh.node, mesh.network.hosts[2]
    cp.cli("apply", "-f", "-", stdin=PROTOCOL_SERVICES, check=True)
    identities = [("shop", sa) for sa in ("echo", "client", "grpc", "tcpecho")]
    cp.cli("apply", "-f", "-", stdin=host_object("node-1", *identities), check=True)
    python = GOSSAMER[0]
    grpc_app = tmp_path / "grpc_app.py"
    grpc_app.write_text(GRPC_APP)
    tcp_app = tmp_path / "tcp_app.py"
    tcp_app.write_text(TCP_APP)
    started = [
        run_hosted(node, tmp_path, "grpc-1", Ports(4243, 4240, 4291),
                   app=[python, str(grpc_app), "9051"], service_account="grpc",
                   labels={"app": "grpc"}, port="grpc=50051:9051/grpc"),
        run_hosted(node, tmp_path, "tcp-1", Ports(4343, 4340, 4391),
                   app=[python, str(tcp_app), "9070"], service_account="tcpecho",
                   labels={"app": "tcpecho"}, port="tcp=7000:9070/tcp"),
        run_sidecar(cp, sidecars, tmp_path, "tcp-client", Ports(4443, 4440, 4491),
                    app=sleeper(), service_account="client", labels={"app": "client"},
                    extra=("--upstream", "tcpecho.shop:7000=127.0.0.1:17000")),
    ]  # fmt: skip
    try:
        for w in started:
            wait_until(w.ready, f"{w.name} never became ready", timeout=90, log=w.log)
        client = mesh.workloads["client-2"]
        # HTTP/2 (prior knowledge) from the sidecar client to the hosted echo.
        r = sidecars.run("curl", "-sS", "--max-time", "10", "--http2-prior-knowledge",
                         "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                         "--connect-to", f"echo.shop:80:{client.outbound}",
                         "http://echo.shop/h2")  # fmt: skip
        assert r.stdout == "2 200", r.stderr

        # gRPC from the sidecar client to the hosted gRPC server.
        def grpc_call() -> str:
            out = sidecars.run(python, "-c", GRPC_CLIENT, client.outbound)
            return out.stdout.strip() or out.stderr.strip()

        wait_until(lambda: grpc_call() == "grpc-1:hello", f"no gRPC answer: {grpc_call()}")

        # Opaque TCP from a sidecar's upstream listener to the hosted TCP server.
        def tcp_call() -> str:
            out = sidecars.run(python, "-c", TCP_CLIENT, "17000")
            return out.stdout.strip() or out.stderr.strip()

        wait_until(lambda: tcp_call() == "tcp-1:ping", f"no TCP answer: {tcp_call()}")
    finally:
        for w in started:
            w.stop()


def _ask(path: Path, data: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        if data:
            s.sendall(data)
        answer = s.makefile("rb").readline()
    loaded: dict[str, object] = json.loads(answer)
    return loaded


def test_hostile_registrations_get_a_clear_error_and_the_host_proxy_serves_on(
    mesh: Mesh,
) -> None:
    sock = mesh.node.socket
    assert _ask(sock, b"not json\n") == {"ok": False, "error": "the registration is not JSON"}
    assert _ask(sock, b"[1, 2]\n") == {
        "ok": False,
        "error": "the registration must be a JSON object",
    }
    assert _ask(sock, b"[" * 100_000 + b"\n")["error"] == (
        "the registration is larger than 65536 bytes"
    )
    assert _ask(sock, b"")["error"] == "no registration within 5s"
    taken = json.dumps({"name": "echo-1", "namespace": "shop", "serviceAccount": "echo",
                        "inbound": "127.0.0.1:0", "outbound": "127.0.0.1:0",
                        "admin": "127.0.0.1:0"}).encode() + b"\n"  # fmt: skip
    assert _ask(sock, taken)["error"] == "workload shop/echo-1 is already registered on this host"
    assert served_by(mesh.workloads["client-2"], "http://echo.shop/") == "echo-1"
