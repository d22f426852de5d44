"""The workload lease: which Workloads leave endpoints when their proxy's stream is gone,
and when. `Discovery.expire_leases` is driven with an explicit clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gossamer.controlplane.discovery import (
    LEASE_SECONDS,
    RESTART_GRACE_SECONDS,
    Discovery,
    with_condition,
)
from gossamer.store.aio import AsyncStore
from gossamer.store.sqlite import SqliteStore
from gossamer.translate.build import _is_ready


def _workload(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "echo"}},
        "spec": {"address": "127.0.0.1", "inboundPort": 4143, "serviceAccount": "echo"},
    }


@pytest.fixture
def discovery(tmp_path: Path) -> Discovery:
    store = SqliteStore(tmp_path / "store.db")
    store.apply([_workload("by-proxy"), _workload("by-hand")])
    ready, _ = with_condition(None, "Ready", True, "AppListening", "")
    store.update_status("Workload", "shop", "by-proxy", ready)
    d = Discovery(SimpleNamespace(store=store, astore=AsyncStore(store)))  # type: ignore[arg-type]
    asyncio.run(d._load())
    return d


def _connected(d: Discovery, name: str) -> str | None:
    asyncio.run(d._load())  # what the store watch would have delivered
    obj = d.cp.store.get("Workload", "shop", name)
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == "ProxyConnected":
            return str(cond["status"])
    return None


def test_after_a_restart_a_workload_keeps_its_endpoint_for_the_grace_period(
    discovery: Discovery,
) -> None:
    start = discovery._started
    discovery.expire_leases(start + RESTART_GRACE_SECONDS - 1)
    assert _connected(discovery, "by-proxy") is None
    discovery.expire_leases(start + RESTART_GRACE_SECONDS)
    assert _connected(discovery, "by-proxy") == "False"
    obj = discovery.cp.store.get("Workload", "shop", "by-proxy")
    assert not _is_ready(obj["status"])


def test_a_workload_leaves_endpoints_a_lease_after_its_proxy_left(discovery: Discovery) -> None:
    discovery._set_connected("shop", "by-proxy", True)
    left = discovery._started + 5
    discovery._gone_since[("shop", "by-proxy")] = left
    discovery.expire_leases(left + LEASE_SECONDS - 0.1)
    assert _connected(discovery, "by-proxy") == "True"
    discovery.expire_leases(left + LEASE_SECONDS)
    assert _connected(discovery, "by-proxy") == "False"
    # Back: its proxy's stream sets it again, and Ready (the app's) was never touched.
    discovery._set_connected("shop", "by-proxy", True)
    obj = discovery.cp.store.get("Workload", "shop", "by-proxy")
    assert _is_ready(obj["status"])


def test_a_workload_with_a_stream_or_applied_by_hand_holds_no_expiring_lease(
    discovery: Discovery,
) -> None:
    discovery._sessions[("shop", "by-proxy")] = object()  # type: ignore[assignment]
    discovery.expire_leases(discovery._started + 10 * RESTART_GRACE_SECONDS)
    assert _connected(discovery, "by-proxy") is None
    assert _connected(discovery, "by-hand") is None
    assert _is_ready(discovery.cp.store.get("Workload", "shop", "by-hand").get("status"))
