"""One build per change: proxies that asked the same thing share one build; a change
rebuilds each distinct snapshot once, only for the proxies it affects; proxy status
builds nothing. Discovery runs on a real SQLite store; the proxies' streams are stand-ins
that keep what they are sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from gossamer.controlplane.discovery import Discovery, ProxySession
from gossamer.identity.spiffe import SpiffeId
from gossamer.resources import to_dict, validate
from gossamer.store import SqliteStore
from gossamer.store.aio import AsyncStore
from gossamer.translate import ProxyInfo, Snapshot, build_snapshot
from gossamer.translate.snapshot import content_version

WAIT = 5.0


def _service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
    }


def _workload(name: str, app: str, address: str = "10.0.0.1") -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {"address": address, "inboundPort": 4143, "serviceAccount": app},
    }


def _route(name: str, backend: str) -> dict[str, Any]:
    return to_dict(
        validate(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {
                    "parentRefs": [{"group": "", "kind": "Service", "name": name}],
                    "rules": [{"backendRefs": [{"name": backend, "port": 80}]}],
                },
            }
        )
    )


class Stream:
    """Stands where a proxy's WebSocket goes: keeps every message sent to it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.closed = False

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))
        self.arrived.set()

    async def close(self) -> None:
        self.closed = True


class Mesh:
    def __init__(self, discovery: Discovery, store: SqliteStore) -> None:
        self.discovery, self.store = discovery, store
        self.streams: dict[str, Stream] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def connect(self, workload: str, interests: set[str]) -> Stream:
        stream = Stream()
        identity = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/x")
        session = ProxySession(identity, workload, "shop", interests, stream)  # type: ignore[arg-type]
        self.discovery._sessions[("shop", workload)] = session
        self.tasks.append(asyncio.create_task(self.discovery._send_loop(session)))
        self.streams[workload] = stream
        return stream

    async def settle(self) -> None:
        """Until the store watch, the debounce and every send loop have run."""
        target = self.store.revision()
        for _ in range(int(WAIT / 0.01)):
            if self.discovery._revision >= target and not self.discovery._changed.is_set():
                break
            await asyncio.sleep(0.01)
        for _ in range(10):
            await asyncio.sleep(0.01)

    def counts(self) -> dict[str, int]:
        return {name: len(stream.sent) for name, stream in self.streams.items()}


@pytest_asyncio.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    store = SqliteStore(tmp_path / "store.db", poll_interval=0.05)
    store.apply([_service("shared"), _service("other")])
    store.apply([_workload("shared-backend", "shared"), _workload("other-backend", "other")])
    store.apply([_workload(f"client-{i}", "client") for i in range(20)])
    store.apply([_workload(f"reader-{i}", "reader") for i in range(5)])
    ca = SimpleNamespace(trust_domain="cluster.local", trust_bundle_pem=lambda: "ROOTS")
    cp = SimpleNamespace(  # one replica, on SQLite
        store=store, astore=AsyncStore(store), ca=ca, system_store=None
    )
    discovery = Discovery(cp)  # type: ignore[arg-type]
    await discovery.start()
    m = Mesh(discovery, store)
    try:
        yield m
    finally:
        for task in m.tasks:
            task.cancel()
        await asyncio.gather(*m.tasks, return_exceptions=True)
        await discovery.stop()
        store.close()


async def _connect_all(mesh: Mesh) -> None:
    for i in range(20):
        mesh.connect(f"client-{i}", {"shared.shop"})
    for i in range(5):
        mesh.connect(f"reader-{i}", {"other.shop"})
    await mesh.settle()


@pytest.mark.asyncio
async def test_proxies_asking_the_same_thing_cause_one_build(mesh: Mesh) -> None:
    for i in range(20):
        mesh.connect(f"client-{i}", {"shared.shop"})
    await mesh.settle()

    assert mesh.discovery.snapshots.builds == 1
    versions = set()
    for i in range(20):
        [message] = mesh.streams[f"client-{i}"].sent
        got = Snapshot.from_dict(message["snapshot"])
        info = ProxyInfo(f"client-{i}", "shop", frozenset({"shared.shop"}))
        # Exactly what this proxy would have got from a build of its own.
        assert got == build_snapshot(mesh.discovery.mesh(), info)
        assert got.version == message["version"] == content_version(got)
        versions.add(got.version)
    assert len(versions) == 20


@pytest.mark.asyncio
async def test_a_change_rebuilds_each_distinct_snapshot_once(mesh: Mesh) -> None:
    await _connect_all(mesh)
    assert mesh.discovery.snapshots.builds == 2
    before = mesh.counts()

    mesh.store.apply([_route("shared", backend="other")])
    await mesh.settle()

    assert mesh.discovery.snapshots.builds == 2 + 2  # a route: both snapshots rebuilt
    after = mesh.counts()
    for name in after:
        # Only the clients' snapshot changed: only they are sent one.
        expected = before[name] + (1 if name.startswith("client-") else 0)
        assert after[name] == expected, name
    assert mesh.streams["client-0"].sent[-1]["snapshot"]["route_services"] == ["other.shop"]


@pytest.mark.asyncio
async def test_a_workload_change_reaches_only_the_proxies_it_affects(mesh: Mesh) -> None:
    await _connect_all(mesh)
    builds = mesh.discovery.snapshots.builds
    before = mesh.counts()

    mesh.store.apply([_workload("shared-backend-2", "shared", address="10.0.0.2")])
    await mesh.settle()

    assert mesh.discovery.snapshots.builds == builds + 1
    after = mesh.counts()
    for name in after:
        expected = before[name] + (1 if name.startswith("client-") else 0)
        assert after[name] == expected, name
    [shared] = mesh.streams["client-3"].sent[-1]["snapshot"]["services"]
    [port] = shared["ports"]
    assert {e["address"] for e in port["endpoints"]} == {"10.0.0.1", "10.0.0.2"}


@pytest.mark.asyncio
async def test_a_status_write_on_a_route_rebuilds_nothing(mesh: Mesh) -> None:
    mesh.store.apply([_route("shared", backend="other")])
    await _connect_all(mesh)
    builds, before = mesh.discovery.snapshots.builds, mesh.counts()

    mesh.store.update_status("HTTPRoute", "shop", "shared", {"parents": []})
    await mesh.settle()

    assert (mesh.discovery.snapshots.builds, mesh.counts()) == (builds, before)


@pytest.mark.asyncio
async def test_a_joining_proxy_that_nobody_asked_about_rebuilds_only_its_own(
    mesh: Mesh,
) -> None:
    await _connect_all(mesh)
    builds, before = mesh.discovery.snapshots.builds, mesh.counts()

    mesh.store.apply([_workload("client-20", "client")])
    await mesh.settle()
    mesh.connect("client-20", {"shared.shop"})
    await mesh.settle()

    assert mesh.discovery.snapshots.builds == builds  # it shares the clients' build
    assert {n: c for n, c in mesh.counts().items() if n != "client-20"} == before
    assert len(mesh.streams["client-20"].sent) == 1


@pytest.mark.asyncio
async def test_proxy_status_builds_nothing(mesh: Mesh) -> None:
    await _connect_all(mesh)
    builds = mesh.discovery.snapshots.builds

    rows = mesh.discovery.proxy_status()

    assert mesh.discovery.snapshots.builds == builds
    assert len(rows) == 25
    for row in rows:
        assert row["latestVersion"] == row["sentVersion"] != ""
