"""The embedded store: one SQLite file, safe for several processes to share.

WAL mode lets readers run beside one writer; every write is a `BEGIN IMMEDIATE`
transaction, which takes the file's write lock before reading the revision counter,
so two processes can never hand out the same revision.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from gossamer.errors import NotFound, StoreError
from gossamer.store.base import ApplyResult, Clock, Compacted, WatchEvent, utc_now
from gossamer.store.objects import (
    Key,
    check_version,
    created,
    dumps,
    key_of,
    normalize,
    same_config,
    updated,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore", "make_dirs"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
CREATE TABLE objects (
    kind      TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    revision  INTEGER NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE events (
    revision INTEGER PRIMARY KEY,
    type     TEXT NOT NULL,
    body     TEXT NOT NULL
);
"""

_EventType = Literal["ADDED", "MODIFIED", "DELETED"]


class SqliteStore:
    """A Store kept in one SQLite file (see gossamer.store.base.Store for the contract).

    `event_retention` is how many recent revisions of history `changes` and `watch`
    can replay; `poll_interval` is how often a watch checks for writes made by other
    processes. Usable as a context manager that closes it.

    `expect_existing` says the caller knows this store has been used before (the
    control plane passes it when its data dir shows an earlier start). A missing file is
    then still created, but an existing one that is empty (0 bytes, or SQLite without
    Gossamer's tables) is refused with StoreError rather than silently started as an
    empty mesh: an empty file where a store was is a lost store, not a new one.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        event_retention: int = 10_000,
        clock: Clock = utc_now,
        poll_interval: float = 0.2,
        busy_timeout: float = 10.0,
        expect_existing: bool = False,
    ) -> None:
        if event_retention < 1:
            raise ValueError(f"event_retention must be at least 1, got {event_retention}")
        self.path = Path(path)
        self._event_retention = event_retention
        self._clock = clock
        self._poll_interval = poll_interval
        # One connection shared by every thread (the API server may call from a
        # worker thread), so a lock keeps one transaction from interleaving another.
        self._lock = threading.Lock()
        self._watchers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._watchers_lock = threading.Lock()
        self._closed = False
        self._conn = _open(self.path, busy_timeout, expect_existing)

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        self._notify()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # -- reads -------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        with self._reading() as conn:
            stored = _load(conn, (kind, namespace, name))
        if stored is None:
            raise NotFound(kind, name, namespace)
        return stored

    def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        where, params = [], []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if namespace is not None:
            where.append("namespace = ?")
            params.append(namespace)
        query = "SELECT body FROM objects"
        if where:
            query += " WHERE " + " AND ".join(where)
        # SQLite compares TEXT as UTF-8 bytes, which orders like Python's str.
        query += " ORDER BY kind, namespace, name"
        with self._reading() as conn:
            rows = conn.execute(query, params).fetchall()
        return [json.loads(body) for (body,) in rows]

    def revision(self) -> int:
        with self._reading() as conn:
            return _meta_int(conn, "revision")

    def changes(self, since: int) -> builtins.list[WatchEvent]:
        with self._reading() as conn:
            # One read transaction, so another process cannot compact between the
            # check and the read and leave a silent gap.
            conn.execute("BEGIN")
            try:
                compacted = _meta_int(conn, "compacted")
                rows = conn.execute(
                    "SELECT revision, type, body FROM events WHERE revision > ? ORDER BY revision",
                    (since,),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        if since < compacted:
            raise Compacted(since, compacted)
        return [WatchEvent(type, json.loads(body), revision) for revision, type, body in rows]

    async def watch(self, since: int) -> AsyncGenerator[WatchEvent, None]:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        watcher = (loop, wake)
        with self._watchers_lock:
            self._watchers.add(watcher)
        try:
            last = since
            while not self._closed:
                # Cleared before reading, so a write that lands after the read
                # leaves the event set and the wait below returns at once.
                wake.clear()
                for event in self.changes(last):
                    yield event
                    last = event.revision
                if self._closed:
                    return
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that races its timeout, and the watch would never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await wake.wait()
        finally:
            with self._watchers_lock:
                self._watchers.discard(watcher)

    # -- writes ------------------------------------------------------------------

    def apply(self, objects: Sequence[dict[str, Any]]) -> builtins.list[ApplyResult]:
        # A JSON round trip both copies the input (so it is never mutated) and
        # makes comparisons with stored bodies exact (tuples become lists, etc.).
        incoming = [normalize(obj) for obj in objects]
        results: list[ApplyResult] = []
        with self._writing() as writer:
            for obj in incoming:
                key = key_of(obj)
                stored = _load(writer.conn, key)
                check_version(key, obj["metadata"].get("resourceVersion"), stored)
                if stored is None:
                    new = created(obj, writer.next_revision(), self._clock)
                    writer.put(key, new, "ADDED")
                    results.append(ApplyResult(new, "created"))
                elif same_config(obj, stored):
                    results.append(ApplyResult(stored, "unchanged"))
                else:
                    changed = updated(obj, stored, writer.next_revision())
                    writer.put(key, changed, "MODIFIED")
                    results.append(ApplyResult(changed, "configured"))
        return results

    def update_status(
        self,
        kind: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        key = (kind, namespace, name)
        status = normalize(status)
        with self._writing() as writer:
            stored = _load(writer.conn, key)
            if stored is None:
                raise NotFound(kind, name, namespace)
            check_version(key, resource_version, stored)
            if stored.get("status") == status:
                return stored
            stored["status"] = status
            stored["metadata"]["resourceVersion"] = str(writer.next_revision())
            writer.put(key, stored, "MODIFIED")
        return stored

    def delete(
        self, kind: str, namespace: str, name: str, resource_version: str | None = None
    ) -> dict[str, Any]:
        key = (kind, namespace, name)
        with self._writing() as writer:
            stored = _load(writer.conn, key)
            if stored is None:
                raise NotFound(kind, name, namespace)
            check_version(key, resource_version, stored)
            stored["metadata"]["resourceVersion"] = str(writer.next_revision())
            writer.remove(key, stored)
        return stored

    # -- plumbing ----------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[_Writer]:
        with self._lock, self._errors():
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                writer = _Writer(conn)
                yield writer
                writer.finish(self._event_retention)
                conn.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself after some errors (a full disk), and
                # a second ROLLBACK would hide the real error.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if writer.revision > writer.start:
            self._notify()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        if self._closed:
            raise StoreError(f"the store {self.path} is closed")
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(f"the store {self.path} failed: {e}") from e

    def _notify(self) -> None:
        with self._watchers_lock:
            watchers = builtins.list(self._watchers)
        for loop, wake in watchers:
            # A watch may run on another thread's loop; Event is not thread-safe.
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(wake.set)


class _Writer:
    """Hands out revisions within one write transaction and records its events."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # Read only after BEGIN IMMEDIATE holds the write lock, so it is current.
        self.start = self.revision = _meta_int(conn, "revision")

    def next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def put(self, key: Key, obj: dict[str, Any], type: _EventType) -> None:
        body = dumps(obj)
        self.conn.execute(
            "INSERT OR REPLACE INTO objects (kind, namespace, name, revision, body)"
            " VALUES (?, ?, ?, ?, ?)",
            (*key, self.revision, body),
        )
        self._event(type, body)

    def remove(self, key: Key, last_state: dict[str, Any]) -> None:
        self.conn.execute("DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", key)
        self._event("DELETED", dumps(last_state))

    def _event(self, type: _EventType, body: str) -> None:
        self.conn.execute(
            "INSERT INTO events (revision, type, body) VALUES (?, ?, ?)",
            (self.revision, type, body),
        )

    def finish(self, retention: int) -> None:
        if self.revision == self.start:
            return
        _set_meta(self.conn, "revision", self.revision)
        horizon = self.revision - retention
        # The compaction mark lives in the file, not in this object, because
        # another process (perhaps with a different retention) may have moved it.
        if horizon > _meta_int(self.conn, "compacted"):
            self.conn.execute("DELETE FROM events WHERE revision <= ?", (horizon,))
            _set_meta(self.conn, "compacted", horizon)


