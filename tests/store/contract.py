"""The contract every Store backend must keep, as one suite any backend can run.

A backend runs it by subclassing `StoreContract` in a `test_*.py` module (the class
name must start with `Test`) and defining a `store_factory` fixture: a callable
that opens a Store on the same backing data every time it is called (a file, an
etcd prefix, a Kubernetes namespace) and closes whatever it opened at teardown.
It must honour `clock` (for creationTimestamp) and `event_retention` (how many
revisions of history are kept) when they are given.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest

from gossamer.errors import Conflict, NotFound
from gossamer.store import Compacted, Store, WatchEvent
from gossamer.store.base import Clock

# Long enough for a loaded CI machine; the wake-up tests check that an event
# arrives, not how fast.
ARRIVAL_TIMEOUT = 5.0
START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class StoreFactory(Protocol):
    def __call__(self, *, clock: Clock | None = None, event_retention: int | None = None) -> Store:
        """Open a Store on the test's backing data; every call sees the same data."""
        ...


class FakeClock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def service(
    name: str = "echo", namespace: str = "default", port: int = 80, **extra: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]},
    }
    obj.update(extra)
    return obj


def route(name: str = "echo", namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"parentRefs": [{"kind": "Service", "name": name}]},
    }


def with_version(obj: dict[str, Any], version: str) -> dict[str, Any]:
    copy = {**obj, "metadata": {**obj["metadata"], "resourceVersion": version}}
    return copy


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def summary(events: list[WatchEvent]) -> list[tuple[str, str, int]]:
    return [(e.type, e.object["metadata"]["name"], e.revision) for e in events]


async def next_event(events: AsyncGenerator[WatchEvent, None]) -> WatchEvent:
    return await asyncio.wait_for(anext(events), ARRIVAL_TIMEOUT)


async def first_event(events: AsyncGenerator[WatchEvent, None]) -> WatchEvent:
    """Waits without a timeout, for the tests that cancel or close under it."""
    return await anext(events)


async def let_watcher_wait() -> None:
    # Gives a freshly started watch task time to read history and block on its
    # wake-up, so the write that follows exercises the wake-up path.
    for _ in range(5):
        await asyncio.sleep(0.01)


