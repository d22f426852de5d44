"""High availability end to end: two control-plane replicas on a 3-member etcd cluster,
real proxies given both replicas, steady traffic through the mesh, and then `kill -9` of
a replica and of an etcd member. No request may fail; a change made afterwards reaches
every proxy; a workload joins and certificates renew with one replica down; the killed
replica comes back and takes streams again."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gossamer.identity import SpiffeId
from gossamer.identity.csr import generate_private_key, make_csr
from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    echo_app,
    free_port,
    run_workload,
    start_control_plane,
    stop_process,
)
from tests.e2e.test_mesh import SERVICE, served_by
from tests.store.etcdcluster import EtcdCluster

pytestmark = pytest.mark.e2e

PERMISSIVE = """
apiVersion: gossamer.dev/v1alpha1
kind: MeshPolicy
metadata: {name: migrating, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
"""
# Bounds, not expectations: generous on a loaded 2-core machine.
ARRIVAL_BOUND = 20.0
LOAD_SECONDS_MAX = 240.0


@dataclass
class Ha:
    root: Path
    cluster: EtcdCluster
    replicas: dict[str, ControlPlaneProcess] = field(default_factory=dict)
    workloads: dict[str, Workload] = field(default_factory=dict)

    def start_replica(self, name: str) -> ControlPlaneProcess:
        data_dir = self.root / name
        if not data_dir.exists() and self.replicas:
            # Every replica is given the same CA files (decision 0052).
            data_dir.mkdir(mode=0o700)
            first = next(iter(self.replicas.values()))
            shutil.copytree(first.data_dir / "ca", data_dir / "ca")
        cp = start_control_plane(data_dir, "--store", self.cluster.url("mesh"))
        self.replicas[name] = cp
        return cp

    @property
    def discovery(self) -> str:
        return ",".join(cp.discovery for cp in self.replicas.values())

    def run(self, name: str, via: ControlPlaneProcess, **options: Any) -> Workload:
        w = run_workload(via, self.root, name, extra=("--discovery", self.discovery), **options)
        self.workloads[name] = w
        return w


def _get(cp: ControlPlaneProcess, path: str) -> Any:
    token = cp.token_file.read_text().strip()
    request = urllib.request.Request(cp.api + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _proxies(cp: ControlPlaneProcess) -> dict[str, dict[str, Any]]:
    return {row["workload"]: row for row in _get(cp, "/v1/proxies")["items"]}


def _until(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.2)


def _renew(cp: ControlPlaneProcess, w: Workload) -> Any:
    """What the proxy's agent does at two thirds of its certificate's life: its current
    certificate (from its state dir) buys a new one, over mTLS to the discovery port."""
    ctx = ssl.create_default_context(cafile=w.state_dir / "bundle.pem")
    ctx.load_cert_chain(w.state_dir / "cert.pem", w.state_dir / "key.pem")
    csr = make_csr(generate_private_key(), SpiffeId("cluster.local", "shop", "client"))
    request = urllib.request.Request(
        f"https://{cp.discovery}/v1/identity/renew",
        data=json.dumps({"csr": csr.decode()}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10, context=ctx) as response:
        return json.load(response)


class Load:
    """Steady requests through a client's outbound listener, counted, in a thread."""

    def __init__(self, outbound: str) -> None:
        self.outbound = outbound
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        host, port = self.outbound.rsplit(":", 1)
        started = time.monotonic()
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        # Bounded in count and time, whatever the test does.
        for _ in range(50_000):
            if self._stop.is_set() or time.monotonic() - started > LOAD_SECONDS_MAX:
                break
            try:
                conn.request("GET", "http://echo.shop/")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    self.ok += 1
                else:
                    why = response.getheader("gossamer-error", "")
                    self.failures.append(
                        f"{time.monotonic():.2f}: HTTP {response.status} {why or response.reason}"
                    )
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"{time.monotonic():.2f}: {e!r}")
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
            time.sleep(0.02)
        conn.close()


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[Ha]:
    (tmp_path / "etcd").mkdir()
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.start()
    setup = Ha(tmp_path, cluster)
    try:
        setup.start_replica("a")
        setup.start_replica("b")
        yield setup
    finally:
        for w in setup.workloads.values():
            running = w.proc.poll() is None
            w.stop()
            if running:
                stop_process(w.proc)
        for cp in setup.replicas.values():
            stop_process(cp.proc)
        cluster.stop()


