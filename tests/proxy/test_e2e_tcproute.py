"""End to end: a TCPRoute splits opaque TCP from a `--upstream` listener between two
backends, each a TCP echo behind its own proxy."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.outbound.tcp import TcpUpstream
from gossamer.resources import to_dict, validate
from gossamer.translate import MeshView, ProxyInfo, build_snapshot
from gossamer.translate.snapshot import LocalPort, ProxySelf, Snapshot
from tests.proxy.conftest import Pki, fast_config
from tests.translate.test_routes import BUNDLE


class NamedEcho(asyncio.Protocol):
    """Echoes bytes back after its name, so the caller sees which backend answered."""

    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.name + b":" + data)


def _obj(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> Any:
    api = {"Service": "v1", "TCPRoute": "gateway.networking.k8s.io/v1alpha2"}.get(
        kind, "gossamer.dev/v1alpha1"
    )
    meta: dict[str, Any] = {"name": name, "namespace": "default", "labels": labels or {}}
    return to_dict(validate({"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}))


def tcp_service(name: str) -> Any:
    port = {"name": "db", "port": 5432, "targetPort": 5432, "appProtocol": "tcp"}
    return _obj("Service", name, {"selector": {"app": name}, "ports": [port]})


@pytest.mark.asyncio
async def test_a_tcproute_splits_connections_between_two_backends(pki: Pki) -> None:
    loop = asyncio.get_running_loop()
    upstream = TcpUpstream("db", None, 5432, "127.0.0.1", 0)
    client = DataPlane(fast_config(upstreams=(upstream,)), on_interest=lambda key: None)
    apps: list[asyncio.Server] = []
    servers: list[DataPlane] = []
    try:
        objects = [
            tcp_service("db"), tcp_service("db-a"), tcp_service("db-b"),
            _obj("Workload", "web-1", {"address": "127.0.0.1", "inboundPort": 1,
                                       "serviceAccount": "web"}),
            _obj("TCPRoute", "split", {
                "parentRefs": [{"group": "", "kind": "Service", "name": "db", "port": 5432}],
                "rules": [{"backendRefs": [{"name": "db-a", "port": 5432, "weight": 1},
                                           {"name": "db-b", "port": 5432, "weight": 1}]}],
            }),
        ]  # fmt: skip
        for name in ("db-a", "db-b"):
            app = await loop.create_server(lambda n=name: NamedEcho(n.encode()), "127.0.0.1", 0)
            apps.append(app)
            server = DataPlane(fast_config(), on_interest=lambda key: None)
            servers.append(server)
            await server.start()
            server.set_credentials(pki.issue("default", "db"))
            app_port = app.sockets[0].getsockname()[1]
            server.apply_snapshot(
                Snapshot(
                    proxy=ProxySelf(
                        f"{name}-1", "default", "db", pki.identity("default", "db"),
                        ports=(LocalPort(5432, app_port, "db", "tcp"),), services=(name,),
                    ),
                    trust_domain=pki.trust_domain,
                    trust_bundle="",
                )
            )  # fmt: skip
            assert server.inbound_address is not None
            objects.append(
                _obj("Workload", f"{name}-1", {"address": "127.0.0.1", "serviceAccount": "db",
                                               "inboundPort": server.inbound_address[1],
                                               "ports": [{"name": "db", "port": 5432,
                                                          "appProtocol": "tcp"}]},
                     labels={"app": name})
            )  # fmt: skip
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        mesh = MeshView.from_objects(objects, trust_domain=pki.trust_domain, trust_bundle=BUNDLE)
        client.apply_snapshot(
            build_snapshot(mesh, ProxyInfo("web-1", "default", frozenset({"db.default"})))
        )
        listener = client.tcp_addresses[upstream]

        async def one() -> bytes:
            reader, writer = await asyncio.open_connection(*listener)
            try:
                writer.write(b"ping")
                return await asyncio.wait_for(reader.readexactly(9), 10)
            finally:
                writer.close()
                await writer.wait_closed()

        # 1:1 weights: 24 connections all to one backend would have odds of 2^-23.
        answers = {await one() for _ in range(24)}
        assert answers == {b"db-a:ping", b"db-b:ping"}
    finally:
        await client.close()
        for server in servers:
            await server.close()
        for app in apps:
            app.close()
            await app.wait_closed()
