"""`--workers N`: real `gossamer run` proxies with two data-plane processes each.

One agent feeds the workers (gossamer.workers): the listeners are shared with
SO_REUSEPORT, traffic spreads over both, the snapshot and the certificate reach each
one, a killed worker is started again without the proxy losing its listener, and the
workers die with their supervisor.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from gossamer.dns.names import DEFAULT_SERVICE_CIDR, virtual_ip
from gossamer.proxy.dataplane import DataPlane, DataPlaneConfig
from gossamer.workers import merge_metrics
from tests.e2e.conftest import (
    GOSSAMER,
    ControlPlaneProcess,
    Workload,
    echo_app,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_process,
)
from tests.proxy.conftest import Pki, server_snapshot

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
"""
# A change for both proxies' snapshots: the client's route to echo, echo's policy.
CHANGE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-via, value: route}]}}
    backendRefs: [{name: echo, port: 80}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-audit, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audited/*"]}}]}]
"""


def get_json(address: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def get_text(address: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
        return str(resp.read().decode())


def workers_of(w: Workload) -> list[dict[str, Any]]:
    workers: list[dict[str, Any]] = get_json(w.admin, "/config")["workers"]
    return workers


def admin_of(w: Workload, worker: dict[str, Any]) -> str:
    """Worker 0's admin is the proxy's; the others listen on their own."""
    if worker["index"] == 0:
        return w.admin
    host, port = worker["admin"]
    return f"{host}:{port}"


def eventually(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        time.sleep(0.2)


def all_ready(w: Workload) -> bool:
    try:
        workers = workers_of(w)
        return len(workers) == 2 and all(x["ready"] and x["pid"] for x in workers)
    except OSError:
        return False


def outbound_requests(text: str) -> int:
    return sum(
        int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gossamer_requests_total{") and 'direction="outbound"' in line
    )


def request(outbound: str, path: str) -> int:
    """One request on a connection of its own: each new connection is hashed to a worker."""
    host, port = outbound.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", f"http://echo.shop{path}")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProcess, Workload, Workload]]:
    tmp = tmp_path_factory.mktemp("workers")
    cp = start_control_plane(tmp / "cp")
    started: list[Workload] = []
    try:
        cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
        echo = run_workload(
            cp, tmp, "echo-1", service_account="echo", labels={"app": "echo"},
            app=echo_app("echo-1", port := free_port()), port=f"http=8080:{port}",
            extra=("--workers", "2"),
        )  # fmt: skip
        started.append(echo)
        client = run_workload(
            cp, tmp, "client", service_account="client", labels={}, app=sleeper(),
            extra=("--workers", "2"),
        )  # fmt: skip
        started.append(client)
        for w in started:
            w.wait_ready(timeout=60)
            eventually(f"{w.name}'s workers ready", lambda w=w: all_ready(w), timeout=60)
        eventually("echo answers through the mesh", lambda: request(client.outbound, "/p") == 200)
        yield cp, echo, client
    finally:
        for w in started:
            w.stop()
        stop_process(cp.proc)


def test_traffic_over_two_workers_is_spread_across_both(
    mesh: tuple[ControlPlaneProcess, Workload, Workload],
) -> None:
    _, _, client = mesh
    workers = workers_of(client)
    before_total = outbound_requests(get_text(client.admin, "/metrics"))
    before_w1 = outbound_requests(get_text(admin_of(client, workers[1]), "/metrics"))
    for n in range(40):
        assert request(client.outbound, f"/spread/{n}") == 200
    total = outbound_requests(get_text(client.admin, "/metrics")) - before_total
    by_worker_1 = outbound_requests(get_text(admin_of(client, workers[1]), "/metrics")) - before_w1
    # The proxy's /metrics adds up its workers: all 40, some from each.
    assert total == 40
    assert 0 < by_worker_1 < 40, by_worker_1


def test_a_config_change_and_a_certificate_rotation_reach_every_worker(
    mesh: tuple[ControlPlaneProcess, Workload, Workload],
) -> None:
    cp, echo, client = mesh

    def seen(w: Workload) -> list[tuple[str, str]]:
        out = []
        for worker in workers_of(w):
            config = get_json(admin_of(w, worker), "/config")
            out.append((config["snapshot"]["version"], config["certificate"]["not_after"]))
        return out

    before = {w.name: seen(w) for w in (echo, client)}
    for views in before.values():
        assert len(views) == 2 and views[0] == views[1], views

    cp.cli("apply", "-f", "-", stdin=CHANGE, check=True)
    rotated = cp.cli("ca", "rotate", "intermediate", "--timeout", "90")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr

    def moved(w: Workload) -> bool:
        views = seen(w)
        old_version, old_cert = before[w.name][0]
        return all(v != old_version and c != old_cert for v, c in views) and views[0] == views[1]

    for w in (echo, client):
        eventually(f"{w.name}: new snapshot and certificate in both workers", lambda w=w: moved(w))
    assert request(client.outbound, "/after-rotation") == 200


def test_killing_a_worker_loses_no_listener_and_it_is_started_again(
    mesh: tuple[ControlPlaneProcess, Workload, Workload],
) -> None:
    _, echo, client = mesh
    for w in (client, echo):
        victim = workers_of(w)[1]
        os.kill(victim["pid"], signal.SIGKILL)
        if w is echo:
            eventually("the killed worker is gone", lambda victim=victim: not _alive(victim["pid"]))
            # The client proxy's pooled connections to the killed worker died with it: a
            # request sent on one before its loop has read the peer's FIN is lost (three
            # tries on dead pooled connections give a 502, as a peer sidecar's death
            # would; retries are a RetryPolicy's job). Wait for the pool to be clean,
            # then every new connection to echo's listeners must be served.
            eventually("the client's pool lets the dead connections go", lambda: _answers(client))
        # At once, while the worker dies: its sockets are the agent's (decision 0100), so
        # a connection the kernel gives one of them waits there for worker 0, not a reset.
        for n in range(20):
            assert request(client.outbound, f"/while-{w.name}-restarts/{n}") == 200
        eventually(
            f"{w.name}: worker 1 started again",
            lambda w=w, victim=victim: (
                all_ready(w)
                and workers_of(w)[1]["pid"] != victim["pid"]
                and workers_of(w)[1]["restarts"] == 1
            ),
        )
    # ...and the new worker serves its share again.
    workers = workers_of(client)
    before = outbound_requests(get_text(admin_of(client, workers[1]), "/metrics"))
    for n in range(40):
        assert request(client.outbound, f"/after-restart/{n}") == 200
    assert outbound_requests(get_text(admin_of(client, workers[1]), "/metrics")) > before


@pytest.mark.parametrize(
    "how",
    [signal.SIGKILL, signal.SIGTERM],
    ids=["killing the supervisor kills the workers", "stopping the proxy stops its workers"],
)
def test_the_workers_end_with_their_supervisor(
    mesh: tuple[ControlPlaneProcess, Workload, Workload], tmp_path: Path, how: signal.Signals
) -> None:
    with lone_proxy(mesh[0], tmp_path) as lonely:
        worker = workers_of(lonely)[1]["pid"]
        assert worker is not None and worker != lonely.proc.pid
        lonely.proc.send_signal(how)
        lonely.proc.wait(timeout=30)
        eventually("the worker ends with its supervisor", lambda: not _alive(worker))


def test_mesh_dns_is_answered_beside_two_workers(
    mesh: tuple[ControlPlaneProcess, Workload, Workload], tmp_path: Path
) -> None:
    port = free_port()
    with lone_proxy(mesh[0], tmp_path, "--dns", f"127.0.0.1:{port}") as lonely:
        eventually("both workers ready", lambda: all_ready(lonely))
        query = dns.message.make_query("echo.shop.svc.cluster.local", "A")
        expected = virtual_ip("echo", "shop", ipaddress.IPv4Network(DEFAULT_SERVICE_CIDR))
        for ask in (dns.query.udp, dns.query.tcp):
            (rrset,) = ask(query, "127.0.0.1", port=port, timeout=5).answer
            assert [r.to_text() for r in rrset] == [expected]


def test_a_tcp_upstream_listener_is_served_by_both_workers_and_survives_a_kill(
    mesh: tuple[ControlPlaneProcess, Workload, Workload], tmp_path: Path
) -> None:
    upstream = f"127.0.0.1:{free_port()}"
    with lone_proxy(mesh[0], tmp_path, "--upstream", f"echo.shop:80={upstream}") as lonely:
        eventually("both workers ready", lambda: all_ready(lonely))
        worker = workers_of(lonely)[1]
        for n in range(20):
            assert request(upstream, f"/upstream/{n}") == 200
        # The listener's socket in worker 1 is the one the agent made and passed it.
        assert 0 < outbound_requests(get_text(admin_of(lonely, worker), "/metrics")) < 20
        os.kill(worker["pid"], signal.SIGKILL)
        for n in range(20):
            assert request(upstream, f"/upstream-after-kill/{n}") == 200
        eventually("worker 1 started again", lambda: workers_of(lonely)[1]["restarts"] == 1)


def test_every_worker_names_the_http2_codec_it_runs(
    mesh: tuple[ControlPlaneProcess, Workload, Workload],
) -> None:
    for w in mesh[1:]:
        log = w.log.read_text()
        assert re.search(r"gossamer\.proxy: HTTP/2 codec: \S", log), log
        assert re.search(r"gossamer\.proxy\[worker 1\]: HTTP/2 codec: \S", log), log


@contextlib.contextmanager
def lone_proxy(
    cp: ControlPlaneProcess,
    tmp_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> Iterator[Workload]:
    """`gossamer proxy --workers 2` with no app, ready (unless `wait_ready` is False)."""
    admin, inbound, outbound = (f"127.0.0.1:{free_port()}" for _ in range(3))
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proxy = subprocess.Popen(
            [
                *GOSSAMER, "proxy", "--name", "lonely", "-n", "shop",
                "--inbound", inbound, "--outbound", outbound,
                "--admin", admin, "--discovery", cp.discovery, "--server", cp.api,
                "--token-file", str(cp.token_file), "--state-dir", str(tmp_path / "state"),
                "--workers", "2", "--drain-seconds", "0", *extra,
            ],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
    try:
        lonely = Workload("lonely", proxy, inbound, outbound, admin, tmp_path / "state", log)
        if wait_ready:
            lonely.wait_ready(timeout=60)
        yield lonely
    finally:
        stop_process(proxy)


def test_connections_queued_on_a_killed_worker_are_served_not_reset(
    mesh: tuple[ControlPlaneProcess, Workload, Workload],
) -> None:
    _, _, client = mesh
    eventually("the client's workers ready", lambda: all_ready(client))
    victim = workers_of(client)[1]
    restarts = victim["restarts"]
    port = int(client.outbound.rsplit(":", 1)[1])
    # A stopped worker accepts nothing: the connections the kernel hashes to its socket
    # wait in its accept queue, requests sent, when it is killed.
    os.kill(victim["pid"], signal.SIGSTOP)
    conns: list[http.client.HTTPConnection] = []
    try:
        for n in range(24):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            conns.append(conn)
            conn.request("GET", f"http://echo.shop/queued/{n}")
        eventually("connections queued on the stopped worker", lambda: _queued(port) > 0)
        os.kill(victim["pid"], signal.SIGKILL)
        statuses = []
        for conn in conns:
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
    finally:
        for conn in conns:
            conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], signal.SIGKILL)
    assert statuses == [200] * 24
    eventually(
        "worker 1 started again",
        lambda: all_ready(client) and workers_of(client)[1]["restarts"] == restarts + 1,
    )


def _queued(port: int) -> int:
    """Connections waiting in the accept queues of the listeners on 127.0.0.1:`port`
    (a listener's rx_queue in /proc/net/tcp is its accept queue's length)."""
    local = f"0100007F:{port:04X}"
    queued = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":  # LISTEN
                queued += int(fields[4].split(":")[1], 16)
    return queued


def _answers(client: Workload) -> bool:
    try:
        return request(client.outbound, "/pool-check") == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped before, or while, read
        return False


@pytest.mark.parametrize(
    ("texts", "merged"),
    [
        (
            [
                '# TYPE a_total counter\na_total{x="1"} 2\n# TYPE g gauge\ng 1\n',
                '# TYPE a_total counter\na_total{x="1"} 3\na_total{x="2"} 1\n# TYPE g gauge\ng 4\n',
            ],
            '# TYPE a_total counter\na_total{x="1"} 5\na_total{x="2"} 1\n# TYPE g gauge\ng 5\n',
        ),
        (
            [
                "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 20.5\n",
                "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 10.25\n",
            ],
            "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 10.25\n",
        ),
        (
            [
                "# TYPE h histogram\nh_sum 0.5\nh_count 1\n",
                "# TYPE h histogram\nh_sum 0.25\nh_count 2\n",
            ],
            "# TYPE h histogram\nh_sum 0.75\nh_count 3\n",
        ),
    ],
    ids=[
        "counters and gauges are added up per series",
        "the earliest process start is the proxy's",
        "histogram sums and counts are added up",
    ],
)
def test_worker_metrics_merge_into_one_exposition(texts: list[str], merged: str) -> None:
    assert merge_metrics(texts) == merged


class RecordingWorkers:
    """Stands in for gossamer.workers.WorkerSet: what the data plane hands on."""

    def __init__(self, count: int, demand: dict[str, int]) -> None:
        self.share = 1.0 / count
        self.sent: list[tuple[Any, ...]] = []
        self._demand = demand

    def broadcast(self, message: tuple[Any, ...]) -> None:
        self.sent.append(message)

    def demand(self) -> dict[str, int]:
        return self._demand

    def serve_metrics(self, conn: Any, own: str) -> None:
        raise AssertionError("not asked")


def test_each_process_takes_its_part_of_the_shares_and_the_demand_is_the_sum() -> None:
    dp = DataPlane(DataPlaneConfig(), on_interest=lambda key: None)
    workers = RecordingWorkers(2, {"shop/limit/echo": 3, "shop/other/echo": 1})
    dp.workers = workers
    dp.set_control_shares({"shop/limit/echo": 0.5, "shop/bad/echo": "x"})  # type: ignore[dict-item]
    assert workers.sent == [("shares", {"shop/limit/echo": 0.25, "shop/bad/echo": "x"})]
    assert dp.controls_shares == {"shop/limit/echo": 0.25, "shop/bad/echo": "x"}
    assert dp.control_demand() == {"shop/limit/echo": 3, "shop/other/echo": 1}


def test_the_snapshot_and_credentials_the_agent_gives_reach_the_workers(pki: Pki) -> None:
    dp = DataPlane(DataPlaneConfig(), on_interest=lambda key: None)
    workers = RecordingWorkers(2, {})
    dp.workers = workers
    creds = pki.issue("default", "echo")
    snapshot = server_snapshot(pki, "echo-1", 8080)
    dp.set_credentials(creds)
    dp.apply_snapshot(snapshot)
    assert workers.sent == [("credentials", creds), ("snapshot", snapshot)]


def test_workers_with_the_envoy_engine_is_refused_and_says_why() -> None:
    done = subprocess.run(
        [*GOSSAMER, "proxy", "--name", "x", "--workers", "2", "--engine", "envoy",
         "--xds", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "--workers is for Gossamer's own proxy, not --engine envoy" in done.stderr
