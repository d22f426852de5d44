"""The mutating admission webhook: AdmissionReview v1 in, a JSON Patch out, made by
the same `inject` that `gossamer inject -f` runs.

A pod that cannot be injected (hostNetwork) is admitted unchanged with a warning,
not refused: refusing would stop a cluster's node agents from starting in an injected
namespace. `gossamer inject -f` fails on it instead, where a person reads the error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from gossamer.inject.inject import InjectConfig, InjectRefused, inject

log = logging.getLogger("gossamer.inject.webhook")

PATH = "/inject"
MAX_REVIEW_BYTES = 4 * 1024 * 1024  # the API server's own limit on an object is 3 MiB


def _pointer(parts: list[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def json_patch(before: Any, after: Any, at: list[str] | None = None) -> list[dict[str, Any]]:
    """RFC 6902 operations that turn `before` into `after`: objects compared key by key,
    anything else (lists included) replaced whole where it differs."""
    at = at or []
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        ops: list[dict[str, Any]] = []
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": _pointer([*at, str(key)])})
        for key, value in after.items():
            if key not in before:
                ops.append({"op": "add", "path": _pointer([*at, str(key)]), "value": value})
            else:
                ops += json_patch(before[key], value, [*at, str(key)])
        return ops
    if before == after and type(before) is type(after):
        return []
    return [{"op": "replace", "path": _pointer(at), "value": after}]


def review(body: Any, config: InjectConfig) -> dict[str, Any]:
    """The AdmissionReview response for a request: raises ValueError (naming the field)
    when `body` is not an AdmissionReview v1 request."""
    if not isinstance(body, Mapping) or body.get("apiVersion") != "admission.k8s.io/v1":
        raise ValueError("apiVersion: want admission.k8s.io/v1 (an AdmissionReview)")
    if body.get("kind") != "AdmissionReview":
        raise ValueError("kind: want AdmissionReview")
    request = body.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise ValueError("request.uid: required")
    obj = request.get("object")
    if not isinstance(obj, Mapping):
        raise ValueError("request.object: required (an object to inject)")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    try:
        injected, outcomes = inject(obj, config)
    except InjectRefused as err:
        response["warnings"] = [f"gossamer: not injected: {err}"]
    else:
        patch = json_patch(obj, injected)
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        for outcome in outcomes:
            log.info("%s %s: %s %s", outcome.kind, outcome.name, outcome.result, outcome.reason)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def application(config: InjectConfig) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            return web.json_response(review(body, config))
        except (ValueError, UnicodeDecodeError) as err:
            return web.json_response({"error": f"not an AdmissionReview: {err}"}, status=400)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app.add_routes([web.post(PATH, handle), web.get("/healthz", healthz)])
    return app


async def serve(
    listen: tuple[str, int],
    cert: Path,
    key: Path,
    config: InjectConfig,
    ready_file: Path | None = None,
) -> None:
    """Serve HTTPS until SIGINT or SIGTERM (the API server only calls webhooks over TLS)."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(cert, key)
    runner = web.AppRunner(application(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, listen[0], listen[1], ssl_context=tls)
    await site.start()
    host, port = runner.addresses[0][:2]
    log.info("injection webhook on https://%s:%d%s", host, port, PATH)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(f"https://{host}:{port}{PATH}\n")
        tmp.replace(ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
