"""The Store protocol: what every backend (SQLite, etcd, Kubernetes) promises.

Objects are Kubernetes-shaped dicts the caller has already validated. A store keys
them by (kind, metadata.namespace, metadata.name), sets the server-owned metadata,
refuses stale writes, and keeps a bounded history of changes that watchers replay.
The contract suite in tests/store/contract.py checks each promise made here.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from gossamer.errors import Conflict

__all__ = [
    "SERVER_METADATA",
    "ApplyResult",
    "Clock",
    "Compacted",
    "Store",
    "WatchEvent",
    "format_timestamp",
    "utc_now",
]

Clock = Callable[[], datetime]
"""Returns "now"; injected so tests get a fixed creationTimestamp."""

SERVER_METADATA = frozenset({"resourceVersion", "uid", "creationTimestamp", "generation"})
"""Metadata the store owns: whatever a client sends in these fields is replaced."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC at whole seconds, the form Kubernetes writes."""
    if moment.tzinfo is None:
        # A naive clock is taken to be UTC rather than local time, so two hosts in
        # different zones agree on what they wrote.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    """One change, at one revision.

    A DELETED event carries the object's last state, with the delete's revision as
    its resourceVersion, so a watcher can tell which write removed it.
    """

    type: Literal["ADDED", "MODIFIED", "DELETED"]
    object: dict[str, Any]
    revision: int


@dataclass(frozen=True)
class ApplyResult:
    """What apply did to one object, and the object as the store now holds it."""

    object: dict[str, Any]
    action: Literal["created", "configured", "unchanged"]


class Compacted(Conflict):
    """The history a watcher asked for has been discarded; it must list again.

    Recover by reading `revision()`, then `list()`, then watching from that revision.
    """

    def __init__(self, since: int, compacted: int) -> None:
        self.since, self.compacted = since, compacted
        super().__init__(
            f"changes since revision {since} are no longer kept (history starts after "
            f"revision {compacted}): list the objects again and watch from the current "
            "revision"
        )


class Store(Protocol):
    """A place to keep mesh resources, shared by every control-plane replica.

    Every write takes the next value of one global revision counter, like etcd's
    revision; an object's `metadata.resourceVersion` is the revision (as a string)
    of the write that last changed it. Methods are synchronous and thread-safe;
    only `watch` is async.
    """

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """Return a fresh copy of the stored object.

        Raises NotFound(kind, name, namespace) when there is none.
        """
        ...

    def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Return every object matching the filters (None matches all).

        Sorted by (kind, namespace, name). To list and then watch without missing a
        change, read `revision()` first, then list, then watch from that revision: a
        change may be seen twice, never missed.
        """
        ...

    def apply(self, objects: Sequence[dict[str, Any]]) -> builtins.list[ApplyResult]:
        """Create or replace each object, all in one transaction.

        All or nothing: if any object fails, nothing is written and the revision
        does not move. Objects are applied in order, so a later object sees the
        effect of an earlier one with the same key.

        - An object carrying `metadata.resourceVersion` is written only if that is
          the stored object's current version; otherwise (or if the object does not
          exist) raises Conflict naming the object and both versions.
        - An object equal to the stored one except for server-set metadata and
          status is left alone: no revision, no event, action "unchanged".
        - Server-set metadata: `resourceVersion`; `uid` (uuid4 on create, kept);
          `creationTimestamp` (RFC 3339 UTC on create, kept); `generation` (1 on
          create, +1 each time `spec` changes). Values the client sent are replaced.
        - `status` is accepted on create and ignored on update (the stored status is
          kept); use `update_status` to change it.
        - Each created or changed object gets its own revision and one event
          (ADDED or MODIFIED).

        Returns one ApplyResult per input object, in input order. The input dicts
        are not modified.
        """
        ...

    def update_status(
        self,
        kind: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Replace the object's status, leaving spec and generation as they are.

        Writes a new revision and a MODIFIED event, unless `status` equals the stored
        status, in which case nothing is written and the stored object is returned.
        Raises NotFound if there is no such object, Conflict if `resource_version`
        is given and is not the current one. Returns the object as stored.
        """
        ...

    def delete(
        self, kind: str, namespace: str, name: str, resource_version: str | None = None
    ) -> dict[str, Any]:
        """Remove the object and return its last state.

        The returned object (like the DELETED event) has the delete's revision as its
        resourceVersion. Raises NotFound if there is no such object, Conflict if
        `resource_version` is given and is not the current one.
        """
        ...

    def revision(self) -> int:
        """The revision of the latest write; 0 for a store never written to."""
        ...

    def changes(self, since: int) -> builtins.list[WatchEvent]:
        """Every event with a revision greater than `since`, oldest first.

        History is kept for a bounded window of recent revisions; raises Compacted if
        events after `since` have already been discarded.
        """
        ...

    def watch(self, since: int) -> AsyncGenerator[WatchEvent, None]:
        """Yield every event after `since`, in order, then each new one as it happens.

        Wakes at once on writes through this Store object (from any thread) and
        polls to see writes by other processes sharing the backend. Raises Compacted
        like `changes`. Safe to cancel at any await; ends when the store is closed.

        An async generator rather than a bare iterator so that a consumer that stops
        early can `aclose()` it (or use `contextlib.aclosing`) and release the
        backend's watch at once instead of at garbage collection.
        """
        ...

    def close(self) -> None:
        """Release the backend's resources; idempotent. Running watches end."""
        ...
