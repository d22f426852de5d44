"""EtcdStore: the shared contract on a real 3-member etcd cluster, and what only a
networked store has to promise (members dying, other writers, etcd's compaction)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from gossamer.errors import StoreError
from gossamer.store import EtcdStore, Store, open_store
from gossamer.store.base import Clock

from .contract import StoreContract, StoreFactory, let_watcher_wait, next_event, service, summary
from .etcdcluster import EtcdCluster


def _prefix() -> str:
    return f"/test-{uuid.uuid4().hex}/"


class TestEtcdStoreContract(StoreContract):
    @pytest.fixture
    def store_factory(self, etcd_cluster: EtcdCluster) -> Iterator[StoreFactory]:
        prefix = _prefix()
        opened: list[EtcdStore] = []

        def factory(*, clock: Clock | None = None, event_retention: int | None = None) -> Store:
            options: dict[str, Any] = {}
            if clock is not None:
                options["clock"] = clock
            if event_retention is not None:
                options["event_retention"] = event_retention
            store = EtcdStore(etcd_cluster.endpoints, prefix=prefix, **options)
            opened.append(store)
            return store

        yield factory
        for store in opened:
            store.close()


@pytest.fixture
def store(etcd_cluster: EtcdCluster) -> Iterator[EtcdStore]:
    with EtcdStore(etcd_cluster.endpoints, prefix=_prefix()) as store:
        yield store


# -- opening -------------------------------------------------------------------


def test_open_store_opens_etcd_under_the_url_prefix(etcd_cluster: EtcdCluster) -> None:
    prefix = uuid.uuid4().hex
    store = open_store(etcd_cluster.url(prefix))
    try:
        assert isinstance(store, EtcdStore)
        assert store.prefix == f"/{prefix}/"
        store.apply([service()])
        with EtcdStore(etcd_cluster.endpoints, prefix=f"/{prefix}/") as same:
            assert [o["metadata"]["name"] for o in same.list()] == ["echo"]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("etcd://", r"not an etcd URL"),
        ("etcd://10.0.0.1", r"'10.0.0.1' is not HOST:PORT"),
        ("etcd://10.0.0.1:2379,10.0.0.2:x", r"'10.0.0.2:x' is not HOST:PORT"),
    ],
    ids=["no members", "a member without a port", "a bad port among good members"],
)
def test_open_store_refuses_etcd_urls_it_cannot_use(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected):
        open_store(url)


def test_an_unreachable_cluster_is_a_store_error_naming_the_members() -> None:
    from tests.e2e.conftest import free_port

    endpoints = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"

    with pytest.raises(StoreError, match=f"etcd \\({endpoints}\\) did not answer") as caught:
        EtcdStore(endpoints, deadline=0.5)

    assert "majority" in str(caught.value)


# -- several replicas on one cluster ----------------------------------------------


def test_two_stores_writing_at_once_get_distinct_increasing_revisions(
    etcd_cluster: EtcdCluster,
) -> None:
    prefix = _prefix()
    # Each talks to a different member first, as two replicas would.
    members = etcd_cluster.endpoints.split(",")
    first = EtcdStore(",".join(members), prefix=prefix)
    second = EtcdStore(",".join(reversed(members)), prefix=prefix)
    revisions: dict[str, list[int]] = {"first": [], "second": []}

    def write(label: str, store: EtcdStore) -> None:
        for i in range(30):
            [result] = store.apply([service(f"{label}-{i}")])
            revisions[label].append(int(result.object["metadata"]["resourceVersion"]))

    try:
        threads = [
            threading.Thread(target=write, args=("first", first)),
            threading.Thread(target=write, args=("second", second)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        for own in revisions.values():
            assert own == sorted(own)
        assert sorted(revisions["first"] + revisions["second"]) == list(range(1, 61))
        assert first.revision() == second.revision() == 60
        assert [e.revision for e in second.changes(0)] == list(range(1, 61))
    finally:
        first.close()
        second.close()


# -- members dying -------------------------------------------------------------------


@pytest.fixture
def restarts_members(etcd_cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The session's cluster, with every member it lost brought back at teardown."""
    try:
        yield etcd_cluster
    finally:
        for member in etcd_cluster.members:
            if member.proc is None or member.proc.poll() is not None:
                etcd_cluster.start_member(member)
        etcd_cluster.wait_healthy()


def test_reads_and_writes_carry_on_when_a_member_is_killed(
    restarts_members: EtcdCluster,
) -> None:
    cluster = restarts_members
    with EtcdStore(cluster.endpoints, prefix=_prefix()) as store:
        store.apply([service("before")])

        cluster.kill(cluster.members[0])  # the member this store asks first
        [after] = store.apply([service("after")])

        assert after.action == "created"
        assert [o["metadata"]["name"] for o in store.list()] == ["after", "before"]
        assert store.revision() == 2


@pytest.mark.asyncio
async def test_a_watch_resumes_on_another_member_when_its_member_is_killed(
    restarts_members: EtcdCluster,
) -> None:
    cluster = restarts_members
    prefix = _prefix()
    # An hour between polls: only etcd's watch stream can wake this watch.
    watching = EtcdStore(cluster.endpoints, prefix=prefix, poll_interval=3600)
    others = ",".join(m.endpoint for m in cluster.members[1:])
    writing = EtcdStore(others, prefix=prefix)
    events = watching.watch(0)
    try:
        writing.apply([service("a")])
        first = await next_event(events)
        await let_watcher_wait()

        cluster.kill(cluster.members[0])  # the member the watch listens on
        writing.apply([service("b")])
        writing.apply([service("c")])
        resumed = [await next_event(events), await next_event(events)]
    finally:
        await events.aclose()
        watching.close()
        writing.close()

    assert summary([first, *resumed]) == [("ADDED", "a", 1), ("ADDED", "b", 2), ("ADDED", "c", 3)]


@pytest.mark.asyncio
async def test_a_watch_listens_again_when_etcd_compacted_its_start(store: EtcdStore) -> None:
    # etcd's own history (not the store's) compacted past where a watch would resume:
    # the watch reads the store's history and listens from the present instead.
    store.apply([service("a")])
    old = int(store.gateway.call("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
    store.apply([service("b")])
    now = int(store.gateway.call("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
    store.gateway.call("/v3/kv/compaction", {"revision": now, "physical": True})

    import aiohttp

    wake = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        await asyncio.wait_for(store._listen(session, old, wake), 10)
    assert wake.is_set()

    events = store.watch(1)
    try:
        assert summary([await next_event(events)]) == [("ADDED", "b", 2)]
        store.apply([service("c")])
        assert summary([await next_event(events)]) == [("ADDED", "c", 3)]
    finally:
        await events.aclose()


def test_a_sibling_store_keeps_to_its_own_objects_and_history(store: EtcdStore) -> None:
    system = store.sibling("system")
    try:
        system.apply([service("replica-a")])
        store.apply([service("echo")])

        assert [o["metadata"]["name"] for o in store.list()] == ["echo"]
        assert [o["metadata"]["name"] for o in system.list()] == ["replica-a"]
        assert summary(store.changes(0)) == [("ADDED", "echo", 1)]
        assert system.revision() == 1
    finally:
        system.close()
