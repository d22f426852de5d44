"""The audit log: who changed what and when, and every certificate and token issued.

Kept in its own SQLite file beside the store (`DATA_DIR/audit.db`, mode 0600), append
only: the store compacts its history, the audit log never does. A record never holds a
secret — a join token is named by its id, an API token by its name.

    actor   who: an API token's name ("bootstrap-admin" for DATA_DIR/admin.token, or
            one from `gossamer api-token create`), a SPIFFE ID, "join-token <id>"
    action  what: apply.created | apply.configured | delete | certificate.issue |
            token.create | token.use | ...
    kind, namespace, name   the object concerned (for a certificate: the identity)
    detail  JSON: resourceVersion, serial, notAfter, ...
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gossamer.controlplane.replicas import NAMESPACE, counter_record
from gossamer.errors import Conflict, StoreError
from gossamer.store import Store

__all__ = ["AuditLog"]

_SHARED_KIND = "AuditRecord"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    namespace TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE TABLE IF NOT EXISTS token_uses (
    token_id TEXT PRIMARY KEY,
    uses INTEGER NOT NULL
);
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _unusable(path: Path, why: str) -> StoreError:
    return StoreError(
        f"{path} is not a usable audit log ({why}): restore it from a backup, or move it "
        "aside (with any -wal and -shm files beside it) to start a new, empty audit log"
    )


class AuditLog:
    """Append-only records in SQLite; safe to call from any thread."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], datetime] = _now,
        *,
        expect_existing: bool = False,
        shared: Store | None = None,
    ) -> None:
        """Open (or create) the log at `path`. `expect_existing`: the data dir shows an
        earlier start, so an existing empty file is lost records (and lost join-token use
        counts, which would let a used token be used again) and is refused, as the store
        does. A file SQLite cannot read raises StoreError saying what to do.

        `shared`: the system store replicas share (decision 0051). Records and join-token
        uses are then kept there, so every replica shows every record and a token's
        limit holds across replicas; the file is left unused."""
        self.path = path
        self._clock = clock
        self._shared = shared
        if expect_existing and path.is_file() and path.stat().st_size == 0:
            raise _unusable(path, "it is empty (0 bytes), but this control plane has run before")
        if not path.exists():
            # Created 0600 before SQLite opens it: records name identities and serials.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as err:
            raise _unusable(path, str(err)) from None
        try:
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as err:
            self._conn.close()
            raise _unusable(path, str(err)) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def record(
        self,
        actor: str,
        action: str,
        *,
        kind: str = "",
        namespace: str = "",
        name: str = "",
        detail: dict[str, Any] | None = None,
    ) -> None:
        when = self._clock().isoformat(timespec="milliseconds")
        if self._shared is not None:
            fields: dict[str, Any] = {"time": when, "actor": actor, "action": action}
            fields |= {"kind": kind}
            fields |= {"namespace": namespace, "name": name, "detail": detail or {}}
            self._shared.apply(
                [
                    {
                        "apiVersion": "gossamer.dev/v1alpha1",
                        "kind": _SHARED_KIND,
                        # Unique without coordination: time, then randomness.
                        "metadata": {
                            "name": f"{int(self._clock().timestamp() * 1000)}-"
                            f"{secrets.token_hex(4)}",
                            "namespace": NAMESPACE,
                        },
                        "spec": fields,
                    }
                ]
            )
            return
        with self._lock:
            self._conn.execute(
                "INSERT INTO audit (time, actor, action, kind, namespace, name, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (when, actor, action, kind, namespace, name, json.dumps(detail or {})),
            )

    def query(
        self,
        *,
        kind: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """The newest `limit` records matching, oldest first."""
        if self._shared is not None:
            return _query_shared(self._shared, kind, action, since, limit)
        where, params = [], []
        if kind:
            where.append("kind = ?")
            params.append(kind)
        if action:
            # An action prefix: "apply" finds apply.created and apply.configured.
            where.append("(action = ? OR action LIKE ?)")
            params += [action, action + ".%"]
        if since is not None:
            where.append("time >= ?")
            params.append(since.astimezone(UTC).isoformat(timespec="milliseconds"))
        sql = "SELECT id, time, actor, action, kind, namespace, name, detail FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._conn.execute(sql, (*params, limit)).fetchall()
        return [
            {
                "id": r[0],
                "time": r[1],
                "actor": r[2],
                "action": r[3],
                "kind": r[4],
                "namespace": r[5],
                "name": r[6],
                "detail": json.loads(r[7]),
            }
            for r in reversed(rows)
        ]

    def use_token(self, token_id: str, max_uses: int) -> int:
        """Count one use of a join token; return the uses so far, this one included,
        or raise ValueError without counting when `max_uses` are already spent."""
        if self._shared is not None:
            return _use_shared(self._shared, token_id, max_uses)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    "SELECT uses FROM token_uses WHERE token_id = ?", (token_id,)
                ).fetchone()
                used = row[0] if row else 0
                if used >= max_uses:
                    raise _spent(token_id, used)
                self._conn.execute(
                    "INSERT INTO token_uses (token_id, uses) VALUES (?, 1) "
                    "ON CONFLICT (token_id) DO UPDATE SET uses = uses + 1",
                    (token_id,),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return used + 1


def _query_shared(
    store: Store, kind: str | None, action: str | None, since: datetime | None, limit: int
) -> list[dict[str, Any]]:
    """query() on the shared store: the same rows, ids from the store's revisions
    (increasing across replicas, as the file's row ids increase in one)."""
    after = since.astimezone(UTC).isoformat(timespec="milliseconds") if since else ""
    rows = []
    for obj in store.list(_SHARED_KIND, NAMESPACE):
        spec = obj["spec"]
        if kind and spec["kind"] != kind:
            continue
        if action and spec["action"] != action and not spec["action"].startswith(action + "."):
            continue
        if after and spec["time"] < after:
            continue
        rows.append({"id": int(obj["metadata"]["resourceVersion"]), **spec})
    rows.sort(key=lambda row: row["id"])
    return rows[-limit:] if limit > 0 else []


def _spent(token_id: str, used: int) -> ValueError:
    return ValueError(
        f"join token {token_id} was already used {used} time{'s' if used != 1 else ''} (its limit)"
    )


def _use_shared(store: Store, token_id: str, max_uses: int) -> int:
    """One more use, by compare-and-swap on the token's record in the shared store."""
    for _ in range(100):
        record = counter_record(store, "JoinTokenUse", token_id)
        used = int((record.get("status") or {}).get("uses", 0))
        if used >= max_uses:
            raise _spent(token_id, used)
        try:
            store.update_status(
                "JoinTokenUse",
                record["metadata"]["namespace"],
                token_id,
                {"uses": used + 1},
                record["metadata"]["resourceVersion"],
            )
        except Conflict:
            continue  # another replica counted a use meanwhile: count again
        return used + 1
    raise StoreError(f"join token {token_id}: too many replicas counting its uses at once")
