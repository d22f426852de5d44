"""SqliteStore: the shared contract, plus what only a file-backed store can promise."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from gossamer.errors import StoreError
from gossamer.store import Compacted, SqliteStore, Store, open_store
from gossamer.store.base import Clock

from .contract import (
    ARRIVAL_TIMEOUT,
    StoreContract,
    StoreFactory,
    let_watcher_wait,
    next_event,
    service,
    summary,
)

SRC = Path(__file__).resolve().parents[2] / "src"


class TestSqliteStoreContract(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Iterator[StoreFactory]:
        opened: list[SqliteStore] = []

        def factory(*, clock: Clock | None = None, event_retention: int | None = None) -> Store:
            options: dict[str, Any] = {}
            if clock is not None:
                options["clock"] = clock
            if event_retention is not None:
                options["event_retention"] = event_retention
            store = SqliteStore(tmp_path / "store.db", **options)
            opened.append(store)
            return store

        yield factory
        for store in opened:
            store.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(path) as store:
        yield store


# -- opening -------------------------------------------------------------------


def test_opening_creates_parent_directories_and_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "gossamer" / "store.db"

    with SqliteStore(path) as store:
        store.apply([service()])

        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = path.with_name("store.db-wal")
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_the_file_uses_wal_journal_mode(store: SqliteStore, path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)


def _write_foreign_database(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE recipes (name TEXT)")
        conn.commit()


def _write_future_schema(path: Path) -> None:
    SqliteStore(path).close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
        conn.commit()


@pytest.mark.parametrize(
    ("prepare", "expected"),
    [
        (_write_garbage, r"is not a Gossamer store \(file is not a database\)"),
        (_write_foreign_database, r"is not a Gossamer store \(an SQLite database without"),
        (_write_future_schema, r"schema version 99.*understands version 1"),
    ],
    ids=[
        "a file that is not SQLite",
        "an SQLite database of something else",
        "a store with an unknown schema version",
    ],
)
def test_a_file_that_is_not_a_usable_store_is_refused_with_advice(
    path: Path, prepare: Any, expected: str
) -> None:
    prepare(path)
    before = path.read_bytes()

    with pytest.raises(StoreError, match=expected) as caught:
        SqliteStore(path)

    message = str(caught.value)
    assert str(path) in message
    assert "restore it from a backup" in message
    assert caught.value.__cause__ is None
    assert path.read_bytes() == before


def test_a_path_that_cannot_be_a_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=str(tmp_path)):
        SqliteStore(tmp_path)


def test_event_retention_must_be_positive(path: Path) -> None:
    with pytest.raises(ValueError, match="event_retention"):
        SqliteStore(path, event_retention=0)


def test_using_a_closed_store_is_a_store_error(path: Path) -> None:
    store = SqliteStore(path)
    store.close()
    store.close()

    with pytest.raises(StoreError, match="closed"):
        store.list()


# -- several writers on one file ------------------------------------------------


def test_two_stores_on_one_file_get_distinct_increasing_revisions(path: Path) -> None:
    with SqliteStore(path) as first, SqliteStore(path) as second:
        revisions: dict[str, list[int]] = {"first": [], "second": []}

        def write(label: str, store: SqliteStore) -> None:
            for i in range(50):
                [result] = store.apply([service(f"{label}-{i}")])
                revisions[label].append(int(result.object["metadata"]["resourceVersion"]))

        threads = [
            threading.Thread(target=write, args=("first", first)),
            threading.Thread(target=write, args=("second", second)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        for own in revisions.values():
            assert own == sorted(own)
        assert sorted(revisions["first"] + revisions["second"]) == list(range(1, 101))
        assert first.revision() == second.revision() == 100
        assert [e.revision for e in first.changes(0)] == list(range(1, 101))


_WRITER = textwrap.dedent(
    """
    import sys
    from gossamer.store import SqliteStore

    path, label = sys.argv[1], sys.argv[2]
    with SqliteStore(path) as store:
        for i in range(40):
            obj = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"{label}-{i}", "namespace": "default"},
                "spec": {"ports": [{"port": i + 1}]},
            }
            [result] = store.apply([obj])
            print(result.object["metadata"]["resourceVersion"])
    """
)


def test_two_processes_writing_one_file_get_distinct_increasing_revisions(path: Path) -> None:
    SqliteStore(path).close()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), label],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for label in ("left", "right")
    ]
    outputs = []
    for writer in writers:
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        outputs.append([int(line) for line in out.split()])

    for own in outputs:
        assert own == sorted(own)
    assert sorted(outputs[0] + outputs[1]) == list(range(1, 81))
    with SqliteStore(path) as store:
        assert len(store.list("Service")) == 80


@pytest.mark.asyncio
async def test_each_store_on_one_file_sees_the_others_writes_by_watch(path: Path) -> None:
    with SqliteStore(path) as first, SqliteStore(path) as second:
        first_events, second_events = first.watch(0), second.watch(0)
        try:
            first.apply([service("from-first")])
            seen_by_second = await next_event(second_events)
            second.apply([service("from-second")])
            seen_by_first = [await next_event(first_events) for _ in range(2)]
        finally:
            await first_events.aclose()
            await second_events.aclose()

    assert summary([seen_by_second]) == [("ADDED", "from-first", 1)]
    assert summary(seen_by_first) == [("ADDED", "from-first", 1), ("ADDED", "from-second", 2)]


def test_compaction_by_one_store_is_seen_by_another_keeping_more(path: Path) -> None:
    with (
        SqliteStore(path, event_retention=1000) as keeps_more,
        SqliteStore(path, event_retention=2) as keeps_less,
    ):
        for port in range(80, 85):
            keeps_less.apply([service(port=port)])

        assert [e.revision for e in keeps_more.changes(3)] == [4, 5]
        with pytest.raises(Compacted, match="revision 1"):
            keeps_more.changes(1)


# -- waking watchers --------------------------------------------------------------


@pytest.mark.asyncio
async def test_watch_wakes_on_a_local_write_without_waiting_for_a_poll(path: Path) -> None:
    # With an hour between polls, only the in-process wake-up can deliver the event.
    with SqliteStore(path, poll_interval=3600) as store:
        events = store.watch(0)
        try:
            waiting = asyncio.ensure_future(next_event(events))
            await let_watcher_wait()
            store.apply([service()])
            event = await waiting
        finally:
            await events.aclose()

    assert event.revision == 1


@pytest.mark.asyncio
async def test_watch_wakes_on_a_write_from_another_thread(path: Path) -> None:
    with SqliteStore(path, poll_interval=3600) as store:
        events = store.watch(0)
        try:
            waiting = asyncio.ensure_future(next_event(events))
            await let_watcher_wait()
            await asyncio.to_thread(store.apply, [service()])
            event = await waiting
        finally:
            await events.aclose()

    assert event.revision == 1


@pytest.mark.asyncio
async def test_a_cancelled_watch_stops_listening(store: SqliteStore) -> None:
    events = store.watch(0)
    waiting = asyncio.ensure_future(next_event(events))
    await let_watcher_wait()
    assert len(store._watchers) == 1

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await events.aclose()

    assert store._watchers == set()


@pytest.mark.asyncio
async def test_an_unchanged_apply_does_not_wake_watchers(store: SqliteStore) -> None:
    store.apply([service()])
    events = store.watch(store.revision())
    try:
        waiting = asyncio.ensure_future(next_event(events))
        await let_watcher_wait()
        store.apply([service()])
        store.apply([service(port=81)])
        event = await asyncio.wait_for(waiting, ARRIVAL_TIMEOUT)
    finally:
        await events.aclose()

    assert (event.type, event.revision) == ("MODIFIED", 2)


# -- open_store -----------------------------------------------------------------


@pytest.mark.parametrize(
    "as_url",
    [str, lambda p: f"sqlite://{p}"],
    ids=["a plain path", "a sqlite URL with an absolute path"],
)
def test_open_store_opens_sqlite(path: Path, as_url: Any) -> None:
    store = open_store(as_url(path))
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == path
        store.apply([service()])
    finally:
        store.close()
    assert path.exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://localhost:3306", r"unsupported store URL .*scheme 'mysql'.*sqlite:///.*etcd://"),
        ("sqlite://relative/store.db", r"absolute path"),
        ("", r"no store given"),
    ],
    ids=["an unknown scheme lists the supported ones", "a sqlite URL without a path", "nothing"],
)
def test_open_store_refuses_urls_it_cannot_use(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected):
        open_store(url)
