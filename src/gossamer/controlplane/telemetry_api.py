"""REST endpoints for golden metrics: `/v1/stats/*`, and the control plane's `/metrics`.

Reads, like every GET on the API: no token needed unless the control plane runs with
`--auth-reads` (gossamer.controlplane.auth decides for every route).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from gossamer.controlplane.telemetry import (
    DEFAULT_WINDOW,
    MAX_WINDOW,
    BadWindow,
    parse_duration,
    targets_from,
)
from gossamer.telemetry.golden import Key

if TYPE_CHECKING:
    from gossamer.controlplane.server import ControlPlane

_STARTED_AT = time.time()
MAX_POINTS = 240
MAX_CONFIG_BYTES = 8 * 1024 * 1024  # a proxy's /config: its snapshot, so the mesh's size
CONFIG_TIMEOUT = 5.0


def _bad_request(message: str) -> web.Response:
    body = {"error": {"code": 400, "reason": "BadRequest", "message": message}}
    return web.json_response(body, status=400)


def _window(request: web.Request, default: float = DEFAULT_WINDOW) -> float:
    raw = request.query.get("window")
    return default if not raw else parse_duration(raw)


class TelemetryApi:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.metrics),
            web.get("/v1/stats/services", self.services),
            web.get("/v1/stats/edges", self.edges),
            web.get("/v1/stats/routes", self.route_stats),
            web.get("/v1/stats/series", self.series),
            web.get("/v1/stats/targets", self.targets),
            web.get("/v1/controls/status", self.control_status),
            web.get("/v1/proxies/{namespace}/{name}/config", self.proxy_config),
        ]

    def _rows(self, request: web.Request, what: str) -> web.Response:
        try:
            window = _window(request)
        except BadWindow as err:
            return _bad_request(str(err))
        t = self.cp.telemetry
        namespace = request.query.get("namespace") or None
        name = request.query.get("name") or None
        if what == "services":
            items = t.services(window, namespace, name)
        elif what == "edges":
            items = t.edges(window, namespace, name)
        else:
            items = t.routes(window, namespace, name)
        body: dict[str, Any] = {"windowSeconds": window, "at": t.clock(), "items": items}
        return web.json_response(body)

    async def control_status(self, request: web.Request) -> web.Response:
        """TrafficControls as their proxies enforce them (Telemetry.control_status)."""
        t = self.cp.telemetry
        return web.json_response({"at": t.clock(), "items": t.control_status()})

    async def services(self, request: web.Request) -> web.Response:
        return self._rows(request, "services")

    async def edges(self, request: web.Request) -> web.Response:
        return self._rows(request, "edges")

    async def route_stats(self, request: web.Request) -> web.Response:
        return self._rows(request, "routes")

    async def series(self, request: web.Request) -> web.Response:
        """One group's golden metrics per `step` over `window` (default 15m in 15s steps)."""
        q = request.query
        try:
            window = _window(request, default=MAX_WINDOW)
            step = parse_duration(q.get("step", "15s"), what="step", most=window)
        except BadWindow as err:
            return _bad_request(str(err))
        if window / step > MAX_POINTS:
            return _bad_request(f"step: at most {MAX_POINTS} points per series; use a longer step")
        view = q.get("view", "service")
        ns, name = q.get("namespace", ""), q.get("name", "")
        key: Key
        if view == "service":
            key = (ns, name)
        elif view == "edge":
            key = (q.get("src_namespace", ""), q.get("src_name", ""), ns, name)
        elif view == "route":
            key = (ns, name, q.get("route_namespace", ""), q.get("route_name", ""))
        else:
            return _bad_request("view: must be service, edge or route")
        points = self.cp.telemetry.series(view, key, window, step)
        return web.json_response(
            {"view": view, "windowSeconds": window, "stepSeconds": step, "points": points}
        )

    async def proxy_config(self, request: web.Request) -> web.Response:
        """What one proxy runs (`gossamer proxy-config`): its admin `/config`, fetched
        the way the control plane scrapes its metrics, so the CLI needs no route to it."""
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        store = self.cp.astore
        workloads = await store.list("Workload", namespace)
        services = await store.list("Service", namespace)
        found = [t for t in targets_from(workloads, services) if t.workload == name]
        if not found:
            body = {
                "error": {
                    "code": 404,
                    "reason": "NotFound",
                    "message": f"no registered workload {namespace}/{name} with an admin "
                    f"port; `gossamer get workloads -n {namespace}` lists them",
                }
            }
            return web.json_response(body, status=404)
        url = f"http://{found[0].address}/config"
        try:
            timeout = aiohttp.ClientTimeout(total=CONFIG_TIMEOUT)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as resp,
            ):
                raw = await resp.content.read(MAX_CONFIG_BYTES + 1)
                if resp.status != 200 or len(raw) > MAX_CONFIG_BYTES:
                    raise ValueError(f"answered {resp.status} with {len(raw)} bytes")
                config = json.loads(raw)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            body = {
                "error": {
                    "code": 502,
                    "reason": "BadGateway",
                    "message": f"the proxy of {namespace}/{name} at {found[0].address} did "
                    f"not give its configuration: {err or type(err).__name__}",
                }
            }
            return web.json_response(body, status=502)
        return web.json_response(config)

    async def targets(self, request: web.Request) -> web.Response:
        t = self.cp.telemetry
        return web.json_response({"intervalSeconds": t.interval, "items": t.target_status()})

    async def metrics(self, request: web.Request) -> web.Response:
        text = self.cp.telemetry.render_metrics(
            {
                "gossamer_controlplane_connected_proxies": float(
                    len(self.cp.discovery.proxy_status())
                ),
                "process_start_time_seconds": round(_STARTED_AT, 3),
            }
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")
