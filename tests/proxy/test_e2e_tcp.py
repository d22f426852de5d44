"""Opaque TCP: a local listener per TcpUpstream, carried over mTLS to the app's port."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import pytest
import pytest_asyncio

from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.outbound.tcp import TcpUpstream
from gossamer.translate.snapshot import (
    Endpoint,
    LocalPort,
    ProxySelf,
    ServicePort,
    ServiceView,
    Snapshot,
)
from tests.proxy.conftest import Pki, fast_config


class ByteEcho(asyncio.Protocol):
    """Echoes bytes back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@dataclass
class TcpMesh:
    client: DataPlane
    server: DataPlane
    upstream: TcpUpstream

    @property
    def listener(self) -> tuple[str, int]:
        return self.client.tcp_addresses[self.upstream]


@pytest_asyncio.fixture
async def tcp_mesh(pki: Pki) -> AsyncIterator[TcpMesh]:
    loop = asyncio.get_running_loop()
    app = await loop.create_server(ByteEcho, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    upstream = TcpUpstream("db", None, 5432, "127.0.0.1", 0)
    server = DataPlane(fast_config(), on_interest=lambda key: None)
    client = DataPlane(fast_config(upstreams=(upstream,)), on_interest=lambda key: None)
    try:
        await server.start()
        server.set_credentials(pki.issue("default", "db"))
        server.apply_snapshot(
            Snapshot(
                proxy=ProxySelf(
                    "db-1", "default", "db", pki.identity("default", "db"),
                    ports=(LocalPort(5432, app_port, "tcp"),), services=("db",),
                ),
                trust_domain=pki.trust_domain,
                trust_bundle="",
            )
        )  # fmt: skip
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        assert server.inbound_address is not None
        endpoint = Endpoint(
            "db-1", "default", "127.0.0.1", server.inbound_address[1], 5432,
            pki.identity("default", "db"),
        )  # fmt: skip
        client.apply_snapshot(
            Snapshot(
                proxy=ProxySelf(
                    "web-1", "default", "web", pki.identity("default", "web"), services=("web",)
                ),
                trust_domain=pki.trust_domain,
                trust_bundle="",
                services=(
                    ServiceView("db", "default", (ServicePort(5432, "tcp", None, (endpoint,)),)),
                ),
            )
        )
        yield TcpMesh(client, server, upstream)
    finally:
        await client.close()
        await server.close()
        app.close()
        await app.wait_closed()


@pytest.mark.asyncio
async def test_tcp_upstream_carries_bytes_both_ways(tcp_mesh: TcpMesh) -> None:
    reader, writer = await asyncio.open_connection(*tcp_mesh.listener)
    try:
        writer.write(b"hello over mTLS")
        assert await asyncio.wait_for(reader.readexactly(15), 5) == b"hello over mTLS"
        payload = os.urandom(4 * 1024 * 1024)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()

        sender = asyncio.ensure_future(send())
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
        await sender
        assert got == payload
    finally:
        writer.close()
        await writer.wait_closed()
    text = tcp_mesh.client.metrics.render()
    assert (
        'gossamer_tcp_bytes_total{direction="outbound",peer_namespace="default",'
        'peer_service="db",tls="true",flow="sent"} ' + str(len(payload) + 15)
    ) in text


@pytest.mark.asyncio
async def test_tcp_connections_are_counted_while_open(tcp_mesh: TcpMesh) -> None:
    reader, writer = await asyncio.open_connection(*tcp_mesh.listener)
    try:
        writer.write(b"\x00")  # not HTTP from the first byte: carried opaquely at once
        await asyncio.wait_for(reader.readexactly(1), 5)
        outbound = 'direction="outbound",peer_namespace="default",peer_service="db",tls="true"'
        inbound = 'direction="inbound",peer_namespace="default",peer_service="unknown",tls="true"'
        assert f"gossamer_tcp_open_connections{{{outbound}}} 1" in tcp_mesh.client.metrics.render()
        assert f"gossamer_tcp_open_connections{{{inbound}}} 1" in tcp_mesh.server.metrics.render()
    finally:
        writer.close()
        await writer.wait_closed()
    for _ in range(100):
        if 'tls="true"} 0' in tcp_mesh.client.metrics.render():
            break
        await asyncio.sleep(0.01)
    assert 'peer_service="db",tls="true"} 0' in tcp_mesh.client.metrics.render()


@pytest.mark.asyncio
async def test_a_tcp_upstream_to_an_unknown_service_is_closed(pki: Pki) -> None:
    upstream = TcpUpstream("nothing", "default", 1, "127.0.0.1", 0)
    client = DataPlane(
        fast_config(upstreams=(upstream,), interest_timeout=0.2), on_interest=lambda key: None
    )
    try:
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        reader, writer = await asyncio.open_connection(*client.tcp_addresses[upstream])
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.transport.abort()
    finally:
        await client.close()


def test_tcp_upstreams_parse_from_the_command_line() -> None:
    assert TcpUpstream.parse("db.data:5432=127.0.0.1:15432") == TcpUpstream(
        "db", "data", 5432, "127.0.0.1", 15432
    )
    assert TcpUpstream.parse("db:5432=:15432") == TcpUpstream("db", None, 5432, "127.0.0.1", 15432)
    with pytest.raises(ValueError, match="expected SVC"):
        TcpUpstream.parse("db=5432")
