"""`gossamer run --capture --workers 2` (issue 17, decisions 0060 and 0100): captured
connections reach every worker, the workers' own connections are not captured again,
and a worker started again after its death keeps both.

The capture rules let the proxy's own sockets out by group (`-m owner --gid-owner`,
`--capture-proxy-gid`, 1337 by default): `gossamer run` starts the proxy in that group,
and its workers are its children, so they are in it too. Were a worker's connection to
a peer's inbound listener captured, it would be sent back to the outbound listener
(a loop), and the requests the kernel hashed to that worker would fail: every request
answered, some by each worker, is what shows it, with each worker's group read from
/proc.
"""

from __future__ import annotations

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
from tests.hosts.netns import Network
from tests.proxy.test_workers import outbound_requests

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


def served(w: HostWorkload) -> list[int]:
    """Outbound requests each worker has carried, by worker index: worker 1 on up from
    their own admin listeners (on the host's loopback), worker 0 what the proxy's
    /metrics (the sum over workers) has beyond theirs."""

    def carried(port: int) -> int:
        return outbound_requests(w.curl(f"http://127.0.0.1:{port}/metrics").stdout)

    others = [carried(worker["admin"][1]) for worker in workers(w)[1:]]
    return [carried(ADMIN_PORT) - sum(others), *others]


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


def spread(client: HostWorkload, tag: str) -> list[int]:
    """REQUESTS plain curls on the client's host, each a captured connection of its own,
    every one answered by echo-1; what each of the client's workers carried of them."""
    before = served(client)
    for n in range(REQUESTS):
        assert curl(client.host, f"http://echo.shop/{tag}/{n}") == (0, "200 echo-1"), n
    return [after - was for after, was in zip(served(client), before, strict=True)]


def test_captured_connections_reach_every_worker_and_the_workers_own_are_not_captured(
    network: Network, control_plane: HostControlPlane, tmp_path: Path
) -> None:
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

    # Every process of both proxies is in the proxy's group, whose sockets the rules
    # let out.
    for w in (echo, client):
        for worker in workers(w):
            assert group_of(worker["pid"]) == DEFAULT_PROXY_ID, (w.name, worker)

    # Captured connections are hashed to both of the client's workers, and each worker's
    # own connection to echo's inbound listener leaves uncaptured: all answered.
    carried = spread(client, "spread")
    assert sum(carried) == REQUESTS and all(n > 0 for n in carried), carried

    # A worker killed and started again is in the group too, and serves its share.
    victim = workers(client)[1]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: all_serving(client, 1) and workers(client)[1]["pid"] != victim,
               "worker 1 was not started again", log=client.log)  # fmt: skip
    assert group_of(workers(client)[1]["pid"]) == DEFAULT_PROXY_ID
    carried = spread(client, "after-restart")
    assert sum(carried) == REQUESTS and all(n > 0 for n in carried), carried