# -- opening -----------------------------------------------------------------------


def _open(path: Path, busy_timeout: float, expect_existing: bool) -> sqlite3.Connection:
    refuse_empty = expect_existing and path.exists()
    if refuse_empty and path.is_file() and path.stat().st_size == 0:
        # Refused before SQLite opens it, so a -wal file beside it is left as it is.
        raise _lost_store(path, "it is empty (0 bytes)")
    try:
        _create_private_file(path)
    except OSError as e:
        raise StoreError(
            f"cannot create the store {path}: {e.strerror or e}: check the directory "
            "exists or can be created, and that this user may write there"
        ) from None
    conn: sqlite3.Connection | None = None
    try:
        # Autocommit mode (isolation_level=None): transactions are opened by hand,
        # so a write can be BEGIN IMMEDIATE rather than sqlite3's deferred BEGIN.
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # Checked before switching to WAL, which rewrites the file header: a file
        # that is refused must be left exactly as it was found.
        _prepare_schema(conn, path, refuse_empty)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        if getattr(e, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            raise _not_a_store(path, str(e)) from None
        raise StoreError(f"cannot open the store {path}: {e}") from None
    except StoreError:
        if conn is not None:
            conn.close()
        raise


def make_dirs(path: Path, mode: int) -> None:
    """Create directory `path`, and any missing parents, with exactly `mode` whatever
    the umask (`Path.mkdir(parents=True)` gives parents 0777 less the umask: 0777 under
    umask 000). A directory that exists is left as found."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # made by another process meanwhile; its mode is its own
        os.chmod(directory, mode)


def _create_private_file(path: Path) -> None:
    make_dirs(path.parent, 0o700)
    # Created here rather than by sqlite3 so the mode is 0600 from the first
    # instant; SQLite gives its -wal and -shm files the database file's mode.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def _prepare_schema(conn: sqlite3.Connection, path: Path, refuse_empty: bool) -> None:
    # IMMEDIATE, so two processes opening a new file at once do not both create it.
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            ).fetchall()
        }
        if not tables and refuse_empty:
            raise _lost_store(path, "it holds no tables")
        if not tables:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", SCHEMA_VERSION), ("revision", 0), ("compacted", 0)],
            )
        elif "meta" not in tables:
            raise _not_a_store(path, "an SQLite database without Gossamer's tables")
        else:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                raise _not_a_store(path, "an SQLite database without a Gossamer schema version")
            if row[0] != SCHEMA_VERSION:
                raise StoreError(
                    f"{path} is a Gossamer store with schema version {row[0]!r}, but this "
                    f"Gossamer understands version {SCHEMA_VERSION}: open it with the "
                    "Gossamer release that wrote it, or restore it from a backup"
                )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _lost_store(path: Path, why: str) -> StoreError:
    beside = [p.name for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    also = f" (with {' and '.join(beside)} beside it)" if beside else ""
    return StoreError(
        f"{path} is not a usable store: {why}, but this store has been used before (the "
        "data dir shows an earlier start), so the mesh's objects are lost. Restore it "
        f"from a backup, or move it aside{also} to start again with no objects"
    )


def _not_a_store(path: Path, why: str) -> StoreError:
    return StoreError(
        f"{path} is not a Gossamer store ({why}): move it aside or restore it from a backup"
    )


# -- rows --------------------------------------------------------------------------


def _load(conn: sqlite3.Connection, key: Key) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?", key
    ).fetchone()
    if row is None:
        return None
    loaded: dict[str, Any] = json.loads(row[0])
    return loaded


def _meta_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row is not None else 0


def _set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
