"""One mesh, two data planes: every pairing of engines carries HTTP/1.1, HTTP/2, gRPC
and opaque TCP.

A module-wide mesh: two server workloads serving the same apps, one with Gossamer's
proxy and one with `gossamer run --engine envoy`, and one client workload of each
engine. Each case sends real requests (curl, grpcio) from one client engine to one
server engine (TCP through each client's `--upstream` listener for the server's
opaque port). Only the two clients' identities may call the servers (an ALLOW
policy by principal, enforced by whichever proxy is inbound), so a pass also says the
SPIFFE ID travelled over mTLS between different engines.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from gossamer.telemetry.golden import Sample, parse_prometheus_text
from tests.e2e.conftest import (
    Workload,
    echo_app,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_process,
)
from tests.proxy.test_e2e_grpc import SERVICE, grpc_server

pytestmark = pytest.mark.e2e

ENGINES = ("gossamer", "envoy")

MESH = """
apiVersion: v1
kind: Service
metadata: {name: echo-gossamer, namespace: shop}
spec:
  selector: {app: srv-gossamer}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-envoy, namespace: shop}
spec:
  selector: {app: srv-envoy}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: greeter-gossamer, namespace: shop}
spec:
  selector: {app: srv-gossamer}
  ports: [{name: grpc, port: 9090, targetPort: grpc, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: greeter-envoy, namespace: shop}
spec:
  selector: {app: srv-envoy}
  ports: [{name: grpc, port: 9090, targetPort: grpc, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: raw-gossamer, namespace: shop}
spec:
  selector: {app: srv-gossamer}
  ports: [{name: raw, port: 7000, targetPort: raw, appProtocol: tcp}]
---
apiVersion: v1
kind: Service
metadata: {name: raw-envoy, namespace: shop}
spec:
  selector: {app: srv-envoy}
  ports: [{name: raw, port: 7000, targetPort: raw, appProtocol: tcp}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-the-clients, namespace: shop}
spec:
  selector: {matchLabels: {role: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/cli-gossamer,
                                  cluster.local/ns/shop/sa/cli-envoy]}}]
