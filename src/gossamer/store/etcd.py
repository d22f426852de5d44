"""The distributed store: the same objects, history and revisions, kept in etcd.

Layout under a key prefix (default `/gossamer/`), one prefix per mesh:

    meta/revision        the store's revision counter (see below)
    meta/compacted       history before this revision is gone
    objects/KIND/NS/NAME the object, as JSON, with its resourceVersion
    events/REVISION      {"type", "object"}: the bounded history `changes` and `watch` replay

Every write is one etcd transaction guarded by the counter's etcd `mod_revision`: it
reads the counter and the objects it touches, decides, and commits the objects, their
events and the new counter only if no other writer (another replica) moved the counter
meanwhile; otherwise it reads again and decides again. So the Store contract holds
exactly as on SQLite: one global revision, a revision per changed object even within
one apply, all-or-nothing applies, `changes(since)` replay. Decision 0050 says why the
resourceVersion is this counter and not etcd's own revision.

A watch reads the history, then holds an etcd watch on `events/` only to wake up: on
any event it reads the history again from the last revision it yielded. A broken
stream (a member killed) or an etcd compaction under it only makes it read and
watch again, on another member if need be; the history this store keeps is what a
watcher resumes from, and when that is gone it raises Compacted (list again).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import threading
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import aiohttp

from gossamer.errors import NotFound, StoreError
from gossamer.store.base import ApplyResult, Clock, Compacted, WatchEvent, utc_now
from gossamer.store.etcdgateway import (
    Endpoint,
    EtcdGateway,
    b64,
    parse_endpoints,
    prefix_end,
    unb64,
)
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

__all__ = ["EtcdStore", "parse_etcd_url"]

log = logging.getLogger(__name__)

_EventType = Literal["ADDED", "MODIFIED", "DELETED"]
_RETRIES = 200  # writes that lost the race to another writer, before giving up
_WIDTH = 20  # event keys are zero-padded so that key order is revision order


def parse_etcd_url(url: str) -> tuple[list[Endpoint], str]:
    """etcd://H1:P1,H2:P2[/prefix] into endpoints and a key prefix ending in '/'."""
    parts = urlsplit(url)
    if parts.scheme != "etcd" or not parts.netloc or parts.query or parts.fragment:
        raise StoreError(
            f"store URL {url!r} is not an etcd URL: write etcd://HOST:PORT[,HOST:PORT...]"
            "[/prefix], naming the members' client addresses"
        )
    prefix = parts.path.strip("/")
    return parse_endpoints(parts.netloc), f"/{prefix}/" if prefix else "/gossamer/"


@dataclass
class _Snapshot:
    """What a write read, in one etcd transaction."""

    counter_mod: int  # etcd mod_revision of meta/revision; 0 if never written
    revision: int
    compacted: int
    objects: dict[Key, dict[str, Any] | None]


