"""DataPlane lifecycle: the order the agent calls it in, and upkeep."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from gossamer.proxy.dataplane import SWEEP_INTERVAL, DataPlane
from gossamer.proxy.policy.routing import LocalRoute
from tests.proxy.conftest import (
    EchoApp,
    Mesh,
    Pki,
    Workload,
    curl,
    fast_config,
    server_snapshot,
)


@pytest.mark.asyncio
async def test_snapshot_and_credentials_given_before_start_take_effect_at_start(pki: Pki) -> None:
    app = EchoApp("echo-1")
    port = await app.start()
    server = DataPlane(fast_config(), on_interest=lambda key: None)
    client = DataPlane(fast_config(), on_interest=lambda key: None)
    try:
        server.set_credentials(pki.issue("default", "echo"))
        server.apply_snapshot(server_snapshot(pki, "echo-1", port))
        await server.start()
        assert server.ready
        mesh = Mesh(pki, client)
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        mesh.workloads.append(Workload("echo-1", app, server, pki.identity("default", "echo")))
        client.apply_snapshot(mesh.client_snapshot())
        rc, out, err = await curl("-H", "Host: echo", f"{mesh.proxy_url}/early")
        assert rc == 0, err
        assert json.loads(out)["path"] == "/early"
    finally:
        await client.close()
        await server.close()
        await app.close()


@pytest.mark.asyncio
async def test_an_idle_client_connection_is_closed(mesh: Mesh) -> None:
    mesh.client.config.idle_timeout = 0.2
    reader, writer = await asyncio.open_connection(*mesh.outbound)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        # The sweep runs once a second; the connection goes at the next one.
        rest = await asyncio.wait_for(reader.read(-1), 5)
        assert b"echo-" in rest  # the body, then EOF
    finally:
        writer.transport.abort()


@pytest.mark.asyncio
async def test_a_new_snapshot_replaces_routes_and_keeps_counting(mesh: Mesh) -> None:
    await curl("-H", "Host: echo", f"{mesh.proxy_url}/")
    svc = mesh.client_snapshot().services[0]
    first = replace(svc.ports[0], endpoints=(mesh.workloads[0].endpoint(),))
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(replace(svc, ports=(first,)),)))
    rc, out, err = await curl("-H", "Host: echo", *[f"{mesh.proxy_url}/{i}" for i in range(10)])
    assert rc == 0, err
    assert out.count(b'"instance": "echo-1"') == 10
    text = mesh.client.metrics.render()
    assert 'dst_service="echo",code="200",tls="true"} 11' in text


@pytest.mark.asyncio
async def test_close_is_idempotent_and_frees_the_ports(pki: Pki) -> None:
    dp = DataPlane(fast_config(), on_interest=lambda key: None)
    await dp.start()
    assert dp.outbound_address is not None
    await dp.close()
    await dp.close()
    with pytest.raises(OSError):
        await asyncio.open_connection(*dp.outbound_address)


@pytest.mark.parametrize(
    ("app_protocol", "speaks_h2", "grpc_only"),
    [("http", False, False), ("http2", True, False), ("grpc", True, True),
     ("kubernetes.io/h2c", True, False), (None, False, False)],
)  # fmt: skip
@pytest.mark.asyncio
async def test_what_a_local_port_speaks_is_decided_once_per_snapshot(
    pki: Pki, app_protocol: str | None, speaks_h2: bool, grpc_only: bool
) -> None:
    """HTTP/2 streams read it from their local route; no stream scans the port list."""
    snapshot = server_snapshot(pki, "echo-1", 18080)
    ports = (replace(snapshot.proxy.ports[0], app_protocol=app_protocol),)
    snapshot = replace(snapshot, proxy=replace(snapshot.proxy, ports=ports))
    dp = DataPlane(fast_config(), on_interest=lambda key: None)
    try:
        await dp.start()
        dp.apply_snapshot(snapshot)
        [route] = dp.table.local_routes.values()
    finally:
        await dp.close()
    assert isinstance(route, LocalRoute)
    assert (route.speaks_h2, route.grpc_only) == (speaks_h2, grpc_only)


async def _answered(mesh: Mesh, path: str) -> bool:
    rc, out, _ = await curl("-m", "3", "-H", "Host: echo", f"{mesh.proxy_url}{path}")
    return rc == 0 and b"echo-" in out


async def _until(check: Callable[[], Awaitable[bool]], within: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.asyncio
async def test_a_listener_closed_under_the_proxy_listens_again(mesh: Mesh) -> None:
    """uvloop closes a server after an accept error it does not expect (ENOMEM,
    ENOBUFS: not to be had on demand) and says nothing: here the outbound server is
    closed as that leaves it. The upkeep sees it and listens again on the same
    address, and says so; /ready never claimed otherwise for long."""
    assert await _answered(mesh, "/before")
    mesh.client._listening["outbound"].close()
    assert not await _answered(mesh, "/closed")  # nothing listens there now
    assert await _until(lambda: _answered(mesh, "/after"), SWEEP_INTERVAL * 5)
    assert mesh.client.ready


@pytest.mark.asyncio
async def test_a_listener_that_cannot_listen_again_makes_the_proxy_not_ready_until_it_can(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = mesh.client.outbound_address or ("", 0)
    mesh.client._listening["outbound"].close()
    await asyncio.sleep(0)
    squatter = socket.socket()
    try:
        squatter.bind((host, port))  # what another process might have done meanwhile
        squatter.listen()

        async def not_ready() -> bool:
            return any("outbound listener closed" in r for r in mesh.client.not_ready_reasons())

        with caplog.at_level(logging.ERROR, logger="gossamer"):
            assert await _until(not_ready, SWEEP_INTERVAL * 5)
        assert "the outbound listener cannot listen again" in caplog.text
    finally:
        squatter.close()
    assert await _until(lambda: _answered(mesh, "/after"), SWEEP_INTERVAL * 5)
    assert mesh.client.ready


@pytest.mark.asyncio
async def test_listeners_closed_on_purpose_are_not_opened_again(mesh: Mesh) -> None:
    """A drain (stop_accepting) closes them: they stay closed."""
    mesh.client.stop_accepting()
    await asyncio.sleep(SWEEP_INTERVAL * 2.5)
    assert not await _answered(mesh, "/drained")
