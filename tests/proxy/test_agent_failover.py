"""A proxy given several control-plane replicas: the next one at once when one fails,
gRPC's back-off only after a round of all of them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gossamer.proxy.agent import session
from gossamer.proxy.agent.session import Agent, AgentConfig, Backoff
from tests.e2e.conftest import ControlPlaneProcess, free_port, start_control_plane, stop_process
from tests.e2e.test_discovery import Recorder


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = start_control_plane(tmp_path / "cp")
    try:
        yield cp
    finally:
        stop_process(cp.proc)


def test_the_next_replica_is_tried_at_once_and_a_full_round_backs_off() -> None:
    backoff = Backoff(replicas=3)

    delays = [backoff.failed() for _ in range(9)]

    quick = [d for i, d in enumerate(delays) if (i + 1) % 3]
    rounds = [delays[2], delays[5], delays[8]]
    assert all(0 <= d <= 0.1 * session.INITIAL_BACKOFF for d in quick)
    for n, delay in enumerate(rounds):
        expected = session.INITIAL_BACKOFF * session.BACKOFF_MULTIPLIER**n
        assert expected * 0.8 <= delay <= expected * 1.2


def test_the_back_off_is_capped_and_resets_after_a_good_stream() -> None:
    backoff = Backoff(replicas=1)
    for _ in range(50):
        last = backoff.failed()
    assert last <= session.MAX_BACKOFF * 1.2

    backoff.reset()

    assert backoff.failed() <= session.INITIAL_BACKOFF * 1.2


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_a_proxy_whose_first_replica_is_down_joins_and_follows_the_next(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    token = control_plane.cli(
        "token", "create", "-n", "shop", "--service-account", "web", check=True
    ).stdout.strip()
    host, port = control_plane.discovery.rsplit(":", 1)
    down = ("127.0.0.1", free_port())  # nothing listens here
    recorder = Recorder()
    agent = Agent(
        AgentConfig(
            discovery=down,
            replicas=(down, (host, int(port))),
            workload="web-1",
            namespace="shop",
            service_account="web",
            address="127.0.0.1",
            inbound_port=4143,
            state_dir=tmp_path / "web-1",
            labels={"app": "web"},
            join_token=token,
        ),
        recorder,
    )
    try:
        await asyncio.wait_for(agent.start(), 30)
        snapshot = await recorder.until(lambda s: s.proxy.workload == "web-1", timeout=30)
    finally:
        await agent.stop()

    assert snapshot.proxy.namespace == "shop"
    assert agent.base_url == f"https://{host}:{port}"
