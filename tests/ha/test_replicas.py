"""Replicas on one store: heartbeats, one leader at a time, the lead moving when its
holder dies or leaves, and workload leases held by whichever replica has the stream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gossamer.controlplane.discovery import RESTART_GRACE_SECONDS, Discovery, with_condition
from gossamer.controlplane.replicas import (
    LEADER,
    NAMESPACE,
    Replicas,
    counter_record,
    replica_id_for,
)
from gossamer.store import EtcdStore, SqliteStore, Store
from gossamer.store.aio import AsyncStore

from .conftest import etcd_cluster as _etcd_cluster  # noqa: F401  (a fixture)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened: Store = SqliteStore(tmp_path / "system.db")
    else:
        cluster = request.getfixturevalue("etcd_cluster")
        opened = EtcdStore(cluster.endpoints, prefix=f"/{tmp_path.name}/system/")
    try:
        yield opened
    finally:
        opened.close()


def _replica(store: Store, name: str, clock: Clock) -> Replicas:
    return Replicas(store, name, lambda: {"api": f"{name}:15000"}, lease=5.0, clock=clock)


def test_the_first_replica_leads_and_a_second_does_not(store: Store, clock: Clock) -> None:
    a, b = _replica(store, "a", clock), _replica(store, "b", clock)

    a.beat()
    b.beat()

    assert (a.is_leader(), b.is_leader()) == (True, False)
    rows = {row["name"]: row for row in b.rows()}
    assert rows["a"]["leader"] and not rows["b"]["leader"]
    assert rows["a"]["alive"] and rows["b"]["alive"]
    assert rows["a"]["api"] == "a:15000"


def test_the_lead_moves_when_its_holder_stops_beating(store: Store, clock: Clock) -> None:
    a, b = _replica(store, "a", clock), _replica(store, "b", clock)
    a.beat()
    b.beat()

    clock.now += 4.9  # a is silent, but its lease still runs
    b.beat()
    assert not b.is_leader()

    clock.now += 0.2
    b.beat()
    assert b.is_leader()
    assert not a.is_leader()  # it stopped calling itself leader before b took over
    assert {r["name"]: r["alive"] for r in b.rows()} == {"a": False, "b": True}


def test_a_leader_that_cannot_renew_stops_leading_before_another_may_start(
    store: Store, clock: Clock
) -> None:
    a = _replica(store, "a", clock)
    a.beat()

    clock.now += a.lease - a.heartbeat  # no renewal got through meanwhile

    assert not a.is_leader()


def test_a_replica_that_leaves_hands_the_lead_over_at_once(store: Store, clock: Clock) -> None:
    a, b = _replica(store, "a", clock), _replica(store, "b", clock)
    a.beat()
    b.beat()

    a.leave()
    b.beat()

    assert b.is_leader()
    assert [r["name"] for r in b.rows()] == ["b"]


def test_a_replica_keeps_its_name_across_restarts(tmp_path: Path) -> None:
    assert replica_id_for(tmp_path) == replica_id_for(tmp_path)
    assert (tmp_path / "replica.id").stat().st_mode & 0o777 == 0o600


# -- workload leases across replicas ------------------------------------------------


def _workload() -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"address": "127.0.0.1", "inboundPort": 4143, "serviceAccount": "web"},
    }


def _connected(store: Store) -> tuple[str, str]:
    for cond in store.get("Workload", "shop", "web-1")["status"]["conditions"]:
        if cond["type"] == "ProxyConnected":
            return cond["status"], cond["message"]
    raise AssertionError("no ProxyConnected condition")


@pytest.fixture
def mesh_store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "mesh.db") as store:
        store.apply([_workload()])
        ready, _ = with_condition(None, "Ready", True, "AppListening", "")
        store.update_status("Workload", "shop", "web-1", ready)
        yield store


def _discovery(mesh: SqliteStore, replicas: Replicas) -> Discovery:
    d = Discovery(SimpleNamespace(store=mesh, astore=AsyncStore(mesh), replicas=replicas))  # type: ignore[arg-type]
    asyncio.run(d._load())
    return d


def test_a_lease_held_by_a_live_replica_is_not_expired_by_another(
    mesh_store: SqliteStore, store: Store, clock: Clock
) -> None:
    leader, holder = _replica(store, "a", clock), _replica(store, "b", clock)
    leader.beat()
    holder.beat()
    on_leader, on_holder = _discovery(mesh_store, leader), _discovery(mesh_store, holder)
    on_holder._set_connected("shop", "web-1", True)  # b's stream opened
    asyncio.run(on_leader._load())

    # Long past any grace on a: the stream is b's, and b is alive.
    on_leader.expire_leases(on_leader._started + RESTART_GRACE_SECONDS * 2)

    assert _connected(mesh_store) == ("True", "discovery stream held by replica b")


def test_the_leader_expires_the_leases_of_a_dead_replica(
    mesh_store: SqliteStore, store: Store, clock: Clock
) -> None:
    leader, holder = _replica(store, "a", clock), _replica(store, "b", clock)
    leader.beat()
    holder.beat()
    on_holder = _discovery(mesh_store, holder)
    on_holder._set_connected("shop", "web-1", True)
    on_leader = _discovery(mesh_store, leader)

    # b dies; a keeps beating (and leading) through a restart grace.
    clock.now += RESTART_GRACE_SECONDS - 1
    leader.beat()
    on_leader.expire_leases(on_leader._started)
    assert _connected(mesh_store)[0] == "True"

    clock.now += 1
    leader.beat()
    on_leader.expire_leases(on_leader._started)
    assert _connected(mesh_store)[0] == "False"


def test_a_proxy_that_moves_to_another_replica_moves_its_lease(
    mesh_store: SqliteStore, store: Store, clock: Clock
) -> None:
    a, b = _replica(store, "a", clock), _replica(store, "b", clock)
    a.beat()
    b.beat()
    on_a, on_b = _discovery(mesh_store, a), _discovery(mesh_store, b)
    on_a._set_connected("shop", "web-1", True)

    on_b._set_connected("shop", "web-1", True)

    assert _connected(mesh_store) == ("True", "discovery stream held by replica b")


def test_a_replica_creating_the_leader_record_late_does_not_reset_the_lead(
    store: Store, clock: Clock
) -> None:
    a = _replica(store, "a", clock)
    a.beat()

    counter_record(store, LEADER, "control-plane")  # what a replica that saw none does

    assert store.get(LEADER, NAMESPACE, "control-plane")["status"]["holder"] == "a"
