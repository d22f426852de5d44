"""What replicas share through the store: join-token uses count across replicas, and
named API tokens hold on every replica."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gossamer.controlplane.audit import AuditLog
from gossamer.controlplane.tokens_store import ApiTokenStore
from gossamer.store import EtcdStore
from tests.store.etcdcluster import EtcdCluster

from .conftest import etcd_cluster as _etcd_cluster  # noqa: F401  (a fixture)


def test_a_join_tokens_limit_holds_across_replicas(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    prefix = f"/{tmp_path.name}/system/"
    stores = [EtcdStore(etcd_cluster.endpoints, prefix=prefix) for _ in range(2)]
    logs = [AuditLog(tmp_path / f"audit-{i}.db", shared=store) for i, store in enumerate(stores)]
    granted: list[int] = []
    refused: list[str] = []

    def join(log: AuditLog) -> None:
        for _ in range(5):
            try:
                granted.append(log.use_token("tok-1", 3))
            except ValueError as e:
                refused.append(str(e))

    try:
        threads = [threading.Thread(target=join, args=(log,)) for log in logs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for log in logs:
            log.close()
        for store in stores:
            store.close()

    assert sorted(granted) == [1, 2, 3]
    assert len(refused) == 7
    assert all("already used 3 times" in message for message in refused)


def test_without_a_shared_store_uses_are_counted_in_the_local_file(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    try:
        assert [log.use_token("tok-1", 2), log.use_token("tok-1", 2)] == [1, 2]
        with pytest.raises(ValueError, match="already used 2 times"):
            log.use_token("tok-1", 2)
    finally:
        log.close()


def test_an_api_token_created_through_one_replica_works_on_the_other(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    prefix = f"/{tmp_path.name}/system/"
    stores = [EtcdStore(etcd_cluster.endpoints, prefix=prefix) for _ in range(2)]
    created = datetime.now(UTC)
    first, second = (
        ApiTokenStore(tmp_path / f"tokens-{i}.json", "gsa_bootstrap-secret", created, shared=s)
        for i, s in enumerate(stores)
    )
    try:
        secret, _ = first.create("ci", "read")
        second.create("deploy", "admin")  # from a stale copy: no lost update
        # Within the refresh time the other replica knows it.
        deadline = time.monotonic() + 5
        while second.authenticate(secret) is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)

        first.revoke("ci")
        deadline = time.monotonic() + 5
        while second.authenticate(secret) is not None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert [t.name for t in first.list()] == ["bootstrap-admin", "deploy"]
        assert not (tmp_path / "tokens-0.json").exists()  # nothing kept beside the store
    finally:
        for store in stores:
            store.close()


def test_every_replica_shows_the_audit_records_of_all(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    prefix = f"/{tmp_path.name}/system/"
    stores = [EtcdStore(etcd_cluster.endpoints, prefix=prefix) for _ in range(2)]
    logs = [AuditLog(tmp_path / f"audit-{i}.db", shared=store) for i, store in enumerate(stores)]
    try:
        logs[0].record("bootstrap-admin", "apply.created", kind="Service", namespace="shop",
                       name="echo", detail={"resourceVersion": "1"})  # fmt: skip
        logs[1].record("join-token t1", "certificate.issue", kind="Certificate",
                       namespace="shop", name="spiffe://cluster.local/ns/shop/sa/echo")  # fmt: skip
        logs[0].record("bootstrap-admin", "delete", kind="Service", namespace="shop",
                       name="echo")  # fmt: skip

        everything = logs[1].query()
        applies = logs[0].query(action="apply")
        services = logs[1].query(kind="Service")
        newest = logs[0].query(limit=1)
    finally:
        for log in logs:
            log.close()
        for store in stores:
            store.close()

    assert [r["action"] for r in everything] == ["apply.created", "certificate.issue", "delete"]
    assert [r["id"] for r in everything] == sorted(r["id"] for r in everything)
    assert everything[0]["detail"] == {"resourceVersion": "1"}
    assert [r["actor"] for r in applies] == ["bootstrap-admin"]
    assert [r["action"] for r in services] == ["apply.created", "delete"]
    assert [r["action"] for r in newest] == ["delete"]
    with closing(sqlite3.connect(tmp_path / "audit-0.db")) as local:
        assert local.execute("SELECT count(*) FROM audit").fetchone() == (0,)