class EtcdStore:
    """A Store in etcd (see gossamer.store.base.Store for the contract).

    `event_retention` and `clock` mean what they mean for SqliteStore; `poll_interval`
    is only a safety net, since a watch wakes on etcd's own watch stream. The
    synchronous methods make one or two round trips to etcd from the calling thread.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint] | str,
        *,
        prefix: str = "/gossamer/",
        event_retention: int = 10_000,
        clock: Clock = utc_now,
        poll_interval: float = 5.0,
        timeout: float = 5.0,
        deadline: float = 20.0,
    ) -> None:
        if event_retention < 1:
            raise ValueError(f"event_retention must be at least 1, got {event_retention}")
        if isinstance(endpoints, str):
            endpoints = parse_endpoints(endpoints)
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix
        self.gateway = EtcdGateway(endpoints, timeout=timeout, deadline=deadline)
        self._event_retention = event_retention
        self._clock = clock
        self._poll_interval = poll_interval
        self._closed = False
        self._watchers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._watchers_lock = threading.Lock()
        # Answers at once, so a store that cannot reach etcd fails where it is opened.
        self.revision()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> EtcdStore:
        endpoints, prefix = parse_etcd_url(url)
        return cls(endpoints, prefix=prefix, **options)

    def sibling(self, name: str) -> EtcdStore:
        """A separate Store on the same members, under PREFIX/NAME/ (the control
        plane's own records, kept out of the mesh's lists and watches)."""
        return EtcdStore(
            self.gateway.endpoints,
            prefix=f"{self.prefix}{name.strip('/')}/",
            timeout=self.gateway.timeout,
            deadline=self.gateway.deadline,
        )

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.gateway.close()
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
        return f"EtcdStore('etcd://{self.gateway.describe()}{self.prefix.rstrip('/')}')"

    # -- keys --------------------------------------------------------------------

    def _object_key(self, key: Key) -> str:
        kind, namespace, name = key
        return f"{self.prefix}objects/{kind}/{namespace}/{name}"

    def _event_key(self, revision: int) -> str:
        return f"{self.prefix}events/{revision:0{_WIDTH}d}"

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise StoreError(f"the store {self!r} is closed")
        return self.gateway.call(path, body)

    # -- reads -------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        answer = self._call("/v3/kv/range", {"key": b64(self._object_key((kind, namespace, name)))})
        kvs = answer.get("kvs") or []
        if not kvs:
            raise NotFound(kind, name, namespace)
        return _value(kvs[0])

    def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        prefix = f"{self.prefix}objects/"
        if kind is not None:
            prefix += f"{kind}/"
            if namespace is not None:
                prefix += f"{namespace}/"
        answer = self._call("/v3/kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix)})
        objects = [_value(kv) for kv in answer.get("kvs") or []]
        if namespace is not None and kind is None:
            objects = [o for o in objects if (o["metadata"].get("namespace") or "") == namespace]
        objects.sort(key=_sort_key)
        return objects

    def revision(self) -> int:
        answer = self._call("/v3/kv/range", {"key": b64(f"{self.prefix}meta/revision")})
        kvs = answer.get("kvs") or []
        return int(unb64(kvs[0]["value"])) if kvs else 0

    def changes(self, since: int) -> builtins.list[WatchEvent]:
        return self._parse_changes(since, self._call("/v3/kv/txn", self._changes_request(since)))[0]

    def _changes_request(self, since: int) -> dict[str, Any]:
        # One transaction, so a compaction cannot land between the mark and the read.
        start = self._event_key(since + 1)
        return {
            "success": [
                {"request_range": {"key": b64(f"{self.prefix}meta/compacted")}},
                {
                    "request_range": {
                        "key": b64(start),
                        "range_end": prefix_end(f"{self.prefix}events/"),
                    }
                },
            ]
        }

    def _parse_changes(
        self, since: int, answer: dict[str, Any]
    ) -> tuple[builtins.list[WatchEvent], int]:
        compacted_kvs, event_kvs = (
            r["response_range"].get("kvs") or [] for r in answer["responses"]
        )
        compacted = int(unb64(compacted_kvs[0]["value"])) if compacted_kvs else 0
        if since < compacted:
            raise Compacted(since, compacted)
        events = []
        for kv in event_kvs:
            record = json.loads(unb64(kv["value"]))
            obj = record["object"]
            events.append(WatchEvent(record["type"], obj, int(obj["metadata"]["resourceVersion"])))
        return events, int(answer["header"]["revision"])

    async def watch(self, since: int) -> AsyncGenerator[WatchEvent, None]:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        watcher = (loop, wake)
        with self._watchers_lock:
            self._watchers.add(watcher)
        session = aiohttp.ClientSession()
        listener: asyncio.Task[None] | None = None
        try:
            last = since
            while not self._closed:
                wake.clear()
                try:
                    answer = await self.gateway.acall(
                        session, "/v3/kv/txn", self._changes_request(last)
                    )
                except StoreError as e:
                    # The watch outlives an outage of the whole cluster: it is what
                    # keeps the control plane current once etcd is back.
                    log.warning("watch on %r: %s; trying again", self, e)
                    await asyncio.sleep(1.0)
                    continue
                events, seen = self._parse_changes(last, answer)
                for event in events:
                    yield event
                    last = event.revision
                if self._closed:
                    return
                if listener is None or listener.done():
                    listener = asyncio.create_task(self._listen(session, seen + 1, wake))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await wake.wait()
        finally:
            with self._watchers_lock:
                self._watchers.discard(watcher)
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            await session.close()

    async def _listen(
        self, session: aiohttp.ClientSession, start: int, wake: asyncio.Event
    ) -> None:
        """Set `wake` whenever etcd reports a new event key; return (after setting it)
        when the stream ends, so the watch reads again and listens anew."""
        events = f"{self.prefix}events/"
        request = {"key": b64(events), "range_end": prefix_end(events), "start_revision": start}
        try:
            async for result in self.gateway.watch(session, request):
                if result.get("events") or result.get("canceled") or result.get("compact_revision"):
                    wake.set()
                if result.get("canceled") or result.get("compact_revision"):
                    return
        finally:
            wake.set()
            if not self._closed:
                # Not at once: a cluster with no member answering would spin.
                await asyncio.sleep(0.1)

    # -- writes ------------------------------------------------------------------

    def apply(self, objects: Sequence[dict[str, Any]]) -> builtins.list[ApplyResult]:
        incoming = [normalize(obj) for obj in objects]
        keys = [key_of(obj) for obj in incoming]
        for _ in range(_RETRIES):
            read = self._read(set(keys))
            writer = _Writer(read)
            results: list[ApplyResult] = []
            for obj, key in zip(incoming, keys, strict=True):
                stored = writer.current(key)
                check_version(key, obj["metadata"].get("resourceVersion"), stored)
                if stored is None:
                    new = created(normalize(obj), writer.next_revision(), self._clock)
                    writer.put(key, new, "ADDED")
                    results.append(ApplyResult(new, "created"))
                elif same_config(obj, stored):
                    results.append(ApplyResult(normalize(stored), "unchanged"))
                else:
                    changed = updated(obj, stored, writer.next_revision())
                    writer.put(key, changed, "MODIFIED")
                    results.append(ApplyResult(changed, "configured"))
            if self._commit(writer):
                return [ApplyResult(normalize(r.object), r.action) for r in results]
        raise self._contended()

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
        for _ in range(_RETRIES):
            writer = _Writer(self._read({key}))
            stored = writer.current(key)
            if stored is None:
                raise NotFound(kind, name, namespace)
            check_version(key, resource_version, stored)
            if stored.get("status") == status:
                return stored
            stored["status"] = status
            stored["metadata"]["resourceVersion"] = str(writer.next_revision())
            writer.put(key, stored, "MODIFIED")
            if self._commit(writer):
                return normalize(stored)
        raise self._contended()

    def delete(
        self, kind: str, namespace: str, name: str, resource_version: str | None = None
    ) -> dict[str, Any]:
        key = (kind, namespace, name)
        for _ in range(_RETRIES):
            writer = _Writer(self._read({key}))
            stored = writer.current(key)
            if stored is None:
                raise NotFound(kind, name, namespace)
            check_version(key, resource_version, stored)
            stored["metadata"]["resourceVersion"] = str(writer.next_revision())
            writer.remove(key, stored)
            if self._commit(writer):
                return normalize(stored)
        raise self._contended()

    def _read(self, keys: set[Key]) -> _Snapshot:
        ordered = sorted(keys)
        meta = [f"{self.prefix}meta/revision", f"{self.prefix}meta/compacted"]
        ranges = [*meta, *(self._object_key(k) for k in ordered)]
        answer = self._call(
            "/v3/kv/txn", {"success": [{"request_range": {"key": b64(k)}} for k in ranges]}
        )
        found = [r["response_range"].get("kvs") or [] for r in answer["responses"]]
        counter, compacted = found[0], found[1]
        return _Snapshot(
            counter_mod=int(counter[0]["mod_revision"]) if counter else 0,
            revision=int(unb64(counter[0]["value"])) if counter else 0,
            compacted=int(unb64(compacted[0]["value"])) if compacted else 0,
            objects={
                key: _value(kvs[0]) if kvs else None
                for key, kvs in zip(ordered, found[2:], strict=True)
            },
        )

    def _commit(self, writer: _Writer) -> bool:
        """Write what `writer` decided if no one wrote since it read; False if someone did."""
        read = writer.read
        if writer.revision == read.revision:
            return True  # nothing changed: nothing to write
        operations: list[dict[str, Any]] = []
        for key, obj in writer.changed.items():
            object_key = b64(self._object_key(key))
            if obj is None:
                operations.append({"request_delete_range": {"key": object_key}})
            else:
                operations.append({"request_put": {"key": object_key, "value": b64(dumps(obj))}})
        for revision, type_, obj in writer.events:
            record = dumps({"type": type_, "object": obj})
            operations.append(
                {"request_put": {"key": b64(self._event_key(revision)), "value": b64(record)}}
            )
        operations.append(_put(f"{self.prefix}meta/revision", writer.revision))
        horizon = writer.revision - self._event_retention
        # The mark lives in etcd, not in this object: another replica, perhaps with a
        # different retention, may have moved it.
        if horizon > read.compacted:
            operations.append(
                {
                    "request_delete_range": {
                        "key": b64(f"{self.prefix}events/"),
                        "range_end": b64(self._event_key(horizon + 1)),
                    }
                }
            )
            operations.append(_put(f"{self.prefix}meta/compacted", horizon))
        guard = {
            "target": "MOD",
            "key": b64(f"{self.prefix}meta/revision"),
            "mod_revision": read.counter_mod,
        }
        answer = self._call("/v3/kv/txn", {"compare": [guard], "success": operations})
        if not answer.get("succeeded"):
            return False
        self._notify()
        return True

    def _contended(self) -> StoreError:
        return StoreError(
            f"{self!r}: {_RETRIES} writes in a row lost the race to other writers: "
            "the store is overloaded; try again"
        )

    def _notify(self) -> None:
        with self._watchers_lock:
            watchers = builtins.list(self._watchers)
        for loop, wake in watchers:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(wake.set)


class _Writer:
    """One write's decisions: the objects as they will be, and the events to record."""

    def __init__(self, read: _Snapshot) -> None:
        self.read = read
        self.revision = read.revision
        self.changed: dict[Key, dict[str, Any] | None] = {}
        self.events: list[tuple[int, _EventType, dict[str, Any]]] = []

    def current(self, key: Key) -> dict[str, Any] | None:
        obj = self.changed[key] if key in self.changed else self.read.objects.get(key)
        return normalize(obj) if obj is not None else None

    def next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def put(self, key: Key, obj: dict[str, Any], type_: _EventType) -> None:
        self.changed[key] = obj
        self.events.append((self.revision, type_, obj))

    def remove(self, key: Key, last_state: dict[str, Any]) -> None:
        self.changed[key] = None
        self.events.append((self.revision, "DELETED", last_state))


def _put(key: str, value: int) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(str(value))}}


def _value(kv: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(unb64(kv["value"]))
    return loaded


def _sort_key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return key_of(obj)
