"""The web dashboard: static files from the package, served by the control plane's API.

Plain HTML, CSS and JavaScript with SVG charts, no build step and nothing fetched from
elsewhere: the page reads the same REST API the CLI does (`/v1/stats/*`,
`/v1/resources/*`, `/v1/proxies`, `/v1/ca`, `/v1/controls/status`, `/v1/findings`; with
an admin token, `POST /v1/apply` and DELETE). It reads without a token unless the control
plane runs with `--auth-reads`; given an API token (read, or admin to offer changes) it
keeps it in the tab's session storage and sends it as a bearer token (never a cookie,
so other sites cannot make the browser use it).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final

from aiohttp import web

ASSETS: Final = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "index.html": "text/html",
}
# The page loads only its own files and talks only to its own origin.
_HEADERS: Final = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@cache
def asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


async def _index(request: web.Request) -> web.Response:
    return web.Response(body=asset("index.html"), content_type="text/html", headers=_HEADERS)


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text=f"no dashboard file {name!r}\n")
    return web.Response(body=asset(name), content_type=content_type, headers=_HEADERS)


def dashboard_routes() -> list[web.RouteDef]:
    return [web.get("/", _index), web.get("/dashboard/{name}", _asset)]
