"""A stalled store stalls only what needs it: with every etcd member frozen (SIGSTOP),
a replica's event loop keeps answering what it can from memory (its version, the
proxies streaming from it, their open streams), and a call that needs the store fails
with 503 StoreUnavailable at its deadline instead of hanging the process."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    run_workload,
    start_control_plane,
    stop_process,
)
from tests.store.etcdcluster import EtcdCluster

pytestmark = pytest.mark.e2e


def _call(cp: ControlPlaneProcess, path: str, timeout: float = 60.0) -> tuple[int, Any]:
    token = cp.token_file.read_text().strip()
    request = urllib.request.Request(cp.api + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _proxies(cp: ControlPlaneProcess) -> dict[str, Any]:
    # Answered from the replica's memory: no API token is needed to read it.
    with urllib.request.urlopen(cp.api + "/v1/proxies", timeout=10) as response:
        return {row["workload"]: row for row in json.load(response)["items"]}


@pytest.fixture
def stalled_setup(tmp_path: Path) -> Iterator[tuple[EtcdCluster, ControlPlaneProcess, Workload]]:
    (tmp_path / "etcd").mkdir()
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.start()
    cp: ControlPlaneProcess | None = None
    workload: Workload | None = None
    try:
        cp = start_control_plane(tmp_path / "cp", "--store", cluster.url("mesh"))
        workload = run_workload(
            cp, tmp_path, "client", service_account="client", labels={"app": "client"},
            app=[sys.executable, "-c", "import time; time.sleep(600)"],
        )  # fmt: skip
        workload.wait_ready(timeout=60)
        yield cluster, cp, workload
    finally:
        for member in cluster.members:
            cluster.resume(member)
        if workload is not None:
            workload.stop()
        if cp is not None:
            stop_process(cp.proc)
        cluster.stop()


def test_a_frozen_store_fails_store_calls_at_their_deadline_and_nothing_else(
    stalled_setup: tuple[EtcdCluster, ControlPlaneProcess, Workload],
) -> None:
    cluster, cp, workload = stalled_setup
    stream = _proxies(cp)["client"]["connectedSince"]
    assert _call(cp, "/v1/resources/workloads")[0] == 200

    for member in cluster.members:
        cluster.pause(member)
    answer: list[tuple[int, Any]] = []
    pending = threading.Thread(
        target=lambda: answer.append(_call(cp, "/v1/resources/workloads")), daemon=True
    )
    pending.start()
    # While that call waits on the frozen store, the loop answers the rest.
    version = _call(cp, "/version")
    assert version[0] == 200 and "version" in version[1]
    assert _proxies(cp)["client"]["connectedSince"] == stream
    assert pending.is_alive(), "the store call should still be waiting on the frozen store"

    pending.join(timeout=90)
    assert not pending.is_alive(), "the store call hung past its deadline"
    [(code, body)] = answer
    assert code == 503, body
    assert body["error"]["reason"] == "StoreUnavailable"
    assert "etcd" in body["error"]["message"], body
    print(f"store call answered {code}: {body['error']['message']}")
    # The proxy's stream outlived the stall: the same one is still open here.
    assert _proxies(cp)["client"]["connectedSince"] == stream
    assert cp.proc.poll() is None

    for member in cluster.members:
        cluster.resume(member)
    cluster.wait_healthy()
    code, listed = _call(cp, "/v1/resources/workloads")
    assert code == 200
    assert [w["metadata"]["name"] for w in listed["items"]] == ["client"]
    assert workload.proc.poll() is None
