"""Control-plane replicas sharing one store: who is up, and who leads.

Each replica writes its own `ControlPlaneReplica` record (its addresses and a heartbeat
time) every `heartbeat` seconds, and competes for one `ControlPlaneLeader` record: the
holder renews it each heartbeat; any replica takes it over when it was not renewed for
`lease` seconds. Both live in the control plane's system store (never the mesh store, so
that API lists and watches do not carry them). Every write is a compare-and-swap on the
record's resourceVersion, so two replicas never both take the lead from one state; a
leader that cannot renew (the store unreachable) stops calling itself leader after
`lease` seconds, before anyone else may take over (decision 0051).

Jobs that must run once in the mesh (lease expiry of a dead replica's workloads, the
Prometheus targets file, CA rotation) ask `is_leader()` before each step.

With no system store (one replica on SQLite) this replica is always the leader.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gossamer.errors import Conflict, NotFound, StoreError
from gossamer.store import EtcdStore, SqliteStore, Store
from gossamer.store.etcdgateway import EtcdGateway

__all__ = [
    "LEADER",
    "NAMESPACE",
    "REPLICA",
    "Replicas",
    "counter_record",
    "replica_id_for",
    "shared_admin_token",
    "store_health",
]

log = logging.getLogger("gossamer.controlplane.replicas")

NAMESPACE = "gossamer-system"
REPLICA = "ControlPlaneReplica"
LEADER = "ControlPlaneLeader"
_API_VERSION = "gossamer.dev/v1alpha1"
_LEADER_NAME = "control-plane"


def counter_record(store: Store, kind: str, name: str) -> dict[str, Any]:
    """The record `kind`/`name` in NAMESPACE, created if missing, whose state lives in
    its status and changes only by compare-and-swap (update_status with the record's
    resourceVersion).

    State lives in status because apply ignores the status of an object that exists:
    two replicas creating the record at once both write the same empty spec, and one
    that comes late cannot reset state another has written since."""
    store.apply(
        [
            {
                "apiVersion": _API_VERSION,
                "kind": kind,
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {},
            }
        ]
    )
    return store.get(kind, NAMESPACE, name)


def replica_id_for(data_dir: Path) -> str:
    """This replica's name, kept in DATA_DIR/replica.id so a restarted replica is the
    same one (its workloads' leases are still its own)."""
    path = data_dir / "replica.id"
    if path.exists():
        name = path.read_text().strip()
        if name:
            return name
    name = f"{os.uname().nodename.split('.')[0].lower()[:40]}-{secrets.token_hex(3)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(name + "\n")
    return name


class Replicas:
    def __init__(
        self,
        store: Store | None,
        replica_id: str,
        addresses: Callable[[], dict[str, str]] = dict,
        *,
        heartbeat: float = 1.0,
        lease: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.replica_id = replica_id
        self._addresses = addresses
        self.heartbeat = heartbeat
        self.lease = lease
        self._clock = clock
        self._renewed_at = 0.0  # when this replica last renewed the leadership
        self._task: asyncio.Task[None] | None = None
        self._was_leader = store is None

    @property
    def shared(self) -> bool:
        """Whether other replicas may share the store."""
        return self.store is not None

    # -- running -----------------------------------------------------------------

    async def start(self) -> None:
        if self.store is None:
            return
        await asyncio.to_thread(self.beat)
        self._task = asyncio.create_task(self._loop(), name="replica-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.store is not None:
            with contextlib.suppress(StoreError, NotFound, Conflict):
                await asyncio.to_thread(self.leave)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await asyncio.to_thread(self.beat)
            except StoreError as e:
                log.warning("replica %s cannot reach the store: %s", self.replica_id, e)

    def beat(self) -> None:
        """Write this replica's heartbeat, then take or renew the lead if it can."""
        assert self.store is not None
        now = self._clock()
        self.store.apply(
            [
                {
                    "apiVersion": _API_VERSION,
                    "kind": REPLICA,
                    "metadata": {"name": self.replica_id, "namespace": NAMESPACE},
                    "spec": {**self._addresses(), "heartbeat": now},
                }
            ]
        )
        self._elect(now)

    def _elect(self, now: float) -> None:
        assert self.store is not None
        leader = self._leader_record()
        state = leader.get("status") or {}
        holder, renewed = str(state.get("holder", "")), float(state.get("renewed", 0.0))
        if holder != self.replica_id and holder and now - renewed < self.lease:
            self._note(False)
            return
        try:
            self._write_leader(leader, self.replica_id, now)
        except Conflict:
            self._note(False)  # another replica moved first
            return
        self._renewed_at = now
        self._note(True)

    def _leader_record(self) -> dict[str, Any]:
        assert self.store is not None
        try:
            return self.store.get(LEADER, NAMESPACE, _LEADER_NAME)
        except NotFound:
            return counter_record(self.store, LEADER, _LEADER_NAME)

    def _write_leader(self, leader: dict[str, Any], holder: str, renewed: float) -> None:
        """A compare-and-swap on the record's resourceVersion; Conflict if it moved."""
        assert self.store is not None
        self.store.update_status(
            LEADER,
            NAMESPACE,
            _LEADER_NAME,
            {"holder": holder, "renewed": renewed},
            leader["metadata"]["resourceVersion"],
        )

    def leave(self) -> None:
        """A clean stop: hand the lead back at once and remove this replica's record."""
        assert self.store is not None
        if self.is_leader():
            leader = self._leader_record()
            if (leader.get("status") or {}).get("holder") == self.replica_id:
                self._write_leader(leader, "", 0.0)
        self._renewed_at = 0.0
        self.store.delete(REPLICA, NAMESPACE, self.replica_id)

    def _note(self, leading: bool) -> None:
        if leading != self._was_leader:
            log.info("replica %s %s", self.replica_id, "leads" if leading else "no longer leads")
        self._was_leader = leading

    # -- asking ------------------------------------------------------------------

    def is_leader(self) -> bool:
        if self.store is None:
            return True
        # A heartbeat short of the lease: it stops leading before another may start.
        return self._clock() - self._renewed_at < self.lease - self.heartbeat

    def now(self) -> float:
        """The wall clock heartbeats are written with."""
        return self._clock()

    def last_seen(self, replica_id: str) -> float | None:
        """When `replica_id` last wrote its heartbeat (wall clock), None if never."""
        if self.store is None:
            return self._clock() if replica_id == self.replica_id else None
        try:
            record = self.store.get(REPLICA, NAMESPACE, replica_id)
        except NotFound:
            return None
        return float((record.get("spec") or {}).get("heartbeat", 0.0))

    def alive(self, replica_id: str) -> bool:
        seen = self.last_seen(replica_id)
        return seen is not None and self._clock() - seen < self.lease

    def rows(self) -> list[dict[str, Any]]:
        """Every replica the store knows, for `gossamer check` and /v1/replicas."""
        now = self._clock()
        if self.store is None:
            return [{"name": self.replica_id, **self._addresses(), "alive": True, "leader": True}]
        leader = self._leader_record().get("status") or {}
        fresh_leader = now - float(leader.get("renewed", 0.0)) < self.lease
        rows = []
        for record in self.store.list(REPLICA, NAMESPACE):
            spec = dict(record.get("spec") or {})
            seen = float(spec.pop("heartbeat", 0.0))
            name = record["metadata"]["name"]
            rows.append(
                {
                    "name": name,
                    **spec,
                    "lastHeartbeatSecondsAgo": round(now - seen, 1),
                    "alive": now - seen < self.lease,
                    "leader": fresh_leader and leader.get("holder") == name,
                }
            )
        return rows


def shared_admin_token(data_dir: Path, token_key: bytes) -> None:
    """Write DATA_DIR/admin.token, if there is none, as every replica given the same CA
    files writes it: derived from the join-token key (ca/token.key), so the CLI and
    scripts work against any replica. An admin.token already there is left alone."""
    path = data_dir / "admin.token"
    if path.exists():
        return
    derived = hmac.new(token_key, b"gossamer bootstrap admin token", hashlib.sha256).digest()
    token = "gsa_" + base64.urlsafe_b64encode(derived).decode().rstrip("=")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


def store_health(store: Store) -> dict[str, Any]:
    """What `gossamer check` says about the store: its kind and, for etcd, each member."""
    if isinstance(store, SqliteStore):
        return {"backend": "sqlite", "path": str(store.path), "healthy": True}
    if not isinstance(store, EtcdStore):
        return {"backend": type(store).__name__, "healthy": True}
    members = []
    for host, port in store.gateway.endpoints:
        single = EtcdGateway([(host, port)], timeout=1.0, deadline=1.0)
        try:
            answer = single.call("/v3/maintenance/status", {})
            member = answer.get("header", {}).get("member_id", "")
            members.append(
                {
                    "endpoint": f"{host}:{port}",
                    "reachable": True,
                    "version": answer.get("version", ""),
                    "leader": member != "" and answer.get("leader") == member,
                    "dbSizeBytes": int(answer.get("dbSize", 0)),
                }
            )
        except StoreError as e:
            members.append({"endpoint": f"{host}:{port}", "reachable": False, "error": str(e)})
        finally:
            single.close()
    up = sum(1 for m in members if m["reachable"])
    return {
        "backend": "etcd",
        "prefix": store.prefix,
        "members": members,
        "healthy": up > len(members) // 2,
    }
