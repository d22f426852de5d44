"""The mesh across hosts: the control plane on one network namespace, workloads on
others, every call crossing a veth and a bridge with mTLS. Multi-host variants of
tests/e2e/test_traffic.py (routing, split) and tests/e2e/test_security.py
(authorization by identity), and a host cut off the network.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hosts.conftest import (
    HostControlPlane,
    HostWorkload,
    echo_app,
    run_workload,
    sleeper,
    wait_until,
)
from tests.hosts.netns import Network

pytestmark = pytest.mark.e2e

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-canary, namespace: shop}
spec: {selector: {app: canary}, ports: [{name: http, port: 80, targetPort: http}]}
"""

ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - name: canary
    matches: [{path: {type: PathPrefix, value: /}, headers: [{name: x-canary, value: "1"}]}]
    backendRefs: [{name: echo-canary, port: 80}]
  - name: split
    backendRefs: [{name: echo, port: 80, weight: 50}, {name: echo-canary, port: 80, weight: 50}]
"""

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
    to: [{operation: {methods: ["GET"]}}]
"""


def call(client: HostWorkload, path: str = "/", *headers: str) -> tuple[int, dict[str, str], str]:
    """GET http://echo.shop{path} through the client's proxy, from the client's host."""
    flags = [x for h in headers for x in ("-H", h)]
    r = client.curl("-D", "-", "-x", f"http://{client.outbound}", *flags, f"http://echo.shop{path}")
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    if not lines[0].startswith("HTTP/"):
        return 0, {}, r.stderr
    fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), fields, body


def served_by(client: HostWorkload, *headers: str) -> str:
    status, fields, _ = call(client, "/", *headers)
    return fields.get("x-served-by", f"status {status}") if status == 200 else f"status {status}"


@pytest.fixture
def shop(
    network: Network, control_plane: HostControlPlane, tmp_path: Path
) -> Iterator[dict[str, HostWorkload]]:
    """echo-1 on host 1, canary-1 on host 2, the client on host 3."""
    control_plane.cli("apply", "-f", "-", stdin=SERVICES, check=True)
    hosts = network.hosts
    started: dict[str, HostWorkload] = {}
    try:
        for name, sa, host in (("echo-1", "echo", hosts[1]), ("canary-1", "canary", hosts[2])):
            started[name] = run_workload(
                control_plane, host, tmp_path, name, service_account=sa, labels={"app": sa},
                app=echo_app(name), port="http=8080:8081",
                extra=("--access-log", str(tmp_path / f"{name}.access")),
            )  # fmt: skip
        started["client"] = run_workload(
            control_plane, hosts[3], tmp_path, "client", service_account="client",
            labels={"app": "client"}, app=sleeper(),
        )  # fmt: skip
        for w in started.values():
            wait_until(w.ready, f"{w.name} never became ready", log=w.log)
        client = started["client"]
        wait_until(lambda: served_by(client) == "echo-1", "echo.shop never answered")
        yield started
    finally:
        for w in started.values():
            w.stop()


def test_a_route_matches_and_splits_across_hosts_with_mtls(
    shop: dict[str, HostWorkload], control_plane: HostControlPlane
) -> None:
    client = shop["client"]
    control_plane.cli("apply", "-f", "-", stdin=ROUTE, check=True)
    wait_until(lambda: served_by(client, "x-canary: 1") == "canary-1", "the route never applied")
    for _ in range(5):
        assert served_by(client, "x-canary: 1") == "canary-1"
    # The 50/50 split: Binomial(60, 0.5) has mean 30, sd 3.9.
    seen = Counter(served_by(client) for _ in range(60))
    assert seen["echo-1"] + seen["canary-1"] == 60, seen
    assert 12 <= seen["canary-1"] <= 48, seen
    # The calls crossed hosts with mTLS: the serving proxy saw the client's identity,
    # from the client host's address.
    assert call(client, "/who", "x-canary: 1")[0] == 200
    access = shop["canary-1"].log.with_suffix(".access")

    def inbound_who() -> list[dict[str, object]]:
        events = [json.loads(x) for x in access.read_text().splitlines()] if access.exists() else []
        return [e for e in events if e["direction"] == "inbound" and e["path"] == "/who"]

    wait_until(lambda: inbound_who(), "canary-1's proxy logged no inbound /who")
    (event,) = inbound_who()
    assert event["tls"] is True
    assert event["source"] == {"workload": None, "namespace": "shop", "service": "client",
                               "identity": "spiffe://cluster.local/ns/shop/sa/client"}  # fmt: skip
    assert event["client_address"] == client.host.address
    stats = control_plane.cli("get", "workloads", "-n", "shop", "-o", "json", check=True).stdout
    addresses = {w["metadata"]["name"]: w["spec"]["address"] for w in json.loads(stats)["items"]}
    assert addresses == {
        "echo-1": shop["echo-1"].host.address,
        "canary-1": shop["canary-1"].host.address,
        "client": client.host.address,
    }


