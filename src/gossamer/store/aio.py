"""The Store for an event loop: each call on a bounded pool of threads, with a deadline.

A Store's synchronous methods are one or two round trips to etcd, or a SQLite
transaction; on a loop that also carries every discovery stream, the API and the
health check, a store that stalls (etcd with no quorum, a member frozen) must stall
only the calls that need it. `AsyncStore` runs each call on its own small pool of
threads and gives up waiting after `deadline` seconds with a StoreError that says so;
the loop keeps answering everything else meanwhile.

Thread safety of what runs on the pool: SqliteStore keeps one connection opened with
`check_same_thread=False` behind a lock (one transaction at a time, from any thread);
EtcdStore's gateway keeps one keep-alive connection per thread. A call that outlives
its deadline keeps its thread until the store's own timeout ends it (etcd: the
gateway's deadline; SQLite: its busy timeout), so a stall fills the pool at most, and
calls queued behind a full pool fail at their deadline too.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from gossamer.errors import StoreError
from gossamer.store.base import ApplyResult, Store, WatchEvent

__all__ = ["DEFAULT_DEADLINE", "AsyncStore"]

DEFAULT_DEADLINE = 25.0  # above etcd's own 20 s failover deadline, so its error comes first
DEFAULT_WORKERS = 8

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncStore:
    """`store`'s methods as coroutines (see gossamer.store.base.Store for each contract).

    `deadline`: seconds a call may wait, queued and running together, before it fails
    with StoreError. `workers`: threads that may be inside the store at once.
    """

    def __init__(
        self,
        store: Store,
        *,
        deadline: float = DEFAULT_DEADLINE,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        if deadline <= 0:
            raise ValueError(f"deadline must be positive, got {deadline}")
        self.store = store
        self.deadline = deadline
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store")
        self._background: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"AsyncStore({self.store!r}, deadline={self.deadline:g})"

    async def run(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run `call` (a function that uses the store) on the pool, within the deadline.

        For a step made of several store calls (read, decide, write) that must stay
        one synchronous piece."""
        loop = asyncio.get_running_loop()
        what = getattr(call, "__name__", "a store call")
        try:
            future = loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))
        except RuntimeError as e:  # the pool was shut down: the control plane is stopping
            raise StoreError(f"{self.store!r} is closed ({what})") from e
        try:
            async with asyncio.timeout(self.deadline):
                return await future
        except TimeoutError:
            raise StoreError(
                f"{self.store!r} did not answer {what} within {self.deadline:g} s "
                "(is the store reachable and does it have a majority?)"
            ) from None

    def spawn(self, call: Callable[_P, Any], *args: _P.args, **kwargs: _P.kwargs) -> None:
        """Run `call` like `run`, from code that cannot wait for it (a record written
        from a synchronous step on the loop); a failure is logged, not raised."""
        task = asyncio.get_running_loop().create_task(self.run(call, *args, **kwargs))
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%r: a background store call failed: %s", self, task.exception())

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return await self.run(self.store.get, kind, namespace, name)

    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        return await self.run(self.store.list, kind, namespace)

    async def apply(self, objects: Sequence[dict[str, Any]]) -> builtins.list[ApplyResult]:
        return await self.run(self.store.apply, objects)

    async def update_status(
        self,
        kind: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        return await self.run(
            self.store.update_status, kind, namespace, name, status, resource_version
        )

    async def delete(
        self, kind: str, namespace: str, name: str, resource_version: str | None = None
    ) -> dict[str, Any]:
        return await self.run(self.store.delete, kind, namespace, name, resource_version)

    async def revision(self) -> int:
        return await self.run(self.store.revision)

    async def changes(self, since: int) -> builtins.list[WatchEvent]:
        return await self.run(self.store.changes, since)

    def watch(self, since: int) -> AsyncGenerator[WatchEvent, None]:
        """The store's own watch: already asynchronous."""
        return self.store.watch(since)

    def close(self) -> None:
        """Stop taking calls; calls still running finish on their threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
