"""A replica closes a discovery stream at its (jittered) maximum age, cleanly, and the
proxy comes straight back: streams spread again over replicas that came back."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest

from gossamer.controlplane.server import ControlPlane, ControlPlaneConfig
from gossamer.proxy.agent.session import Agent, AgentConfig
from tests.e2e.test_discovery import Recorder


@pytest.mark.asyncio
async def test_a_stream_past_its_age_is_closed_and_the_proxy_reconnects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = ControlPlane(
        ControlPlaneConfig(tmp_path / "cp", api=("127.0.0.1", 0), discovery=("127.0.0.1", 0))
    )
    cp.discovery.max_stream_age = 1.0
    await cp.start()
    agent = Agent(
        AgentConfig(
            discovery=cp.discovery_address,
            workload="web-1",
            namespace="shop",
            service_account="web",
            address="127.0.0.1",
            inbound_port=4143,
            state_dir=tmp_path / "web-1",
            join_token=cp.tokens.create("shop", "web", timedelta(minutes=5)),
        ),
        Recorder(),
    )
    try:
        await agent.start()
        streams: list[float] = []
        deadline = time.monotonic() + 30
        while len(streams) < 3:
            assert time.monotonic() < deadline, f"streams seen: {streams}"
            session = cp.discovery._sessions.get(("shop", "web-1"))
            if session is not None and session.connected_since not in streams:
                streams.append(session.connected_since)
            await asyncio.sleep(0.05)
    finally:
        await agent.stop()
        await cp.stop()

    # Three streams, each opened after the one before it was closed for its age,
    # cleanly: the proxy saw no failure to back off from.
    assert streams == sorted(streams)
    assert not [r.message for r in caplog.records if "serving the last snapshot" in r.message]
