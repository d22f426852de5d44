"""Discovery against the real control plane process: join, register, follow, push."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from gossamer.errors import IdentityError
from gossamer.proxy.agent.session import Agent, AgentConfig, WorkloadPortSpec
from gossamer.translate import Snapshot
from tests.e2e.conftest import ControlPlaneProcess

pytestmark = pytest.mark.e2e

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: http}]
"""


class Recorder:
    """Stands where the data plane goes: keeps what the agent hands it."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self.credentials: list[Any] = []
        self.changed = asyncio.Event()

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        self.changed.set()

    def set_credentials(self, creds: Any) -> None:
        self.credentials.append(creds)

    async def until(self, predicate: Any, timeout: float = 5.0) -> Snapshot:
        deadline = time.monotonic() + timeout
        while True:
            if self.snapshots and predicate(self.snapshots[-1]):
                return self.snapshots[-1]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching snapshot; last: {self.snapshots[-1:]}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


def agent_for(
    cp: ControlPlaneProcess,
    tmp: Path,
    name: str,
    sa: str,
    labels: dict[str, str],
    ports: tuple[WorkloadPortSpec, ...] = (),
    token_sa: str | None = None,
    interests: frozenset[str] = frozenset(),
) -> tuple[Agent, Recorder]:
    token = cp.cli(
        "token", "create", "-n", "shop", "--service-account", token_sa or sa, check=True
    ).stdout.strip()
    host, port = cp.discovery.rsplit(":", 1)
    recorder = Recorder()
    agent = Agent(
        AgentConfig(
            discovery=(host, int(port)),
            workload=name,
            namespace="shop",
            service_account=sa,
            address="127.0.0.1",
            inbound_port=4143,
            state_dir=tmp / name,
            labels=labels,
            ports=ports,
            join_token=token,
            interests=interests,
        ),
        recorder,
    )
    return agent, recorder


@pytest.mark.asyncio
async def test_a_proxy_joins_registers_and_gets_pushed_changes(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICES, check=True)
    # api-1's app: only a listening socket, so its proxy reports the workload ready.
    app = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    web, web_seen = agent_for(
        control_plane, tmp_path, "web-1", "web", {"app": "web"}, interests=frozenset({"api.shop"})
    )
    api, _ = agent_for(
        control_plane,
        tmp_path,
        "api-1",
        "api",
        {"app": "api"},
        ports=(WorkloadPortSpec(8081, app_port, "http"),),
    )
    try:
        await web.start()
        first = await web_seen.until(lambda s: s.service("api", "shop") is not None)
        assert first.proxy.identity == "spiffe://cluster.local/ns/shop/sa/web"
        assert first.service("api", "shop").ports[0].endpoints == ()  # type: ignore[union-attr]
        assert "BEGIN CERTIFICATE" in first.trust_bundle

        started = time.monotonic()
        await api.start()  # registers api-1: the web proxy must hear of it
        pushed = await web_seen.until(
            lambda s: bool(s.service("api", "shop").ports[0].endpoints)  # type: ignore[union-attr]
        )
        assert time.monotonic() - started < 5
        [ep] = pushed.service("api", "shop").ports[0].endpoints  # type: ignore[union-attr]
        assert (ep.workload, ep.target_port, ep.identity) == (
            "api-1",
            8081,
            "spiffe://cluster.local/ns/shop/sa/api",
        )

        await api.stop(deregister=True)  # gone from the mesh: gone from the snapshot
        await web_seen.until(
            lambda s: not s.service("api", "shop").ports[0].endpoints  # type: ignore[union-attr]
        )
        listed = control_plane.cli("get", "workloads", "-n", "shop", "-o", "json", check=True)
        assert '"api-1"' not in listed.stdout

        # The proxy acknowledged what it was sent, and the control plane knows.
        await asyncio.sleep(0.3)
        status = control_plane.cli("check", "-o", "json")
        assert '"upToDate": true' in status.stdout, status.stdout + status.stderr
    finally:
        await web.stop()
        await api.stop()
        app.close()
        await app.wait_closed()


@pytest.mark.asyncio
async def test_a_subscription_adds_a_service_to_the_next_snapshot(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICES, check=True)
    web, seen = agent_for(control_plane, tmp_path, "web-1", "web", {"app": "web"})
    try:
        await web.start()
        first = await seen.until(lambda s: True)
        assert first.services == ()
        web.subscribe("api.shop")
        web.subscribe("nothing.shop")
        later = await seen.until(lambda s: "nothing.shop" in s.interests)
        assert [s.key for s in later.services] == ["api.shop"]
    finally:
        await web.stop()


@pytest.mark.asyncio
async def test_a_token_for_one_account_cannot_join_as_another(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    agent, _ = agent_for(control_plane, tmp_path, "web-1", "web", {}, token_sa="admin")
    try:
        with pytest.raises(IdentityError, match="grants"):
            await agent.join()
    finally:
        await agent.stop(deregister=False)


@pytest.mark.asyncio
async def test_the_proxy_serves_its_cached_snapshot_when_the_control_plane_is_gone(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICES, check=True)
    web, seen = agent_for(
        control_plane, tmp_path, "web-1", "web", {"app": "web"}, interests=frozenset({"api.shop"})
    )
    await web.start()
    try:
        live = await seen.until(lambda s: s.service("api", "shop") is not None)
    finally:
        await web.stop(deregister=False)
    control_plane.proc.terminate()
    control_plane.proc.wait(timeout=10)

    # A restart during the outage comes up from the cache alone.
    recorder = Recorder()
    offline = Agent(web.config, recorder)
    assert offline.load_cache()
    assert recorder.snapshots[-1].version == live.version
    assert recorder.credentials, "cached certificate handed to the data plane"
