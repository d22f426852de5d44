"""`GET /v1/findings`: the findings rules over the golden metrics the control plane keeps.

A read like `/v1/stats/*` (no token unless `--auth-reads`). Query: `window` (default
5m, at most what is kept) and `step` (default 15s): the rules judge each step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

from gossamer.controlplane.findings import detect, frames_from, groups_from
from gossamer.controlplane.telemetry import BadWindow, parse_duration

if TYPE_CHECKING:
    from gossamer.controlplane.server import ControlPlane

DEFAULT_WINDOW: Final = "5m"
DEFAULT_STEP: Final = "15s"
MAX_STEPS: Final = 240


class FindingsApi:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/findings", self.findings)]

    async def findings(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            window = parse_duration(q.get("window") or DEFAULT_WINDOW)
            step = parse_duration(q.get("step") or DEFAULT_STEP, what="step", most=window)
        except BadWindow as err:
            return _bad_request(str(err))
        if window / step > MAX_STEPS:
            return _bad_request(f"step: at most {MAX_STEPS} steps per window; use a longer step")
        telemetry, store = self.cp.telemetry, self.cp.astore
        now = telemetry.clock()
        frames = frames_from(telemetry.histories.values(), now, window, step)
        groups = groups_from(await store.list("Service"), await store.list("Workload"))
        items = [f.to_json() for f in detect(frames, groups)]
        return web.json_response(
            {"windowSeconds": window, "stepSeconds": step, "at": now, "items": items}
        )


def _bad_request(message: str) -> web.Response:
    body = {"error": {"code": 400, "reason": "BadRequest", "message": message}}
    return web.json_response(body, status=400)
