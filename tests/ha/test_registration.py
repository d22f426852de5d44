"""A workload a proxy registers is never an endpoint before its proxy has a snapshot:
created not ready, and its proxy reports readiness only with a snapshot in hand. (Under
load, and on a replica that just restarted, that gap is long enough for a peer to be
sent there and answered 404.)"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest

from gossamer.controlplane.server import ControlPlane, ControlPlaneConfig
from gossamer.proxy.agent.session import Agent, AgentConfig, WorkloadPortSpec
from gossamer.translate.build import _is_ready
from tests.e2e.conftest import free_port
from tests.e2e.test_discovery import Recorder


@pytest.mark.asyncio
async def test_a_registered_workload_is_not_ready_until_its_proxy_says_so(
    tmp_path: Path,
) -> None:
    cp = ControlPlane(
        ControlPlaneConfig(tmp_path / "cp", api=("127.0.0.1", 0), discovery=("127.0.0.1", 0))
    )
    await cp.start()
    app = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    agent = Agent(
        AgentConfig(
            discovery=cp.discovery_address,
            workload="api-1",
            namespace="shop",
            service_account="api",
            address="127.0.0.1",
            inbound_port=free_port(),
            state_dir=tmp_path / "api-1",
            ports=(WorkloadPortSpec(8080, app.sockets[0].getsockname()[1], "http"),),
            join_token=cp.tokens.create("shop", "api", timedelta(minutes=5)),
        ),
        Recorder(),
    )
    try:
        await agent.start()
        deadline = time.monotonic() + 30
        while (status := _status(cp)) is None or not _is_ready(status):
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.05)
        history = [e.object for e in cp.store.changes(0) if e.object["kind"] == "Workload"]
    finally:
        await agent.stop()
        app.close()
        await cp.stop()

    # Every state the store held before the app was reported ready kept it out.
    first_ready = next(i for i, obj in enumerate(history) if _is_ready(obj.get("status")))
    assert first_ready > 0
    assert not any(_is_ready(obj.get("status")) for obj in history[:first_ready])
    created = history[0]["status"]["conditions"]
    assert [(c["type"], c["status"], c["reason"]) for c in created] == [
        ("Ready", "False", "NotReported")
    ]


def _status(cp: ControlPlane) -> dict[str, object] | None:
    try:
        status: dict[str, object] | None = cp.store.get("Workload", "shop", "api-1").get("status")
    except Exception:
        return None
    return status
