"""The admin token: a bearer secret in DATA_DIR/admin.token, required on every mutating call."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from aiohttp import web


def load_or_create_admin_token(data_dir: Path) -> str:
    path = data_dir / "admin.token"
    if path.exists():
        return path.read_text().strip()
    token = "gsa_" + secrets.token_urlsafe(32)
    # Created with 0600 from the first byte: no window where another user can read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def require_admin(request: web.Request, admin_token: str) -> None:
    """Raise 401 unless the request carries the admin token. Never logs the token."""
    given = bearer_token(request)
    if given is None or not hmac.compare_digest(given.encode(), admin_token.encode()):
        raise web.HTTPUnauthorized(
            text=_error_json(
                401,
                "Unauthorized",
                "this call needs the admin token: pass --token-file DATA_DIR/admin.token "
                "or set GOSSAMER_TOKEN",
            ),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="gossamer"'},
        )


def _error_json(code: int, reason: str, message: str) -> str:
    import json

    return json.dumps({"error": {"code": code, "reason": reason, "message": message}})
