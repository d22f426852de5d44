"""The OpenAPI description of the REST API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from gossamer import __version__


def _op(
    summary: str,
    *,
    admin: bool = False,
    token: bool = False,
    params: list[str] | None = None,
    body: str | None = None,
    responses: dict[str, str] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            code: {"description": text} for code, text in (responses or {"200": "OK"}).items()
        },
    }
    # Every change needs an admin-scoped API token; some reads a token of any scope
    # (gossamer.controlplane.auth decides, from the method and the path).
    if admin:
        op["security"] = [{"adminToken": []}]
        op["responses"].setdefault("401", {"description": "API token missing, unknown or expired"})
        op["responses"].setdefault("403", {"description": "the API token's scope is read"})
    elif token:
        op["security"] = [{"adminToken": []}]
        op["responses"].setdefault("401", {"description": "API token missing, unknown or expired"})
    if params:
        op["parameters"] = [_PARAMS[p] for p in params]
    if body:
        op["requestBody"] = {"required": True, "content": {body: {"schema": {"type": "string"}}}}
    return op


_PARAMS: dict[str, dict[str, Any]] = {
    "kind": {
        "name": "kind",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "service, workload, httproute (singular, plural or short name)",
    },
    "namespace": {
        "name": "namespace",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    },
    "name": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
    "nsQuery": {
        "name": "namespace",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "omit for all namespaces",
    },
    "since": {
        "name": "since",
        "in": "query",
        "required": False,
        "schema": {"type": "integer"},
        "description": "store revision to watch after",
    },
    "resourceVersion": {
        "name": "resourceVersion",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "delete only if still at this version",
    },
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Gossamer control plane API", "version": __version__},
        "components": {
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API token: DATA_DIR/admin.token or one from "
                    "`gossamer api-token create`; changes need scope admin, reads need scope "
                    "read only where marked or when the control plane runs with --auth-reads",
                }
            },
        },
        "paths": {
            "/readyz": {"get": _op("Readiness of the control plane")},
            "/version": {"get": _op("Version and trust domain")},
            "/openapi.json": {"get": _op("This description of the API")},
            "/v1/apply": {
                "post": _op(
                    "Validate and store one or more objects (YAML or JSON, multi-document), "
                    "all or nothing",
                    admin=True,
                    body="application/yaml",
                    responses={
                        "200": "applied; one item per object with its action",
                        "409": "a resourceVersion was stale",
                        "422": "invalid; details name each field path",
                    },
                )
            },
            "/v1/resources/{kind}": {
                "get": _op(
                    "List objects of a kind",
                    params=["kind", "nsQuery"],
                    responses={"200": "a List", "404": "unknown kind"},
                )
            },
            "/v1/resources/{kind}/{namespace}/{name}": {
                "get": _op(
                    "Get one object",
                    params=["kind", "namespace", "name"],
                    responses={"200": "the object", "404": "not found"},
                ),
                "delete": _op(
                    "Delete one object",
                    admin=True,
                    params=["kind", "namespace", "name", "resourceVersion"],
                    responses={
                        "200": "the deleted object",
                        "404": "not found",
                        "409": "stale resourceVersion",
                    },
                ),
            },
            "/v1/watch": {
                "get": _op(
                    "Stream changes after a revision as newline-delimited JSON",
                    params=["since"],
                    responses={"200": "an endless stream of events"},
                )
            },
            "/v1/tokens": {
                "post": _op(
                    "Create a join token for a namespace and service account",
                    admin=True,
                    body="application/json",
                    responses={"200": "the token and its expiry", "422": "invalid request"},
                )
            },
            "/v1/api-tokens": {
                "get": _op("Named API tokens: name, scope, created, expiry, last use", token=True),
                "post": _op(
                    "Create a named API token (read or admin); the token is in this response only",
                    admin=True,
                    body="application/json",
                    responses={
                        "200": "the token",
                        "409": "a token with this name exists",
                        "422": "invalid name, scope or ttlSeconds",
                    },
                ),
            },
            "/v1/api-tokens/{name}": {
                "delete": _op(
                    "Revoke a named API token",
                    admin=True,
                    params=["name"],
                    responses={"200": "the revoked token", "404": "no such token"},
                )
            },
            "/v1/whoami": {"get": _op("The calling API token's name and scope", token=True)},
            "/v1/audit": {
                "get": _op(
                    "The audit log (query parameters kind, action, since, limit)", token=True
                )
            },
            "/v1/ca/rotation": {
                "get": _op("The CA rotation under way or last done"),
                "post": _op(
                    "Start a root or intermediate CA rotation",
                    admin=True,
                    body="application/json",
                    responses={
                        "202": "started; its progress",
                        "409": "a rotation is already under way",
                        "422": "invalid request",
                    },
                ),
            },
            "/v1/proxies": {"get": _op("Connected proxies and their snapshot versions")},
            "/v1/proxies/{namespace}/{name}/config": {
                "get": _op("The snapshot one proxy runs, as the control plane last sent it")
            },
            "/v1/ca": {"get": _op("CA certificates' expiry and root fingerprint")},
            "/v1/identity/bundle": {"get": _op("The trust bundle (PEM)")},
            # Golden metrics (docs/observability.md): query parameters namespace, name and
            # window (30s, 1m, ... 15m); rows as `gossamer stat -o json` prints them.
            "/v1/stats/services": {"get": _op("Golden metrics per service (inbound)")},
            "/v1/stats/edges": {"get": _op("Golden metrics per caller → callee (outbound)")},
            "/v1/stats/routes": {"get": _op("Golden metrics per route (outbound)")},
            "/v1/stats/series": {"get": _op("One group's golden metrics per step, for charts")},
            "/v1/stats/targets": {"get": _op("Scrape targets, their last scrape and error")},
            "/v1/controls/status": {
                "get": _op(
                    "TrafficControls as their source proxies enforce them: edges, limits in "
                    "force, calls in flight and waiting, refusals (from the last scrapes)"
                )
            },
            "/v1/findings": {
                "get": _op(
                    "Retry storms, cascades, noisy neighbours and metastable failures found "
                    "in the golden metrics, each with suggested TrafficControls (window, step)"
                )
            },
            "/v1/tap": {
                "get": _op(
                    "Live requests of a service's (or namespace's) proxies, as JSON lines "
                    "(namespace, name, method, path, direction, max, duration)"
                )
            },
            "/metrics": {"get": _op("The control plane's own metrics (Prometheus text)")},
        },
    }
