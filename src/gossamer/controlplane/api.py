"""The REST API: apply/get/list/delete/watch over the store, tokens, status.

Validation happens here, once, at the door: a bad object is rejected whole with the
field path that is wrong, and an apply of several documents is all-or-nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from gossamer import __version__
from gossamer.controlplane.auth import ACCESS, access_middleware, require_admin
from gossamer.controlplane.findings_api import FindingsApi
from gossamer.controlplane.openapi import openapi_document
from gossamer.controlplane.tap_api import TapApi
from gossamer.controlplane.telemetry_api import TelemetryApi
from gossamer.controlplane.tokens_api import ApiTokensApi
from gossamer.dashboard import dashboard_routes
from gossamer.errors import (
    Conflict,
    FieldError,
    GossamerError,
    IdentityError,
    InvalidResource,
    NotFound,
    StoreError,
    Unauthorized,
)
from gossamer.identity.bundle import certificate_fingerprint
from gossamer.resources import (
    decode_text,
    is_dns1123_label,
    is_dns1123_subdomain,
    load_json,
    parse_documents,
    resolve_kind,
    to_dict,
    validate,
)
from gossamer.resources.trafficcontrol import TrafficControl
from gossamer.store import Compacted
from gossamer.translate.controls import asks_about_workloads, refuses_a_whole_side

if TYPE_CHECKING:
    from gossamer.controlplane.server import ControlPlane
    from gossamer.store.aio import AsyncStore

log = logging.getLogger("gossamer.controlplane.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(code: int, reason: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": code, "reason": reason, "message": message, **extra}}
    return web.json_response(body, status=code)


def invalid_response(errors: list[InvalidResource]) -> web.Response:
    details = [
        {"object": err.subject, "path": fe.path, "reason": fe.reason}
        for err in errors
        for fe in err.errors
    ]
    message = "; ".join(str(e) for e in errors)
    return error_response(422, "Invalid", message, details=details)


_BODY = "request body"  # how errors name what the client sent


class BadRequest(GossamerError):
    """A request the server cannot read (its body is not UTF-8, not JSON, too deep): 400."""


async def read_json(request: web.Request) -> Any:
    """The request's body as JSON, read without a traceback whatever it holds.

    Its nesting is bounded before `json` (which recurses) sees it; raises BadRequest (400,
    one short message such as "request body: nested deeper than 64 levels at line 1,
    column 65") when it is not UTF-8, nests too deeply, or is not JSON. Every handler
    that takes a JSON body reads it with this rather than `request.json()`."""
    try:
        return load_json(decode_text(await request.read(), _BODY), _BODY)
    except InvalidResource as err:
        raise BadRequest(str(err)) from None


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Typed errors become JSON responses with a status a client can act on."""
    try:
        return await handler(request)
    except BadRequest as err:
        return error_response(400, "BadRequest", str(err))
    except UnicodeDecodeError as err:
        # A handler that decoded a body itself (`request.text()`, `request.json()`).
        log.info("refused %s %s: body not UTF-8", request.method, request.path)
        return error_response(
            400, "BadRequest", f"{_BODY}: not UTF-8 at byte {err.start} ({err.reason})"
        )
    except RecursionError:
        # `request.json()` on deeply nested JSON: a short answer, not a long traceback.
        log.info("refused %s %s: RecursionError reading the body", request.method, request.path)
        return error_response(400, "BadRequest", f"{_BODY}: nested too deeply")
    except InvalidResource as err:
        return invalid_response([err])
    except NotFound as err:
        return error_response(404, "NotFound", str(err))
    except Conflict as err:
        return error_response(409, "Conflict", str(err))
    except Unauthorized as err:
        return error_response(401, "Unauthorized", str(err))
    except IdentityError as err:
        return error_response(403, "Forbidden", str(err))
    except StoreError as err:
        # The store is unreachable or stalled: the caller may try again later.
        log.warning("%s %s: %s", request.method, request.path, err)
        return error_response(503, "StoreUnavailable", str(err))
    except GossamerError as err:
        log.exception("request failed: %s", err)
        return error_response(500, "InternalError", str(err))


def _kind(request: web.Request) -> str:
    try:
        return resolve_kind(request.match_info["kind"]).kind
    except (KeyError, InvalidResource) as err:
        raise NotFound("kind", request.match_info["kind"]) from err


async def _read_objects(request: web.Request) -> list[dict[str, Any]]:
    # Read as UTF-8 whatever charset the request names, as Kubernetes reads YAML.
    text = decode_text(await request.read(), _BODY)
    docs = parse_documents(text, source=_BODY)
    if not docs:
        raise InvalidResource([FieldError("", "no objects in the request body")])
    problems: list[InvalidResource] = []
    objects = []
    for i, doc in enumerate(docs):
        try:
            objects.append(to_dict(validate(doc)))
        except InvalidResource as err:
            if len(docs) > 1 and not err.subject:
                err = InvalidResource(err.errors, subject=f"document {i + 1}")
            problems.append(err)
    if problems:
        raise _Invalid(problems)
    keys = [(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        kind, ns, name = sorted(dupes)[0]
        raise InvalidResource(
            [FieldError("metadata.name", f"{kind} {ns}/{name} appears more than once")]
        )
    return objects


async def _refusing_everything(
    objects: list[dict[str, Any]], astore: AsyncStore
) -> list[InvalidResource]:
    """TrafficControls that would refuse every call of the mesh on one side (no allow
    list, or one that lets none of the callers it governs through, among the Workloads
    the apply would leave): refused unless the apply says force (`gossamer apply
    --force`). The Workloads are listed only when a control needs them."""
    controls = [
        (obj, cast(TrafficControl, validate(obj)))
        for obj in objects
        if obj["kind"] == "TrafficControl"
    ]
    workloads = None
    if any(asks_about_workloads(control) for _, control in controls):
        workloads = _workloads_after(await astore.list("Workload"), objects)
    problems = []
    for obj, control in controls:
        why = refuses_a_whole_side(control, workloads)
        if why is not None:
            subject = f"TrafficControl {obj['metadata']['namespace']}/{obj['metadata']['name']}"
            problems.append(
                InvalidResource(
                    [FieldError("spec.quarantine", f"{why}; apply it with --force if you mean it")],
                    subject=subject,
                )
            )
    return problems


def _workloads_after(
    stored: list[dict[str, Any]], objects: list[dict[str, Any]]
) -> list[tuple[str, Mapping[str, str]]]:
    """(namespace, labels) of every Workload the mesh would have after applying
    `objects` over `stored`: the groups an allow list is checked against."""
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in (*stored, *objects):
        if obj["kind"] == "Workload":
            meta = obj["metadata"]
            by_key[(meta["namespace"], meta["name"])] = obj
    return [(ns, dict(obj["metadata"].get("labels") or {})) for (ns, _), obj in by_key.items()]


class _Invalid(GossamerError):
    def __init__(self, problems: list[InvalidResource]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class Api:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def app(self) -> web.Application:
        # Errors outside, access inside: a refused call is answered before its handler runs.
        app = web.Application(
            middlewares=[errors_middleware, access_middleware], client_max_size=8 * 1024 * 1024
        )
        app[ACCESS] = self.cp.access
        app.add_routes(
            [
                web.get("/readyz", self.readyz),
                web.get("/version", self.version),
                web.get("/openapi.json", self.openapi),
                web.post("/v1/apply", self.apply),
                web.get("/v1/resources/{kind}", self.list),
                web.get("/v1/resources/{kind}/{namespace}/{name}", self.get),
                web.delete("/v1/resources/{kind}/{namespace}/{name}", self.delete),
                web.get("/v1/watch", self.watch),
                web.post("/v1/tokens", self.create_token),
                web.get("/v1/proxies", self.proxies),
                web.get("/v1/ca", self.ca),
                web.get("/v1/identity/bundle", self.bundle),
                web.get("/v1/audit", self.audit),
            ]
        )
        app.add_routes(TelemetryApi(self.cp).routes())
        app.add_routes(FindingsApi(self.cp).routes())
        app.add_routes(TapApi(self.cp).routes())
        app.add_routes(self.cp.rotation.routes())
        app.add_routes(ApiTokensApi(self.cp).routes())
        app.add_routes(dashboard_routes())
        return app

    async def readyz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"version": __version__, "trustDomain": self.cp.config.trust_domain}
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def apply(self, request: web.Request) -> web.Response:
        actor = require_admin(request)
        try:
            objects = await _read_objects(request)
        except _Invalid as err:
            return invalid_response(err.problems)
        if request.query.get("force") != "true":
            sweeping = await _refusing_everything(objects, self.cp.astore)
            if sweeping:
                return invalid_response(sweeping)
        results = await self.cp.astore.apply(objects)
        items = [
            {
                "kind": r.object["kind"],
                "namespace": r.object["metadata"]["namespace"],
                "name": r.object["metadata"]["name"],
                "action": r.action,
                "resourceVersion": r.object["metadata"]["resourceVersion"],
            }
            for r in results
        ]
        for item in items:
            log.info(
                "apply %s %s/%s: %s", item["kind"], item["namespace"], item["name"], item["action"]
            )
            if item["action"] != "unchanged":
                await self.cp.astore.run(
                    self.cp.audit.record,
                    actor,
                    f"apply.{item['action']}",
                    kind=item["kind"],
                    namespace=item["namespace"],
                    name=item["name"],
                    detail={"resourceVersion": item["resourceVersion"]},
                )
        return web.json_response({"items": items})

    async def list(self, request: web.Request) -> web.Response:
        kind = _kind(request)
        namespace = request.query.get("namespace") or None
        items = await self.cp.astore.list(kind, namespace)
        return web.json_response({"apiVersion": "v1", "kind": "List", "items": items})

    async def get(self, request: web.Request) -> web.Response:
        kind = _kind(request)
        obj = await self.cp.astore.get(
            kind, request.match_info["namespace"], request.match_info["name"]
        )
        return web.json_response(obj)

    async def delete(self, request: web.Request) -> web.Response:
        actor = require_admin(request)
        kind = _kind(request)
        obj = await self.cp.astore.delete(
            kind,
            request.match_info["namespace"],
            request.match_info["name"],
            request.query.get("resourceVersion") or None,
        )
        log.info("delete %s %s/%s", kind, obj["metadata"]["namespace"], obj["metadata"]["name"])
        await self.cp.astore.run(
            self.cp.audit.record,
            actor,
            "delete",
            kind=kind,
            namespace=obj["metadata"]["namespace"],
            name=obj["metadata"]["name"],
            detail={"resourceVersion": obj["metadata"].get("resourceVersion")},
        )
        return web.json_response(obj)

    async def watch(self, request: web.Request) -> web.StreamResponse:
        """Newline-delimited JSON events after `since` (default: now), until the client goes."""
        try:
            given = request.query.get("since")
            since = int(given) if given is not None else await self.cp.astore.revision()
        except ValueError:
            return error_response(400, "BadRequest", "since: must be an integer revision")
        kind = None
        if "kind" in request.query:
            kind = resolve_kind(request.query["kind"]).kind
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            async for event in self.cp.store.watch(since):
                if kind is not None and event.object["kind"] != kind:
                    continue
                line: dict[str, Any] = {
                    "type": event.type,
                    "revision": event.revision,
                    "object": event.object,
                }
                await response.write(json.dumps(line).encode() + b"\n")
        except Compacted as err:
            line = {"type": "ERROR", "message": f"{err}; list again and watch from there"}
            await response.write(json.dumps(line).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def create_token(self, request: web.Request) -> web.Response:
        actor = require_admin(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            return error_response(400, "BadRequest", "body must be a JSON object")
        errors = []
        namespace = body.get("namespace", "default")
        sa = body.get("serviceAccount", "default")
        ttl = body.get("ttlSeconds", 3600)
        uses = body.get("uses", 1)
        if not isinstance(namespace, str) or not is_dns1123_label(namespace):
            errors.append(FieldError("namespace", "must be a valid DNS-1123 label"))
        if not isinstance(sa, str) or not is_dns1123_subdomain(sa):
            errors.append(FieldError("serviceAccount", "must be a valid DNS-1123 subdomain"))
        if not isinstance(ttl, int) or not 60 <= ttl <= 30 * 86400:
            errors.append(FieldError("ttlSeconds", "must be an integer from 60 to 2592000"))
        if type(uses) is not int or not 1 <= uses <= 1000:
            errors.append(FieldError("uses", "must be an integer from 1 to 1000"))
        if errors:
            raise InvalidResource(errors, subject="token request")
        token = self.cp.tokens.create(namespace, sa, timedelta(seconds=ttl), max_uses=uses)
        claims = self.cp.tokens.verify(token)
        await self.cp.astore.run(
            self.cp.audit.record,
            actor,
            "token.create",
            kind="JoinToken",
            namespace=namespace,
            name=claims.token_id,
            detail={
                "identity": str(claims.identity),
                "expiresAt": claims.expires_at.isoformat(),
                "uses": uses,
            },
        )
        log.info(
            "join token %s created for %s (expires %s)",
            claims.token_id,
            claims.identity,
            claims.expires_at.isoformat(),
        )
        return web.json_response(
            {
                "token": token,
                "identity": str(claims.identity),
                "expiresAt": claims.expires_at.isoformat(),
                "uses": uses,
            }
        )

    async def audit(self, request: web.Request) -> web.Response:
        """The audit log, oldest first: `kind`, `action` (a prefix such as "apply"),
        `since` (ISO 8601), `limit` (default 1000). Needs an API token, read or admin."""
        query = request.query
        try:
            since = datetime.fromisoformat(query["since"]) if "since" in query else None
            limit = int(query.get("limit", "1000"))
        except ValueError:
            return error_response(
                400, "BadRequest", "since: must be an ISO 8601 time; limit: an integer"
            )
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        items = await self.cp.astore.run(
            self.cp.audit.query,
            kind=query.get("kind") or None,
            action=query.get("action") or None,
            since=since,
            limit=max(1, min(limit, 100_000)),
        )
        return web.json_response({"items": items})

    async def proxies(self, request: web.Request) -> web.Response:
        discovery = self.cp.discovery
        return web.json_response(
            {
                "items": discovery.proxy_status(),
                # Joins, registrations and streams refused lately (a proxy that cannot
                # join retries): `gossamer check` reports them.
                "refused": discovery.recent_refusals(),
            }
        )

    async def ca(self, request: web.Request) -> web.Response:
        ca = self.cp.ca
        return web.json_response(
            {
                "trustDomain": ca.trust_domain,
                "rootExpiresAt": ca.root_expires_at.isoformat(),
                "intermediateExpiresAt": ca.intermediate_expires_at.isoformat(),
                "rootFingerprint": ca.root_fingerprint(),
                # CA rotation (gossamer.controlplane.rotation): every trusted root, the
                # intermediate leaves are issued from now, and the last rotation.
                "roots": [
                    {
                        "fingerprint": certificate_fingerprint(root),
                        "subject": root.subject.rfc4514_string(),
                        "expiresAt": root.not_valid_after_utc.isoformat(),
                    }
                    for root in ca.roots
                ],
                "issuerFingerprint": ca.issuer_fingerprint(),
                "rotation": self.cp.rotation.progress(),
            }
        )

    async def bundle(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.cp.ca.trust_bundle_pem(), content_type="application/x-pem-file"
        )
