"""Named API tokens with a scope, kept as SHA-256 digests in DATA_DIR/api-tokens.json.

A token is a bearer secret shown once, when it is created; the file holds only its
digest, so reading the file (mode 0600, replaced whole on every change) does not give
anyone a token. `DATA_DIR/admin.token` stays what it was, a full admin token, listed
here as "bootstrap-admin"; it is changed by replacing that file, not through the API.
Tokens are named in logs and in the audit log, never shown. See
docs/decisions/0024-control-plane-access-and-discovery-scope.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, get_args

from gossamer.controlplane.replicas import NAMESPACE as _NAMESPACE
from gossamer.controlplane.replicas import counter_record
from gossamer.errors import Conflict, FieldError, InvalidResource, NotFound, StoreError
from gossamer.resources import is_dns1123_label
from gossamer.store import Store

__all__ = [
    "BOOTSTRAP_ADMIN",
    "SCOPES",
    "ApiToken",
    "ApiTokenStore",
    "Scope",
]

Scope = Literal["read", "admin"]
SCOPES: Final[tuple[Scope, ...]] = get_args(Scope)
BOOTSTRAP_ADMIN: Final = "bootstrap-admin"
TOKEN_PREFIX: Final = "gst_"
MIN_TTL: Final = timedelta(minutes=1)
MAX_TTL: Final = timedelta(days=366)
# Last use is written to disk at most this often per token: a busy dashboard must not
# rewrite the file on every request.
LAST_USED_GRANULARITY: Final = timedelta(minutes=1)
# On a shared store (several replicas): how stale a replica's copy may be.
SHARED_REFRESH: Final = 1.0
SHARED_KIND: Final = "ApiTokens"
SHARED_NAME: Final = "api-tokens"
_SHARED_RETRIES: Final = 50


def _now() -> datetime:
    return datetime.now(UTC)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiToken:
    name: str
    scope: Scope
    sha256: str
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def public(self) -> dict[str, Any]:
        """What `gossamer api-token list` shows: everything but the digest."""

        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat(timespec="seconds")

        return {
            "name": self.name,
            "scope": self.scope,
            "createdAt": iso(self.created_at),
            "expiresAt": iso(self.expires_at),
            "lastUsedAt": iso(self.last_used_at),
            "bootstrap": self.name == BOOTSTRAP_ADMIN,
        }


class ApiTokenStore:
    """The named tokens; safe to call from any thread. The control plane is the only
    writer: the CLI creates and revokes tokens through the API.

    `shared`: the system store replicas share (decision 0051). The tokens then live in
    one record there instead of the file (the same document, in the record's status),
    written by compare-and-swap, and each replica reads it again when its copy is older
    than SHARED_REFRESH: a token created or revoked through one replica holds on every
    replica within that time."""

    def __init__(
        self,
        path: Path,
        bootstrap_secret: str,
        bootstrap_created: datetime,
        clock: Callable[[], datetime] = _now,
        *,
        shared: Store | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._shared = shared
        self._version = ""  # the shared record's resourceVersion as last read
        self._read_at = 0.0  # monotonic time of that read
        self._lock = threading.Lock()
        self._bootstrap = ApiToken(
            BOOTSTRAP_ADMIN, "admin", digest(bootstrap_secret), bootstrap_created
        )
        self._tokens: dict[str, ApiToken] = {}
        self._last_used: dict[str, datetime] = {}
        self._last_used_saved: dict[str, datetime] = {}  # as last written to the file
        self._load()

    # ---- reading and writing the file --------------------------------------------------

    def _load(self) -> None:
        if self._shared is not None:
            self._refresh(force=True)
            return
        if not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_bytes().decode("utf-8"))
            self._adopt(doc)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            # The file is replaced whole on every change, so this is damage, not a
            # write in progress: say so rather than start without the named tokens.
            why = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            raise StoreError(
                f"{self.path} is not a readable API token file ({why}): restore it from a "
                "backup, or move it aside to start with only the bootstrap admin token "
                "(DATA_DIR/admin.token; named tokens must then be created again)"
            ) from None

    def _refresh(self, *, force: bool = False) -> None:
        """Read the shared record again if this copy is older than SHARED_REFRESH."""
        assert self._shared is not None
        if not force and time.monotonic() - self._read_at < SHARED_REFRESH:
            return
        record = counter_record(self._shared, SHARED_KIND, SHARED_NAME)
        try:
            self._adopt(record.get("status") or {})
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise StoreError(
                f"the shared API token record is not readable ({err}): delete the "
                f"{SHARED_KIND} record to start again with only the bootstrap admin token"
            ) from None
        self._version = record["metadata"]["resourceVersion"]
        self._read_at = time.monotonic()

    def _adopt(self, doc: dict[str, Any]) -> None:
        """Take the tokens and last uses of a document (the file's, or the record's)."""
        tokens: dict[str, ApiToken] = {}
        last_used: dict[str, datetime] = {}
        for item in doc.get("tokens", []):
            token = ApiToken(
                name=_checked(item["name"], is_dns1123_label, "name"),
                scope=_checked(item["scope"], SCOPES.__contains__, "scope"),
                sha256=_checked(item["sha256"], _is_digest, "sha256"),
                created_at=_time(item["createdAt"]),
                expires_at=_parse(item.get("expiresAt")),
            )
            tokens[token.name] = token
        for name, when in doc.get("lastUsed", {}).items():
            last_used[name] = _time(when)
        self._tokens, self._last_used = tokens, last_used
        self._last_used_saved = dict(self._last_used)

    def _document(self) -> dict[str, Any]:
        return {
            "tokens": [
                {
                    "name": t.name,
                    "scope": t.scope,
                    "sha256": t.sha256,
                    "createdAt": t.created_at.isoformat(),
                    "expiresAt": None if t.expires_at is None else t.expires_at.isoformat(),
                }
                for t in self._tokens.values()
            ],
            "lastUsed": {name: when.isoformat() for name, when in self._last_used.items()},
        }

    def _save(self) -> None:
        """Write the tokens: to the shared record (Conflict if another replica wrote it
        since this one read it), or to the file."""
        doc = self._document()
        if self._shared is not None:
            record = self._shared.update_status(
                SHARED_KIND, _NAMESPACE, SHARED_NAME, doc, self._version or None
            )
            self._version = record["metadata"]["resourceVersion"]
            return
        # Written whole to a 0600 file and renamed over the old one: a reader (or a
        # crash) never sees half a file, and no other user can read it at any moment.
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)

    # ---- the operations ------------------------------------------------------------------

    def now(self) -> datetime:
        return self._clock()

    def list(self) -> list[ApiToken]:
        """Every token, the bootstrap admin first, then by name."""
        with self._lock:
            if self._shared is not None:
                self._refresh()
            tokens = [self._bootstrap, *sorted(self._tokens.values(), key=lambda t: t.name)]
            return [replace(t, last_used_at=self._last_used.get(t.name)) for t in tokens]

    def create(self, name: str, scope: str, ttl: timedelta | None = None) -> tuple[str, ApiToken]:
        """A new token NAME: (its secret, shown once; its record). InvalidResource for a
        bad name, scope or ttl; Conflict if NAME exists."""
        errors = []
        if not is_dns1123_label(name):
            errors.append(
                FieldError("name", "must be a DNS-1123 label (lowercase letters, digits, '-')")
            )
        elif name == BOOTSTRAP_ADMIN:
            errors.append(FieldError("name", f"{BOOTSTRAP_ADMIN} is DATA_DIR/admin.token"))
        if scope not in SCOPES:
            errors.append(FieldError("scope", 'must be "read" or "admin"'))
        if ttl is not None and not MIN_TTL <= ttl <= MAX_TTL:
            errors.append(FieldError("ttlSeconds", "must be from 60 seconds to 366 days"))
        if errors:
            raise InvalidResource(errors, subject=f"api token {name}")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        token = ApiToken(
            name,
            "admin" if scope == "admin" else "read",
            digest(secret),
            now,
            None if ttl is None else now + ttl,
        )

        def add() -> None:
            if name in self._tokens:
                raise Conflict(
                    f"api token {name} already exists; revoke it first or choose another name"
                )
            self._tokens[name] = token
            self._last_used.pop(name, None)
            self._last_used_saved.pop(name, None)

        with self._lock:
            self._change(add)
        return secret, token

    def revoke(self, name: str) -> ApiToken:
        """Forget NAME at once: its next request is refused. NotFound if there is none."""
        if name == BOOTSTRAP_ADMIN:
            raise InvalidResource(
                [
                    FieldError(
                        "name",
                        f"{BOOTSTRAP_ADMIN} is DATA_DIR/admin.token: replace that file and "
                        "restart the control plane to change it",
                    )
                ],
                subject=f"api token {name}",
            )
        removed: list[ApiToken] = []

        def remove() -> None:
            token = self._tokens.pop(name, None)
            if token is None:
                raise NotFound("api token", name)
            self._last_used.pop(name, None)
            self._last_used_saved.pop(name, None)
            removed[:] = [token]

        with self._lock:
            self._change(remove)
        return removed[0]

    def _change(self, change: Callable[[], None]) -> None:
        """Make `change` to the tokens and write them; on a shared store, from a fresh
        read, again if another replica wrote in between."""
        for _ in range(_SHARED_RETRIES):
            if self._shared is not None:
                self._refresh(force=True)
            change()
            try:
                self._save()
                return
            except Conflict:
                if self._shared is None:
                    raise
        raise StoreError("the shared API tokens changed under every try: try again")

    def authenticate(self, secret: str) -> ApiToken | None:
        """The token whose secret this is (expired or not), or None; notes its use."""
        given = digest(secret)
        with self._lock:
            if self._shared is not None:
                self._refresh()
            found = None
            # Compared in constant time with every token, so timing says nothing.
            for token in (self._bootstrap, *self._tokens.values()):
                if hmac.compare_digest(token.sha256, given):
                    found = token
            if found is None:
                return None
            now = self._clock()
            self._last_used[found.name] = now
            saved = self._last_used_saved.get(found.name)
            if saved is None or now - saved >= LAST_USED_GRANULARITY:
                # Best effort on a shared store: another replica's write wins, and
                # this use is written with the next one.
                with contextlib.suppress(Conflict):
                    self._save()
                self._last_used_saved = dict(self._last_used)
            return replace(found, last_used_at=now)


def _parse(text: str | None) -> datetime | None:
    return None if text is None else _time(text)


def _time(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"a time must be an ISO 8601 string, not {text!r}")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return moment


def _checked(value: Any, check: Callable[[Any], bool], field: str) -> Any:
    if not isinstance(value, str) or not check(value):
        raise ValueError(f"a token's {field} is {value!r}")
    return value


def _is_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