class StoreContract:
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, store_factory: StoreFactory, clock: FakeClock) -> Store:
        return store_factory(clock=clock)

    # -- objects and server metadata --------------------------------------------

    def test_an_empty_store_is_at_revision_zero(self, store: Store) -> None:
        assert store.revision() == 0
        assert store.list() == []
        assert store.changes(0) == []

    def test_create_then_get_round_trips_with_server_metadata(self, store: Store) -> None:
        [result] = store.apply([service()])

        assert result.action == "created"
        got = store.get("Service", "default", "echo")
        assert got == result.object
        metadata = got["metadata"]
        assert metadata["resourceVersion"] == str(store.revision())
        assert uuid.UUID(metadata["uid"]).version == 4
        assert metadata["creationTimestamp"] == "2024-05-01T12:00:00Z"
        assert metadata["generation"] == 1
        assert metadata["labels"] == {"app": "echo"}
        assert got["spec"] == service()["spec"]
        assert got["apiVersion"] == "v1"

    def test_creation_timestamp_is_rfc3339_utc(self, store_factory: StoreFactory) -> None:
        store = store_factory()

        [result] = store.apply([service()])

        stamp = result.object["metadata"]["creationTimestamp"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)

    def test_resource_version_increases_on_each_write(self, store: Store) -> None:
        created = store.apply([service()])[0].object
        configured = store.apply([service(port=81)])[0].object
        with_status = store.update_status("Service", "default", "echo", {"ready": True})
        deleted = store.delete("Service", "default", "echo")

        versions = [rv(created), rv(configured), rv(with_status), rv(deleted)]
        assert versions == sorted(set(versions))
        assert store.revision() == versions[-1]

    def test_every_object_in_one_apply_gets_its_own_revision(self, store: Store) -> None:
        results = store.apply([service("a"), service("b"), route("a")])

        versions = [rv(r.object) for r in results]
        assert versions == sorted(set(versions))
        assert store.revision() == versions[-1]

    def test_apply_does_not_modify_its_input(self, store: Store) -> None:
        obj = service(status={"ready": False})
        before = repr(obj)

        store.apply([obj])
        store.apply([obj])

        assert repr(obj) == before

    def test_returned_objects_are_copies(self, store: Store) -> None:
        store.apply([service()])

        store.get("Service", "default", "echo")["spec"]["ports"].clear()
        store.list()[0]["metadata"]["name"] = "changed"

        assert store.get("Service", "default", "echo")["spec"] == service()["spec"]

    def test_get_of_a_missing_object_is_not_found(self, store: Store) -> None:
        store.apply([service("echo", "default")])

        with pytest.raises(NotFound) as caught:
            store.get("Service", "other", "echo")

        assert (caught.value.kind, caught.value.namespace, caught.value.name) == (
            "Service",
            "other",
            "echo",
        )

    # -- optimistic concurrency ------------------------------------------------

    def test_stale_write_is_a_conflict(self, store: Store) -> None:
        first = store.apply([service()])[0].object
        store.apply([service(port=81)])
        revision = store.revision()

        with pytest.raises(Conflict) as caught:
            store.apply([with_version(service(port=82), first["metadata"]["resourceVersion"])])

        message = str(caught.value)
        assert "Service default/echo" in message
        assert first["metadata"]["resourceVersion"] in message
        assert str(revision) in message
        assert store.get("Service", "default", "echo")["spec"]["ports"][0]["port"] == 81
        assert store.revision() == revision

    def test_write_with_the_current_version_succeeds(self, store: Store) -> None:
        current = store.apply([service()])[0].object

        [result] = store.apply(
            [with_version(service(port=81), current["metadata"]["resourceVersion"])]
        )

        assert result.action == "configured"
        assert rv(result.object) > rv(current)

    def test_write_based_on_a_deleted_object_is_a_conflict(self, store: Store) -> None:
        created = store.apply([service()])[0].object
        store.delete("Service", "default", "echo")

        with pytest.raises(Conflict, match="Service default/echo"):
            store.apply([with_version(service(), created["metadata"]["resourceVersion"])])

        with pytest.raises(NotFound):
            store.get("Service", "default", "echo")

    def test_apply_is_all_or_nothing(self, store: Store) -> None:
        stale = store.apply([service("b")])[0].object
        store.apply([service("b", port=81)])
        revision = store.revision()

        with pytest.raises(Conflict):
            store.apply(
                [
                    service("a"),
                    with_version(service("b", port=82), stale["metadata"]["resourceVersion"]),
                ]
            )

        with pytest.raises(NotFound):
            store.get("Service", "default", "a")
        assert store.revision() == revision
        assert store.changes(revision) == []

    def test_later_object_in_one_apply_sees_the_earlier_one(self, store: Store) -> None:
        results = store.apply([service(port=80), service(port=81)])

        assert [r.action for r in results] == ["created", "configured"]
        assert store.get("Service", "default", "echo")["metadata"]["generation"] == 2

    # -- what counts as a change ------------------------------------------------

    def test_identical_reapply_is_unchanged_and_emits_no_event(self, store: Store) -> None:
        created = store.apply([service()])[0].object
        revision = store.revision()

        [result] = store.apply([service()])

        assert result.action == "unchanged"
        assert result.object == created
        assert store.revision() == revision
        assert store.changes(revision) == []

    def test_reapplying_a_stored_object_with_its_server_metadata_is_unchanged(
        self, store: Store
    ) -> None:
        store.apply([service()])
        store.update_status("Service", "default", "echo", {"ready": True})
        stored = store.get("Service", "default", "echo")
        revision = store.revision()

        [result] = store.apply([stored])

        assert result.action == "unchanged"
        assert store.revision() == revision

    def test_generation_bumps_only_on_spec_change(self, store: Store) -> None:
        store.apply([service()])

        relabelled = service()
        relabelled["metadata"]["labels"] = {"app": "echo", "tier": "web"}
        [label_change] = store.apply([relabelled])
        [spec_change] = store.apply([{**relabelled, "spec": {"selector": {"app": "other"}}}])
        store.update_status("Service", "default", "echo", {"ready": True})

        assert label_change.action == "configured"
        assert label_change.object["metadata"]["generation"] == 1
        assert spec_change.object["metadata"]["generation"] == 2
        assert store.get("Service", "default", "echo")["metadata"]["generation"] == 2

    def test_uid_and_creation_timestamp_survive_updates(
        self, store: Store, clock: FakeClock
    ) -> None:
        created = store.apply([service()])[0].object
        clock.advance(3600)

        store.apply([service(port=81)])
        store.update_status("Service", "default", "echo", {"ready": True})

        stored = store.get("Service", "default", "echo")
        for field in ("uid", "creationTimestamp"):
            assert stored["metadata"][field] == created["metadata"][field]

    def test_server_metadata_sent_by_the_client_is_replaced(self, store: Store) -> None:
        obj = service()
        obj["metadata"].update(uid="not-a-uid", creationTimestamp="1999-01-01T00:00:00Z")
        obj["metadata"]["generation"] = 42

        created = store.apply([obj])[0].object
        updated = store.apply([{**obj, "spec": {"selector": {}}}])[0].object

        for result in (created, updated):
            assert result["metadata"]["uid"] != "not-a-uid"
            assert result["metadata"]["creationTimestamp"] == "2024-05-01T12:00:00Z"
        assert (created["metadata"]["generation"], updated["metadata"]["generation"]) == (1, 2)

    def test_status_is_accepted_on_create_and_ignored_on_update(self, store: Store) -> None:
        created = store.apply([service(status={"ready": False})])[0].object

        updated = store.apply([service(port=81, status={"ready": True})])[0].object
        revision = store.revision()
        [status_only] = store.apply([service(port=81, status={"ready": "ignored"})])

        assert created["status"] == {"ready": False}
        assert updated["status"] == {"ready": False}
        assert status_only.action == "unchanged"
        assert store.revision() == revision

    # -- update_status ------------------------------------------------------------

    def test_update_status_keeps_spec_and_generation(self, store: Store) -> None:
        created = store.apply([service()])[0].object

        updated = store.update_status("Service", "default", "echo", {"ready": True})

        assert updated["status"] == {"ready": True}
        assert updated["spec"] == created["spec"]
        assert updated["metadata"]["generation"] == created["metadata"]["generation"]
        assert rv(updated) > rv(created)
        assert store.get("Service", "default", "echo") == updated

    def test_update_status_replaces_the_whole_status(self, store: Store) -> None:
        store.apply([service(status={"ready": False, "reason": "starting"})])

        updated = store.update_status("Service", "default", "echo", {"ready": True})

        assert updated["status"] == {"ready": True}

    def test_update_status_with_the_current_version_succeeds(self, store: Store) -> None:
        created = store.apply([service()])[0].object

        updated = store.update_status(
            "Service", "default", "echo", {"ready": True}, created["metadata"]["resourceVersion"]
        )

        assert updated["status"] == {"ready": True}

    def test_update_status_with_a_stale_version_is_a_conflict(self, store: Store) -> None:
        created = store.apply([service()])[0].object
        store.apply([service(port=81)])
        revision = store.revision()

        with pytest.raises(Conflict, match="Service default/echo"):
            store.update_status(
                "Service",
                "default",
                "echo",
                {"ready": True},
                created["metadata"]["resourceVersion"],
            )

        assert "status" not in store.get("Service", "default", "echo")
        assert store.revision() == revision

    def test_update_status_of_a_missing_object_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.update_status("Service", "default", "echo", {"ready": True})
        assert store.revision() == 0

    def test_update_status_with_the_same_status_writes_nothing(self, store: Store) -> None:
        store.apply([service()])
        written = store.update_status("Service", "default", "echo", {"ready": True})
        revision = store.revision()

        again = store.update_status("Service", "default", "echo", {"ready": True})

        assert again == written
        assert store.revision() == revision
        assert store.changes(revision) == []

    # -- delete ---------------------------------------------------------------

    def test_delete_returns_the_object_and_then_get_is_not_found(self, store: Store) -> None:
        created = store.apply([service(status={"ready": True})])[0].object

        deleted = store.delete("Service", "default", "echo")

        assert deleted["spec"] == created["spec"]
        assert deleted["status"] == {"ready": True}
        assert deleted["metadata"]["uid"] == created["metadata"]["uid"]
        assert deleted["metadata"]["resourceVersion"] == str(store.revision())
        with pytest.raises(NotFound):
            store.get("Service", "default", "echo")
        assert store.list() == []

    def test_delete_with_a_stale_version_is_a_conflict(self, store: Store) -> None:
        created = store.apply([service()])[0].object
        store.apply([service(port=81)])

        with pytest.raises(Conflict, match="Service default/echo"):
            store.delete("Service", "default", "echo", created["metadata"]["resourceVersion"])

        assert store.get("Service", "default", "echo")["spec"]["ports"][0]["port"] == 81

    def test_delete_with_the_current_version_succeeds(self, store: Store) -> None:
        created = store.apply([service()])[0].object

        store.delete("Service", "default", "echo", created["metadata"]["resourceVersion"])

        assert store.list() == []

    def test_delete_of_a_missing_object_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.delete("Service", "default", "echo")
        assert store.revision() == 0

    def test_an_object_deleted_and_created_again_is_a_new_object(self, store: Store) -> None:
        first = store.apply([service()])[0].object
        store.delete("Service", "default", "echo")

        [again] = store.apply([service()])

        assert again.action == "created"
        assert again.object["metadata"]["uid"] != first["metadata"]["uid"]
        assert again.object["metadata"]["generation"] == 1

    # -- list -------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("kind", "namespace", "expected"),
        [
            (
                None,
                None,
                [
                    ("HTTPRoute", "default", "echo"),
                    ("Service", "apps", "web"),
                    ("Service", "default", "api"),
                    ("Service", "default", "echo"),
                ],
            ),
            (
                "Service",
                None,
                [
                    ("Service", "apps", "web"),
                    ("Service", "default", "api"),
                    ("Service", "default", "echo"),
                ],
            ),
            (
                None,
                "default",
                [
                    ("HTTPRoute", "default", "echo"),
                    ("Service", "default", "api"),
                    ("Service", "default", "echo"),
                ],
            ),
            ("Service", "apps", [("Service", "apps", "web")]),
            ("Workload", None, []),
        ],
        ids=[
            "no filter lists everything",
            "kind filter",
            "namespace filter",
            "kind and namespace filter",
            "a kind with no objects",
        ],
    )
    def test_list_filters_by_kind_and_namespace_and_is_sorted(
        self,
        store: Store,
        kind: str | None,
        namespace: str | None,
        expected: list[tuple[str, str, str]],
    ) -> None:
        store.apply([service("echo"), route("echo"), service("web", "apps"), service("api")])

        listed = store.list(kind, namespace)

        keys = [(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in listed]
        assert keys == expected

    # -- history ----------------------------------------------------------------

    def test_changes_since_replays_in_order(self, store: Store) -> None:
        store.apply([service("a"), service("b")])
        store.apply([service("a", port=81)])
        store.update_status("Service", "default", "b", {"ready": True})
        store.delete("Service", "default", "a")

        events = store.changes(0)

        assert summary(events) == [
            ("ADDED", "a", 1),
            ("ADDED", "b", 2),
            ("MODIFIED", "a", 3),
            ("MODIFIED", "b", 4),
            ("DELETED", "a", 5),
        ]
        for event in events:
            assert rv(event.object) == event.revision
        assert events[2].object["spec"]["ports"][0]["port"] == 81
        assert events[3].object["status"] == {"ready": True}
        assert events[4].object["spec"]["ports"][0]["port"] == 81
        assert summary(store.changes(3)) == summary(events[3:])
        assert store.changes(5) == []

    def test_compacted_history_raises_compacted(self, store_factory: StoreFactory) -> None:
        store = store_factory(event_retention=3)
        for port in range(80, 86):
            store.apply([service(port=port)])

        assert [e.revision for e in store.changes(3)] == [4, 5, 6]
        with pytest.raises(Compacted) as caught:
            store.changes(2)
        assert isinstance(caught.value, Conflict)
        assert "list" in str(caught.value)

    # -- watch ------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_watch_yields_added_modified_deleted_in_order(self, store: Store) -> None:
        events = store.watch(store.revision())
        try:
            store.apply([service()])
            store.apply([service(port=81)])
            store.delete("Service", "default", "echo")

            seen = [await next_event(events) for _ in range(3)]
        finally:
            await events.aclose()

        assert summary(seen) == [
            ("ADDED", "echo", 1),
            ("MODIFIED", "echo", 2),
            ("DELETED", "echo", 3),
        ]

    @pytest.mark.asyncio
    async def test_watch_wakes_on_a_local_write(self, store: Store) -> None:
        events = store.watch(store.revision())
        try:
            waiting = asyncio.ensure_future(next_event(events))
            await let_watcher_wait()
            assert not waiting.done()

            store.apply([service()])

            event = await waiting
        finally:
            await events.aclose()

        assert (event.type, event.revision) == ("ADDED", 1)

    @pytest.mark.asyncio
    async def test_watch_from_a_past_revision_replays_first(self, store: Store) -> None:
        store.apply([service("a")])
        since = store.revision()
        store.apply([service("b"), service("c")])

        events = store.watch(since)
        try:
            replayed = [await next_event(events) for _ in range(2)]
            store.apply([service("d")])
            live = await next_event(events)
        finally:
            await events.aclose()

        assert summary([*replayed, live]) == [
            ("ADDED", "b", 2),
            ("ADDED", "c", 3),
            ("ADDED", "d", 4),
        ]

    @pytest.mark.asyncio
    async def test_watch_from_a_compacted_revision_raises_compacted(
        self, store_factory: StoreFactory
    ) -> None:
        store = store_factory(event_retention=2)
        for port in range(80, 85):
            store.apply([service(port=port)])

        events = store.watch(0)
        try:
            with pytest.raises(Compacted):
                await next_event(events)
        finally:
            await events.aclose()

    @pytest.mark.asyncio
    async def test_watch_can_be_cancelled_while_waiting(self, store: Store) -> None:
        events = store.watch(0)
        waiting = asyncio.ensure_future(first_event(events))
        await let_watcher_wait()

        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await events.aclose()

        store.apply([service()])
        assert store.revision() == 1

    @pytest.mark.asyncio
    async def test_watches_run_side_by_side(self, store: Store) -> None:
        first, second = store.watch(0), store.watch(0)
        try:
            store.apply([service()])
            got = [await next_event(first), await next_event(second)]
        finally:
            await first.aclose()
            await second.aclose()

        assert [e.revision for e in got] == [1, 1]

    @pytest.mark.asyncio
    async def test_closing_the_store_ends_its_watches(self, store_factory: StoreFactory) -> None:
        store = store_factory()
        events = store.watch(0)
        waiting = asyncio.ensure_future(first_event(events))
        await let_watcher_wait()

        store.close()

        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, ARRIVAL_TIMEOUT)

    # -- more than one Store on the same backend --------------------------------

    def test_objects_and_history_survive_reopening(self, store_factory: StoreFactory) -> None:
        first = store_factory()
        created = first.apply([service()])[0].object
        first.update_status("Service", "default", "echo", {"ready": True})
        first.close()

        reopened = store_factory()

        assert reopened.revision() == 2
        assert (
            reopened.get("Service", "default", "echo")["metadata"]["uid"]
            == created["metadata"]["uid"]
        )
        assert summary(reopened.changes(0)) == [("ADDED", "echo", 1), ("MODIFIED", "echo", 2)]
        assert rv(reopened.apply([service(port=81)])[0].object) == 3

    @pytest.mark.asyncio
    async def test_a_watch_sees_writes_made_through_another_store(
        self, store_factory: StoreFactory
    ) -> None:
        watching, writing = store_factory(), store_factory()
        events = watching.watch(watching.revision())
        try:
            waiting = asyncio.ensure_future(next_event(events))
            await let_watcher_wait()

            writing.apply([service()])

            event = await waiting
        finally:
            await events.aclose()

        assert (event.type, event.revision) == ("ADDED", 1)
        assert watching.get("Service", "default", "echo") == event.object
