"""`GET /v1/tap`: live requests, merged from the tap streams of the proxies asked for.

The control plane opens `/tap` on the admin listener of each proxy of the target (the
Workloads a Service selects, or every proxy of a namespace) and writes what they send
as one stream of JSON lines:

- `{"type": "error", "workload": ..., "message": ...}` for a proxy it cannot tap;
- `{"type": "started", "workloads": [...]}` once every proxy has answered (or failed);
- `{"type": "request", ...}` per request (see gossamer.proxy.observe.hooks.request_event),
  until the client goes, `max` requests have been sent, or `duration` has passed.

A target that does not exist, or has no proxy to tap, is a 404 that says which.
Reading, like every GET: open unless the control plane runs with `--auth-reads`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import web

from gossamer.controlplane.telemetry import BadWindow, Target, parse_duration, targets_from

if TYPE_CHECKING:
    from gossamer.controlplane.server import ControlPlane

log = logging.getLogger("gossamer.controlplane")

CONNECT_TIMEOUT: Final = 5.0
MAX_DURATION: Final = 3600.0
# How often a quiet stream checks that its client is still there.
CLIENT_CHECK: Final = 1.0


def _error(code: int, reason: str, message: str) -> web.Response:
    body = {"error": {"code": code, "reason": reason, "message": message}}
    return web.json_response(body, status=code)


class TapApi:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/tap", self.tap)]

    async def tap_targets(self, namespace: str, name: str | None) -> list[Target] | str:
        """The proxies to tap, or why there are none.

        `name` is a Service, or else a Workload: one that no Service selects (a load
        generator, a client) is a node of the topology under its workload name, as its
        proxy names itself in `gossamer-src-service`, and is tapped by that name.
        """
        store = self.cp.astore
        services = await store.list("Service", namespace)
        targets = targets_from(await store.list("Workload", namespace), services)
        if name is not None and not any(s["metadata"]["name"] == name for s in services):
            alone = [t for t in targets if t.workload == name]
            if alone:
                return alone
            return (
                f"service {namespace}/{name} not found, nor a workload of that name; "
                f"`gossamer get services -n {namespace}` and `gossamer get workloads -n "
                f"{namespace}` list them"
            )
        if name is not None:
            targets = [t for t in targets if name in t.services]
            if not targets:
                return (
                    f"service {namespace}/{name} has no proxy to tap: no registered Workload "
                    "with an adminPort is selected by it"
                )
        elif not targets:
            return f"no proxy to tap in namespace {namespace}"
        return targets

    async def tap(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        namespace = q.get("namespace") or "default"
        name = q.get("name") or None
        try:
            limit = int(q.get("max", "0"))
            if limit < 0:
                raise ValueError
        except ValueError:
            return _error(
                400, "BadRequest", "max: must be a whole number of requests (0: no limit)"
            )
        duration = None
        if q.get("duration"):
            try:
                duration = parse_duration(q["duration"], what="duration", most=MAX_DURATION)
            except BadWindow as err:
                return _error(400, "BadRequest", str(err))
        direction = q.get("direction") or None
        if direction not in (None, "inbound", "outbound"):
            return _error(400, "BadRequest", "direction: must be inbound or outbound")
        path = q.get("path") or None
        if path is not None and not path.startswith("/"):
            return _error(400, "BadRequest", f"path: must start with /, not {path!r}")
        found = await self.tap_targets(namespace, name)
        if isinstance(found, str):
            return _error(404, "NotFound", found)
        proxy_query = {
            k: v
            for k, v in (("method", q.get("method")), ("path", path), ("direction", direction))
            if v
        }
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        merge = _Merge(found, proxy_query)
        try:
            async with asyncio.timeout(duration):
                await merge.run(request, response, limit)
        except (TimeoutError, ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            await merge.close()
        return response


class _Merge:
    """Tap streams from several proxies, written into one response as they come."""

    def __init__(self, targets: list[Target], query: dict[str, str]) -> None:
        self.targets = targets
        self.query = query
        self.lines: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10_000)
        self.started: asyncio.Queue[tuple[Target, str | None]] = asyncio.Queue()
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
            trust_env=False,
        )
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self, request: web.Request, response: web.StreamResponse, limit: int) -> None:
        self.tasks = [asyncio.create_task(self._follow(t)) for t in self.targets]
        tapping = []
        for _ in self.targets:
            target, problem = await self.started.get()
            if problem is None:
                tapping.append(target.workload)
            else:
                await _write(response, _error_line(target, problem))
        await _write(response, {"type": "started", "workloads": sorted(tapping)})
        if not tapping:
            return
        sent = 0
        while True:
            try:
                async with asyncio.timeout(CLIENT_CHECK):
                    line = await self.lines.get()
            except TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                if all(t.done() for t in self.tasks) and self.lines.empty():
                    return  # every proxy went away
                continue
            await response.write(line)
            if line.startswith(b'{"type":"request"'):
                sent += 1
                if limit and sent >= limit:
                    return

    async def _follow(self, target: Target) -> None:
        url = f"http://{target.address}/tap"
        announced = False
        try:
            async with self.session.get(url, params=self.query) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300].strip()
                    await self.started.put((target, f"the proxy answered {resp.status}: {text}"))
                    return
                async for raw in resp.content:
                    line = raw.strip()
                    if not line:
                        continue
                    if not announced:
                        announced = True  # the proxy's own "started" line
                        await self.started.put((target, None))
                        continue
                    with contextlib.suppress(asyncio.QueueFull):
                        self.lines.put_nowait(line + b"\n")
            message = f"the proxy at {target.address} ended its tap"
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            message = f"cannot tap the proxy at {target.address}: {err or type(err).__name__}"
        if not announced:
            await self.started.put((target, message))
            return
        log.info("tap of %s/%s ended: %s", target.namespace, target.workload, message)
        line = json.dumps(_error_line(target, message)).encode() + b"\n"
        with contextlib.suppress(asyncio.QueueFull):
            self.lines.put_nowait(line)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()


async def _write(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(json.dumps(data, separators=(",", ":")).encode() + b"\n")


def _error_line(target: Target, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "workload": target.workload,
        "namespace": target.namespace,
        "message": message,
    }