def test_replicas_survive_a_killed_replica_and_a_killed_etcd_member(ha: Ha) -> None:
    a, b = ha.replicas["a"], ha.replicas["b"]
    assert a.token_file.read_text() == b.token_file.read_text()
    b.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    for name in ("echo-1", "echo-2"):
        port = free_port()
        ha.run(
            name, b, service_account="echo", labels={"app": "echo"},
            app=echo_app(name, port), port=f"http=8080:{port}",
        )  # fmt: skip
    client = ha.run(
        "client", a, service_account="client", labels={"app": "client"},
        app=[sys.executable, "-c", "import time; time.sleep(600)"],
    )  # fmt: skip
    for w in ha.workloads.values():
        w.wait_ready(timeout=60)
    status = _get(b, "/v1/replicas")
    assert sorted(r["alive"] for r in status["replicas"]) == [True, True]
    assert sum(r["leader"] for r in status["replicas"]) == 1
    assert status["store"]["healthy"] and len(status["store"]["members"]) == 3

    # Counted from here: traffic that flows (a client's first snapshot may predate
    # the echo workloads' readiness, and that is not what this test is about).
    _until(
        "the client reaches echo",
        lambda: set(served_by(client.outbound, 4)) <= {"echo-1", "echo-2"},
    )
    with Load(client.outbound) as load:
        _until("traffic flows", lambda: load.ok >= 20)

        # kill -9 the replica the proxies stream from (each tries the first address
        # first), then an etcd member.
        killed, survivor = (a, b) if _proxies(a) else (b, a)
        assert set(_proxies(killed)) == set(ha.workloads)
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait()
        ha.cluster.kill(ha.cluster.members[0])
        # Every proxy fails over to the survivor, which takes the lead.
        _until(
            "every proxy streams from the surviving replica",
            lambda: set(_proxies(survivor)) == set(ha.workloads),
        )
        _until(
            "the survivor leads",
            lambda: any(r["leader"] for r in _get(survivor, "/v1/replicas")["replicas"]),
        )

        def check_down() -> str | None:
            out = survivor.cli("check").stdout
            return out if "(down)" in out and "(leader)" in out else None

        checked = _until(
            "check shows the killed replica down and the survivor leading", check_down, timeout=30
        )
        assert "etcd, 2/3 members up" in checked, checked

        # A change afterwards reaches every proxy.
        before = {name: row["ackedVersion"] for name, row in _proxies(survivor).items()}
        applied = time.monotonic()  # so the figure includes the CLI's own start: a bound
        survivor.cli("apply", "-f", "-", stdin=PERMISSIVE, check=True)

        def everyone_acked() -> bool:
            rows = _proxies(survivor)
            return set(rows) == set(before) and all(
                row["upToDate"] and row["ackedVersion"] != before[name]
                for name, row in rows.items()
            )

        _until("the change reaches every proxy", everyone_acked, timeout=ARRIVAL_BOUND)
        print(f"change reached all {len(before)} proxies in {time.monotonic() - applied:.2f} s")

        # A workload joins, and a certificate renews, with one replica down.
        port = free_port()
        joined = ha.run(
            "echo-3", survivor, service_account="echo", labels={"app": "echo"},
            app=echo_app("echo-3", port), port=f"http=8080:{port}",
        )  # fmt: skip
        joined.wait_ready(timeout=60)
        renewed = _renew(survivor, client)
        assert renewed["spiffeId"] == "spiffe://cluster.local/ns/shop/sa/client"

        # The killed replica comes back and takes streams again.
        back = ha.start_replica("a" if killed is a else "b")
        port = free_port()
        ha.workloads["echo-4"] = run_workload(
            back, ha.root, "echo-4", service_account="echo", labels={"app": "echo"},
            app=echo_app("echo-4", port), port=f"http=8080:{port}",
        )  # fmt: skip
        ha.workloads["echo-4"].wait_ready(timeout=60)
        _until("the restarted replica holds a stream", lambda: "echo-4" in _proxies(back))
        # Asked of the other replica, check names the replica each proxy streams from.
        report = json.loads(survivor.cli("check", "-o", "json").stdout)
        holders = {row["workload"]: (row["state"], row["replica"]) for row in report["proxies"]}
        back_name = _get(back, "/v1/replicas")["replica"]
        survivor_name = _get(survivor, "/v1/replicas")["replica"]
        assert holders["echo-4"] == ("connected", back_name)
        assert holders["client"] == ("connected", survivor_name)
        ok_before_end = load.ok
        _until("traffic still flows", lambda: load.ok >= ok_before_end + 20)

    assert load.failures == [], f"{len(load.failures)} failed of {load.ok}: {load.failures[:5]}"
    print(f"{load.ok} requests, none failed")
