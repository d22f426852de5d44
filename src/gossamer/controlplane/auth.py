"""Who may call the REST API: named bearer tokens with a scope, `read` or `admin`.

One middleware decides for every route, from the method and the route's path:

- public: readiness, version, the OpenAPI document, the trust bundle and the
  dashboard's own files (the page must load before the user can give it a token);
- GET/HEAD: open by default (the dashboard and `gossamer get` read without a token),
  or at least a `read` token when the control plane runs with `--auth-reads`; the
  audit log, the token list, `whoami` and tap always need a token;
- every other method changes the mesh and needs an `admin` token — a route added
  later is protected without anyone remembering to.

No token: 401. A `read` token on a change: 403. A token is never logged or recorded;
its name is, and is the "who" of the audit log. `DATA_DIR/admin.token` is the
"bootstrap-admin" token. See docs/decisions/0024-control-plane-access-and-discovery-scope.md.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from aiohttp import web

from gossamer.controlplane.tokens_store import ApiTokenStore, Scope
from gossamer.errors import StoreError
from gossamer.store.aio import AsyncStore

__all__ = [
    "ACCESS",
    "AccessPolicy",
    "Caller",
    "access_middleware",
    "bearer_token",
    "load_or_create_admin_token",
    "require_admin",
    "require_scope",
]

log = logging.getLogger("gossamer.controlplane.auth")

# Route paths as aiohttp and the OpenAPI document spell them.
PUBLIC_PATHS: Final = frozenset(
    {"/readyz", "/version", "/openapi.json", "/v1/identity/bundle", "/", "/dashboard/{name}"}
)
# Reads that need a token even when reads are open: who did what, which tokens exist,
# and live requests (tap shows paths, whose query strings may hold secrets).
TOKEN_READS: Final = frozenset({"/v1/audit", "/v1/api-tokens", "/v1/whoami", "/v1/tap"})
READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

_RANK: Final[dict[Scope, int]] = {"read": 1, "admin": 2}

_MAKE_ONE = "`gossamer api-token create NAME --scope {scope}` makes a named one"


MIN_ADMIN_TOKEN_LENGTH: Final = 16


def load_or_create_admin_token(data_dir: Path) -> str:
    """DATA_DIR/admin.token, created (0600, a random token) when there is none.

    An existing file must hold a token: an empty one would start a control plane that
    nobody can administer, so it is refused (StoreError), as is one shorter than 16
    characters or not UTF-8 text. Deleting the file has a new token made at the next
    start; writing a token into it sets one."""
    path = data_dir / "admin.token"
    if path.exists():
        try:
            token = path.read_bytes().decode("utf-8").strip()
        except UnicodeDecodeError:
            raise _bad_admin_token(path, "is not UTF-8 text") from None
        if not token:
            raise _bad_admin_token(path, "is empty")
        if len(token) < MIN_ADMIN_TOKEN_LENGTH:
            raise _bad_admin_token(
                path, f"holds a token of {len(token)} characters (at least 16 are needed)"
            )
        return token
    token = "gsa_" + secrets.token_urlsafe(32)
    # Created with 0600 from the first byte: no window where another user can read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _bad_admin_token(path: Path, why: str) -> StoreError:
    return StoreError(
        f"{path} {why}, so nobody could administer this control plane: delete it to have "
        "a new admin token made at the next start, or write a token of at least 16 "
        "characters into it"
    )


def admin_token_created(data_dir: Path) -> datetime:
    return datetime.fromtimestamp((data_dir / "admin.token").stat().st_mtime, UTC)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@dataclass(frozen=True)
class Caller:
    """Who made a request: the token's name (the audit log's actor) and its scope."""

    name: str
    scope: Scope


class AccessPolicy:
    """`off_loop`: where checking a token runs when it may read the store (tokens shared
    between replicas are read again every second); None: the tokens are in memory."""

    def __init__(
        self,
        tokens: ApiTokenStore,
        *,
        auth_reads: bool = False,
        off_loop: AsyncStore | None = None,
    ) -> None:
        self.tokens = tokens
        self.auth_reads = auth_reads
        self.off_loop = off_loop

    def required_scope(self, method: str, path: str) -> Scope | None:
        """The least scope a call needs; None: no token needed."""
        if method.upper() not in READ_METHODS:
            return "admin"
        if path in PUBLIC_PATHS:
            return None
        if path in TOKEN_READS or self.auth_reads:
            return "read"
        return None

    def authenticate(self, request: web.Request, needed: Scope) -> Caller:
        """The caller, or 401 with what to do."""
        secret = bearer_token(request)
        if secret is None:
            raise _unauthorized(_missing(needed))
        token = self.tokens.authenticate(secret)
        if token is None:
            raise _unauthorized(
                "the API token given is not known (revoked, mistyped, or from another "
                "control plane): check --token-file or GOSSAMER_TOKEN; "
                + _MAKE_ONE.format(scope=needed)
            )
        if token.expires_at is not None and token.expired(self.tokens.now()):
            raise _unauthorized(
                f"API token {token.name} expired at "
                f"{token.expires_at.isoformat(timespec='seconds')}: "
                + _MAKE_ONE.format(scope=needed)
            )
        return Caller(token.name, token.scope)


def _missing(needed: Scope) -> str:
    if needed == "admin":
        return (
            "this call changes the mesh and needs an admin token: pass --token-file "
            "DATA_DIR/admin.token or set GOSSAMER_TOKEN; " + _MAKE_ONE.format(scope="admin")
        )
    return (
        "this call needs an API token (scope read or admin): pass --token-file or set "
        "GOSSAMER_TOKEN; " + _MAKE_ONE.format(scope="read")
    )


ACCESS: Final = web.AppKey("gossamer.access", AccessPolicy)


def require_scope(request: web.Request, scope: Scope) -> str:
    """The name of a caller with at least `scope` (the audit log's actor), or 401/403.

    The access middleware has usually checked already; handlers that record who did
    something call this (or `require_admin`) for the name, and as a second lock."""
    # Checked again rather than passed on from the middleware: a hash and a compare,
    # and no per-request state to keep.
    caller = request.app[ACCESS].authenticate(request, scope)
    if _RANK[caller.scope] < _RANK[scope]:
        log.info(
            "refused %s %s to API token %s: scope %s, needs %s",
            request.method,
            request.path,
            caller.name,
            caller.scope,
            scope,
        )
        raise web.HTTPForbidden(
            text=_error_json(
                403,
                "Forbidden",
                f"API token {caller.name} has scope {caller.scope}; this call needs scope "
                f"{scope}: use an admin token (DATA_DIR/admin.token) or "
                + _MAKE_ONE.format(scope=scope),
            ),
            content_type="application/json",
        )
    return caller.name


def require_admin(request: web.Request) -> str:
    """The name of the admin-scoped caller, or 401/403. Never logs the token."""
    return require_scope(request, "admin")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place that decides what a call needs (see the module docstring)."""
    resource = request.match_info.route.resource
    if resource is not None:  # no route: let the router answer 404/405
        policy = request.app[ACCESS]
        needed = policy.required_scope(request.method, resource.canonical)
        if needed is not None and policy.off_loop is not None:
            await policy.off_loop.run(require_scope, request, needed)
        elif needed is not None:
            require_scope(request, needed)
    return await handler(request)


def _unauthorized(message: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text=_error_json(401, "Unauthorized", message),
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="gossamer"'},
    )


def _error_json(code: int, reason: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "reason": reason, "message": message}})
