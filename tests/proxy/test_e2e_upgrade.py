"""End to end: tunnels (WebSocket upgrades and CONNECT) through two proxies.

A real aiohttp WebSocket client and server exchange messages through the client
proxy's outbound listener and the server proxy's inbound one, over mTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from gossamer.proxy.dataplane import DataPlane
from gossamer.translate.snapshot import (
    Endpoint,
    LocalPort,
    ProxySelf,
    ServicePort,
    ServiceView,
    Snapshot,
)
from tests.proxy.conftest import Pki, fast_config, server_snapshot
from tests.proxy.test_e2e_http import admin_get, metric


@contextlib.asynccontextmanager
async def two_proxies(
    pki: Pki, app_port: int, app_protocol: str | None = None
) -> AsyncIterator[tuple[DataPlane, DataPlane]]:
    """A client proxy routing echo:80 to one workload whose app listens on `app_port`."""
    server = DataPlane(fast_config(), on_interest=lambda key: None)
    client = DataPlane(fast_config(), on_interest=lambda key: None)
    try:
        await server.start()
        server.set_credentials(pki.issue("default", "echo"))
        snapshot = server_snapshot(pki, "echo-1", app_port)
        if app_protocol is not None:
            ports = (LocalPort(8080, app_port, "http", app_protocol),)
            snapshot = replace(snapshot, proxy=replace(snapshot.proxy, ports=ports))
        server.apply_snapshot(snapshot)
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        assert server.inbound_address is not None
        endpoint = Endpoint(
            "echo-1", "default", "127.0.0.1", server.inbound_address[1], 8080,
            pki.identity("default", "echo"),
        )  # fmt: skip
        client.apply_snapshot(
            Snapshot(
                proxy=ProxySelf(
                    "web-1", "default", "web", pki.identity("default", "web"), services=("web",)
                ),
                trust_domain=pki.trust_domain,
                trust_bundle="",
                services=(
                    ServiceView("echo", "default", (ServicePort(80, "http", None, (endpoint,)),)),
                ),
            )
        )
        yield client, server
    finally:
        await client.close()
        await server.close()


async def _websocket_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str("echo: " + msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data[::-1])
    return ws


@pytest.mark.asyncio
async def test_a_websocket_client_and_server_exchange_messages_through_two_proxies(
    pki: Pki,
) -> None:
    app = web.Application()
    app.router.add_get("/ws", _websocket_echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    try:
        await site.start()
        app_port = runner.addresses[0][1]
        async with two_proxies(pki, app_port) as (client, _):
            assert client.outbound_address is not None
            host, port = client.outbound_address
            timeout = aiohttp.ClientTimeout(total=10)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.ws_connect(f"http://{host}:{port}/ws", headers={"Host": "echo"}) as ws,
            ):
                for i in range(3):
                    await ws.send_str(f"hello {i}")
                    assert await ws.receive_str() == f"echo: hello {i}"
                big = bytes(range(256)) * 1024  # larger than one read or TLS record
                await ws.send_bytes(big)
                assert await ws.receive_bytes() == big[::-1]
            _, text = await admin_get(client, "/metrics")
            assert metric(text.decode(), "gossamer_requests_total", code="101") == 1
    finally:
        await runner.cleanup()


async def _connect_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers CONNECT with 200 and speaks first; then echoes lines upper-cased."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"CONNECT echo:80 "):
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\nready\n")
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_connect_is_carried_as_a_tunnel_to_the_app(pki: Pki) -> None:
    app = await asyncio.start_server(_connect_app, "127.0.0.1", 0)
    try:
        async with two_proxies(pki, app.sockets[0].getsockname()[1]) as (client, _):
            assert client.outbound_address is not None
            reader, writer = await asyncio.open_connection(*client.outbound_address)
            try:
                writer.write(b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200 ")
                assert await asyncio.wait_for(reader.readline(), 10) == b"ready\n"
                writer.write(b"one\ntwo\n")
                assert await asyncio.wait_for(reader.readexactly(8), 10) == b"ONE\nTWO\n"
            finally:
                writer.transport.abort()
    finally:
        app.close()
        await app.wait_closed()


async def _no_websocket(request: web.Request) -> web.Response:
    return web.Response(status=400, text="no websocket")


@pytest.mark.asyncio
async def test_a_refused_upgrade_is_answered_and_the_connection_closed(pki: Pki) -> None:
    app = web.Application()
    app.router.add_get("/ws", _no_websocket)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    try:
        await site.start()
        async with two_proxies(pki, runner.addresses[0][1]) as (client, _):
            assert client.outbound_address is not None
            reader, writer = await asyncio.open_connection(*client.outbound_address)
            try:
                writer.write(
                    b"GET /ws HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\n\r\n"
                )
                data = await asyncio.wait_for(reader.read(-1), 10)
            finally:
                writer.transport.abort()
            assert data.startswith(b"HTTP/1.1 400 ")
            assert data.endswith(b"no websocket")
    finally:
        await runner.cleanup()