def test_authorization_by_identity_holds_across_hosts(
    network: Network, control_plane: HostControlPlane, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICES.split("---")[0] + "---" + POLICY,
                      check=True)  # fmt: skip
    hosts = network.hosts
    started: list[HostWorkload] = []
    try:
        echo = run_workload(
            control_plane, hosts[1], tmp_path, "echo-1", service_account="echo",
            labels={"app": "echo"}, app=echo_app("echo-1"), port="http=8080:8081",
        )  # fmt: skip
        client, intruder = (
            run_workload(
                control_plane,
                host,
                tmp_path,
                sa,
                service_account=sa,
                labels={"app": sa},
                app=sleeper(),
            )
            for sa, host in (("client", hosts[2]), ("intruder", hosts[3]))
        )
        started += [echo, client, intruder]
        for w in started:
            wait_until(w.ready, f"{w.name} never became ready", log=w.log)
        wait_until(lambda: call(client)[0] == 200, "the allowed client never got through")
        status, fields, _ = call(intruder, "/denied")
        assert status == 403
        assert fields["gossamer-error"] == "denied by shop/echo-allow: no rule matches"
        wait_until(
            lambda: (
                "spiffe://cluster.local/ns/shop/sa/intruder: denied by shop/echo-allow"
                in echo.log.read_text()
            ),
            "no log line for the denial on echo's host",
        )
        # The allowed identity, from its own host, still gets through.
        assert call(client)[0] == 200
    finally:
        for w in started:
            w.stop()


def test_clients_route_around_a_host_cut_off_the_network(
    network: Network, control_plane: HostControlPlane, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICES.split("---")[0], check=True)
    hosts = network.hosts
    started: list[HostWorkload] = []
    try:
        for name, host in (("echo-1", hosts[1]), ("echo-2", hosts[2])):
            started.append(run_workload(
                control_plane, host, tmp_path, name, service_account="echo",
                labels={"app": "echo"}, app=echo_app(name), port="http=8080:8081",
            ))  # fmt: skip
        client = run_workload(control_plane, hosts[3], tmp_path, "client",
                              service_account="client", labels={"app": "client"},
                              app=sleeper())  # fmt: skip
        started.append(client)
        for w in started:
            wait_until(w.ready, f"{w.name} never became ready", log=w.log)
        seen: Counter[str] = Counter()

        def both_serve() -> bool:
            seen[served_by(client)] += 1
            return seen["echo-1"] > 0 and seen["echo-2"] > 0

        wait_until(both_serve, f"both replicas never served: {seen}")

        hosts[2].link(up=False)  # echo-2's host is gone, with no RST to say so

        # The control plane notices (its discovery stream to echo-2's proxy goes
        # silent, then the workload's lease runs out) and takes echo-2 out of the
        # endpoints. Until then a call may still wait on a pooled connection to it.
        def echo_2_disconnected() -> bool:
            r = control_plane.cli("get", "workload", "echo-2", "-n", "shop", "-o", "json")
            conditions = json.loads(r.stdout).get("status", {}).get("conditions", [])
            return {"type": "ProxyConnected", "status": "False"}.items() <= next(
                (c.items() for c in conditions if c.get("type") == "ProxyConnected"), set()
            )

        wait_until(echo_2_disconnected, "echo-2 never left the mesh", timeout=90)
        # The client settles on echo-1 ...
        streak, deadline = 0, time.monotonic() + 60
        while streak < 10:
            assert time.monotonic() < deadline, f"never settled on echo-1 (last streak {streak})"
            streak = streak + 1 if served_by(client) == "echo-1" else 0
        # ... and then every call is answered, by the replica still on the network.
        assert Counter(served_by(client) for _ in range(30)) == Counter({"echo-1": 30})
    finally:
        for w in started:
            w.stop()
