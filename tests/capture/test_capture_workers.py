"""`gossamer run --capture --workers 2` (issue 17, decisions 0060 and 0100): captured
connections, outbound and inbound, reach every worker, the workers' own connections
are not captured again, and a worker started again after its death keeps both.

The capture rules let the proxy's own sockets out by group (`-m owner --gid-owner`,
`--capture-proxy-gid`, 1337 by default): `gossamer run` starts the proxy in that group,
and its workers are its children, so they are in it too. Were a worker's connection to
a peer's inbound listener captured, it would be sent back to the outbound listener
(a loop), and the requests the kernel hashed to that worker would fail: every request
answered, some by each worker, is what shows it, with each worker's group read from
/proc.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossamer.capture.rules import DEFAULT_PROXY_ID
from tests.capture.test_run_capture import MESH, SERVICE, curl
from tests.hosts import netns
from tests.hosts.conftest import (
    ADMIN_PORT,
    HostControlPlane,
    HostWorkload,
    echo_app,
    require_namespaces,
    run_workload,
    sleeper,
    wait_until,
)
from tests.hosts.netns import Host, Network

pytestmark = pytest.mark.e2e

WORKERS = ("--workers", "2")
REQUESTS = 30


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> Iterator[Network]:
    """Three hosts (control plane, echo, client), their namespaces named gw5<pid>-…"""
    monkeypatch.setattr(netns, "PREFIX", "gw5")
    require_namespaces()
    with Network(3) as net:
        yield net


def workers(w: HostWorkload) -> list[dict[str, Any]]:
    listed = w.config()["workers"]
    assert isinstance(listed, list)
    return listed


def served(w: HostWorkload, direction: str) -> list[int]:
    """Requests each worker has carried in `direction`, by worker index: worker 1 on up
    from their own admin listeners (on the host's loopback), worker 0 what the proxy's
    /metrics (the sum over workers) has beyond theirs."""

    def carried(port: int) -> int:
        text = w.curl(f"http://127.0.0.1:{port}/metrics").stdout
        return sum(
            int(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("gossamer_requests_total{") and f'direction="{direction}"' in line
        )

    others = [carried(worker["admin"][1]) for worker in workers(w)[1:]]
    return [carried(ADMIN_PORT) - sum(others), *others]


def versions(w: HostWorkload) -> list[str]:
    """The snapshot version each worker serves."""
    out = []
    for worker in workers(w):
        port = ADMIN_PORT if worker["index"] == 0 else worker["admin"][1]
        config = json.loads(w.curl(f"http://127.0.0.1:{port}/config").stdout)
        out.append(str(config["snapshot"]["version"]))
    return out


def group_of(pid: int) -> int:
    """A process's effective group id (what `--gid-owner` matches on its sockets)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Gid:"):
            return int(line.split()[2])
    raise AssertionError(f"no Gid line for pid {pid}")


def all_serving(w: HostWorkload, restarts: int) -> bool:
    listed = workers(w)
    return (
        len(listed) == 2
        and all(x["ready"] and x["pid"] for x in listed)
        and (listed[1]["restarts"] == restarts)
    )


def spread(proxy: HostWorkload, direction: str, sender: Host, url: str) -> list[int]:
    """REQUESTS plain curls to `url` from `sender`, each a connection of its own,
    captured into `proxy`, every one answered by echo-1; what each of `proxy`'s workers
    carried of them in `direction`."""
    before = served(proxy, direction)
    for n in range(REQUESTS):
        assert curl(sender, f"{url}/{n}") == (0, "200 echo-1"), n
    return [after - was for after, was in zip(served(proxy, direction), before, strict=True)]


def start_echo_and_client(
    control_plane: HostControlPlane, network: Network, tmp_path: Path
) -> tuple[HostWorkload, HostWorkload]:
    """echo-1 and a client, each `gossamer run --capture --workers 2` on a host of its
    own, both workers of each serving, a captured call from the client answered."""
    control_plane.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    _, echo_host, client_host = network.hosts
    echo = run_workload(
        control_plane, echo_host, tmp_path, "echo-1", service_account="echo",
        labels={"app": "echo"}, app=echo_app("echo-1"), port="http=8080:8081",
        extra=(*MESH, *WORKERS),
    )  # fmt: skip
    client = run_workload(
        control_plane, client_host, tmp_path, "client", service_account="client",
        labels={"app": "client"}, app=sleeper(), extra=(*MESH, *WORKERS),
    )  # fmt: skip
    for w in (echo, client):
        wait_until(w.ready, f"{w.name} never became ready", log=w.log)
        wait_until(lambda w=w: all_serving(w, 0), f"{w.name}'s workers never served", log=w.log)
    wait_until(lambda: curl(client_host, "http://echo.shop/") == (0, "200 echo-1"),
               "the captured call never reached echo-1", log=client.log)  # fmt: skip
    return echo, client


def test_captured_connections_reach_every_worker_and_the_workers_own_are_not_captured(
    network: Network, control_plane: HostControlPlane, tmp_path: Path
) -> None:
    echo, client = start_echo_and_client(control_plane, network, tmp_path)
    outbound = ("outbound", client.host, "http://echo.shop")

    # Every process of both proxies is in the proxy's group, whose sockets the rules
    # let out.
    for w in (echo, client):
        for worker in workers(w):
            assert group_of(worker["pid"]) == DEFAULT_PROXY_ID, (w.name, worker)

    # Captured connections are hashed to both of the client's workers, and each worker's
    # own connection to echo's inbound listener leaves uncaptured: all answered.
    carried = spread(client, *outbound)
    assert sum(carried) == REQUESTS and all(n > 0 for n in carried), carried

    # A worker killed and started again is in the group too, and serves its share.
    victim = workers(client)[1]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: all_serving(client, 1) and workers(client)[1]["pid"] != victim,
               "worker 1 was not started again", log=client.log)  # fmt: skip
    assert group_of(workers(client)[1]["pid"]) == DEFAULT_PROXY_ID
    carried = spread(client, *outbound)
    assert sum(carried) == REQUESTS and all(n > 0 for n in carried), carried


PERMISSIVE = """
apiVersion: gossamer.dev/v1alpha1
kind: MeshPolicy
metadata: {name: plain-allowed, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
"""


def test_captured_inbound_connections_reach_every_worker(
    network: Network, control_plane: HostControlPlane, tmp_path: Path
) -> None:
    """A client outside the mesh calls echo-1's port: the capture on echo's host sends
    it to the inbound listener, whose connections both workers take (PERMISSIVE, so a
    plaintext client is served)."""
    echo, _ = start_echo_and_client(control_plane, network, tmp_path)
    before = versions(echo)
    control_plane.cli("apply", "-f", "-", stdin=PERMISSIVE, check=True)

    def permissive_in_both() -> bool:
        now = versions(echo)
        return len(set(now)) == 1 and now[0] not in before

    wait_until(permissive_in_both, "PERMISSIVE never reached both of echo-1's workers",
               log=echo.log)  # fmt: skip
    outside = network.hosts[0]  # the control plane's host: nothing captured there
    app_port = f"http://{echo.host.address}:8080"
    wait_until(lambda: curl(outside, f"{app_port}/") == (0, "200 echo-1"),
               "plaintext to echo-1's port never served", log=echo.log)  # fmt: skip
    carried = spread(echo, "inbound", outside, app_port)
    assert sum(carried) == REQUESTS and all(n > 0 for n in carried), carried