"""


@dataclass
class Mesh:
    api: str
    clients: dict[str, Workload]
    servers: dict[str, Workload]
    # (client engine, server engine) → the client's TCP upstream listener for the
    # server's opaque port (`--upstream raw-SERVER.shop:7000=...`).
    tcp: dict[tuple[str, str], str]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mixed")
    cp = start_control_plane(tmp / "cp", "--xds", "127.0.0.1:0", "--scrape-interval", "1")
    started: list[Workload] = []
    server, grpc_port = grpc_server("greeter")
    try:
        ready = dict(line.split("=", 1) for line in (tmp / "cp.ready").read_text().split())
        cp.cli("apply", "-f", "-", stdin=MESH, check=True)
        envoy = ("--engine", "envoy", "--xds", ready["xds"])
        clients, servers, tcp = {}, {}, {}
        for engine in ENGINES:
            app_port = free_port()
            srv = run_workload(
                cp, tmp, f"srv-{engine}", service_account=f"srv-{engine}",
                labels={"app": f"srv-{engine}", "role": "server"},
                app=echo_app(f"srv-{engine}", app_port), port=f"http=8080:{app_port}",
                extra=("--port", f"grpc=9090:{grpc_port}", "--port", f"raw=7000:{app_port}/tcp",
                       *(envoy if engine == "envoy" else ())),
            )  # fmt: skip
            started.append(srv)
            servers[engine] = srv
            upstreams: list[str] = []
            for server_engine in ENGINES:
                tcp[(engine, server_engine)] = listen = f"127.0.0.1:{free_port()}"
                upstreams += ["--upstream", f"raw-{server_engine}.shop:7000={listen}"]
            cli = run_workload(
                cp, tmp, f"cli-{engine}", service_account=f"cli-{engine}",
                labels={"app": f"cli-{engine}"}, app=sleeper(),
                extra=(*upstreams, *(envoy if engine == "envoy" else ())),
            )  # fmt: skip
            started.append(cli)
            clients[engine] = cli
        for w in started:
            w.wait_ready()
        yield Mesh(cp.api, clients, servers, tcp)
    finally:
        for w in reversed(started):
            w.stop()
        server.stop(0)
        stop_process(cp.proc)


def _curl(outbound: str, host: str, *extra: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        ["curl", "-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}", "-H", f"Host: {host}",
         *extra, f"http://{outbound}/hello"],
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), json.loads(body) if body.startswith("{") else {"text": body}


def _grpc(outbound: str, authority: str) -> bytes:
    with grpc.insecure_channel(outbound, options=[("grpc.default_authority", authority)]) as ch:
        call = ch.unary_unary(f"/{SERVICE}/Unary")
        return bytes(call(b"abc", timeout=5))


CASES = [(c, s, p) for c in ENGINES for s in ENGINES for p in ("http1", "http2", "grpc", "tcp")]


@pytest.mark.parametrize(
    ("client", "server", "protocol"),
    CASES,
    ids=[f"{p} from a {c} client to a {s} server" for c, s, p in CASES],
)
def test_every_pairing_of_engines_carries_the_protocol(
    mesh: Mesh, client: str, server: str, protocol: str
) -> None:
    outbound = mesh.clients[client].outbound
    deadline = time.monotonic() + 30  # the first call may wait for config to arrive
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if protocol == "grpc":
                assert _grpc(outbound, f"greeter-{server}.shop:9090") == b"cba"
                return
            if protocol == "tcp":
                # HTTP bytes as opaque TCP (the port says tcp): nothing reads them
                # between the client's upstream listener and the app.
                status, data = _curl(mesh.tcp[(client, server)], "anything")
                last = (status, data)
                if status == 200:
                    assert data["servedBy"] == f"srv-{server}"
                    return
                time.sleep(0.3)
                continue
            extra = ("--http2-prior-knowledge",) if protocol == "http2" else ()
            status, data = _curl(outbound, f"echo-{server}.shop", *extra)
            last = (status, data)
            if status == 200:
                assert data["servedBy"] == f"srv-{server}"
                return
        except grpc.RpcError as err:
            last = err
        time.sleep(0.3)
    raise AssertionError(f"{protocol} from {client} to {server}: last answer {last}")


@pytest.mark.parametrize(
    ("caller", "callee"),
    [("gossamer", "envoy"), ("envoy", "gossamer")],
    ids=["Envoy's RBAC refuses a Gossamer proxy", "Gossamer's inbound refuses an Envoy"],
)
def test_an_identity_outside_the_policy_is_refused_by_the_other_engine(
    mesh: Mesh, caller: str, callee: str
) -> None:
    """The ALLOW policy names the two clients only: a server's identity calling the
    other server is denied by that server's inbound, whichever engine it is."""
    outbound = mesh.servers[caller].outbound
    deadline = time.monotonic() + 30
    status, data = 0, {}
    while time.monotonic() < deadline:
        status, data = _curl(outbound, f"echo-{callee}.shop")
        if status == 403:
            break
        time.sleep(0.3)
    assert status == 403, data
    text = data.get("text", "") + json.dumps(data)
    assert ("RBAC" in text) if callee == "envoy" else ("only-the-clients" in text), data


def _scrape(admin: str) -> list[Sample]:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        return parse_prometheus_text(r.read().decode())


def test_an_envoy_workloads_requests_reach_golden_metrics(mesh: Mesh) -> None:
    """Envoy's /stats/prometheus, served as Gossamer's series by the supervisor's admin
    listener, is scraped like a Gossamer proxy's: gossamer stat counts echo-envoy."""
    for _ in range(5):
        assert _curl(mesh.clients["gossamer"].outbound, "echo-envoy.shop")[0] == 200
        assert _curl(mesh.clients["envoy"].outbound, "echo-gossamer.shop")[0] == 200
    inbound = [
        s
        for s in _scrape(mesh.servers["envoy"].admin)
        if s.name == "gossamer_requests_total" and s.labels["direction"] == "inbound"
    ]
    assert any(s.labels["dst_service"] == "echo-envoy" and s.value >= 5 for s in inbound), inbound
    outbound = [
        s
        for s in _scrape(mesh.clients["envoy"].admin)
        if s.name == "gossamer_requests_total" and s.labels["direction"] == "outbound"
    ]
    assert any(
        (s.labels["src_service"], s.labels["dst_service"], s.labels["code"])
        == ("cli-envoy", "echo-gossamer", "200")
        and s.value >= 5
        for s in outbound
    ), outbound
    deadline = time.monotonic() + 30
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        # Requests keep coming while scrapes go by: a window counts what happened in it.
        _curl(mesh.clients["gossamer"].outbound, "echo-envoy.shop")
        url = f"{mesh.api}/v1/stats/services?namespace=shop&name=echo-envoy&window=1m"
        with urllib.request.urlopen(url, timeout=5) as r:
            items = json.loads(r.read())["items"]
        row = items[0] if items else {}
        if row.get("requests", 0) > 0:
            break
        time.sleep(0.5)
    assert row.get("requests", 0) > 0 and row["success_rate"] == 1.0, row
