"""HTTPRoute and GRPCRoute status: `Accepted` and `ResolvedRefs` per Service parent, written back.

`httproute_status` is pure: the route, the mesh it lives in, its current status and
the time give the status it should have (conditions keep their lastTransitionTime
while they do not change, so a status written once is not rewritten). The
`RouteStatusReconciler` runs it whenever a route or Service changes and writes what
differs with `store.update_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gossamer.errors import Conflict, NotFound
from gossamer.resources import validate
from gossamer.resources.grpcroute import GRPCRoute
from gossamer.resources.httproute import HTTPRoute
from gossamer.resources.tcproute import TCPRoute
from gossamer.store import Compacted, Store
from gossamer.store.aio import AsyncStore
from gossamer.translate.build import MeshView
from gossamer.translate.grpcroutes import compile_route
from gossamer.translate.routes import CONTROLLER_NAME, ROUTE_KINDS, route_conditions

log = logging.getLogger("gossamer.controlplane.routestatus")

DEBOUNCE_SECONDS = 0.1
_KINDS = ("HTTPRoute", "GRPCRoute", "TCPRoute", "Service")


def httproute_status(
    route: HTTPRoute, mesh: MeshView, current: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """The status `route` should have: one `parents` entry per Service parentRef, with
    the Gateway API's Accepted and ResolvedRefs conditions; entries other controllers
    wrote are kept as they are."""
    current = current or {}
    previous: dict[str, dict[str, Any]] = {}
    kept: list[Any] = []
    for entry in current.get("parents") or ():
        if not isinstance(entry, Mapping):
            continue
        if entry.get("controllerName") != CONTROLLER_NAME:
            kept.append(entry)
            continue
        for cond in entry.get("conditions") or ():
            previous[_key(entry.get("parentRef"), cond.get("type"))] = cond
    parents = []
    for parent in route_conditions(route, mesh):
        ref = parent.parent_ref.model_dump(mode="json", by_alias=True)
        conditions = []
        for c in parent.conditions:
            before = previous.get(_key(ref, c.type))
            unchanged = before is not None and before.get("status") == c.status
            conditions.append(
                {
                    "type": c.type,
                    "status": c.status,
                    "reason": c.reason,
                    "message": c.message,
                    "observedGeneration": route.metadata.generation or 0,
                    "lastTransitionTime": before.get("lastTransitionTime", now)
                    if unchanged and before is not None
                    else now,
                }
            )
        parents.append(
            {"parentRef": ref, "controllerName": CONTROLLER_NAME, "conditions": conditions}
        )
    return {**current, "parents": [*kept, *parents]}


def _key(ref: Any, kind: Any) -> str:
    if not isinstance(ref, Mapping):
        return f"?/{kind}"
    parts = (ref.get(k) for k in ("group", "kind", "namespace", "name", "sectionName", "port"))
    return "/".join("" if p is None else str(p) for p in parts) + f"#{kind}"


class RouteStatusReconciler:
    """Keeps every HTTPRoute's and GRPCRoute's status current with the stored routes and
    Services."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._astore = AsyncStore(store, workers=1)  # its own thread: see gossamer.store.aio
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._dirty.set()
        self._tasks = [
            asyncio.create_task(self._follow(), name="route-status-follow"),
            asyncio.create_task(self._reconcile_loop(), name="route-status-reconcile"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._astore.close()

    async def _follow(self) -> None:
        revision = await self._astore.revision()
        while True:
            try:
                async for event in self.store.watch(revision):
                    revision = event.revision
                    if event.object.get("kind") in _KINDS:
                        self._dirty.set()
                return  # the store was closed
            except Compacted:
                revision = await self._astore.revision()
                self._dirty.set()

    async def _reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(DEBOUNCE_SECONDS)
            self._dirty.clear()
            try:
                await self._astore.run(self.reconcile)
            except Exception:
                log.exception("updating HTTPRoute status failed; will try on the next change")

    def reconcile(self) -> int:
        """Write every route status that differs from what it should be; how many."""
        objects = [o for kind in _KINDS for o in self.store.list(kind)]
        mesh = MeshView.from_objects(objects, trust_domain="", trust_bundle="")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        written = 0
        for obj in objects:
            if obj["kind"] not in ROUTE_KINDS:
                continue
            route = validate(obj)
            if isinstance(route, GRPCRoute | TCPRoute):
                # Its status is that of the HTTPRoute it compiles to (same references).
                route = compile_route(route)
            assert isinstance(route, HTTPRoute)
            status = httproute_status(route, mesh, obj.get("status"), now)
            if status == (obj.get("status") or {}):
                continue
            meta = obj["metadata"]
            try:
                self.store.update_status(obj["kind"], meta["namespace"], meta["name"], status)
            except (NotFound, Conflict):
                continue  # changed or gone meanwhile: the next event brings it back here
            written += 1
        return written
