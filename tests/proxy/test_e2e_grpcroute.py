"""End to end: a GRPCRoute splits and edits real grpcio calls by service and method."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from gossamer.proxy.dataplane import DataPlane
from tests.proxy.conftest import Pki, Workload, fast_config
from tests.proxy.test_e2e_grpc import SERVICE, grpc_server, grpc_workload
from tests.proxy.test_traffic import Traffic, ref


def grpcroute(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "split", "namespace": "default"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}], "rules": rules},
    }


@pytest.mark.asyncio
async def test_a_grpcroute_splits_and_edits_calls_by_service_and_method(pki: Pki) -> None:
    servers: list[grpc.Server] = []
    proxies: list[DataPlane] = []
    client = DataPlane(fast_config(), on_interest=lambda key: None)
    try:
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        traffic = Traffic(pki, client, services={"v1": ["v1"], "v2": ["v2"], "echo": ["v1"]})
        for name in ("v1", "v2"):
            server, port = grpc_server(name)
            servers.append(server)
            proxy = await grpc_workload(pki, name, port)
            proxies.append(proxy)
            identity = pki.identity("default", "echo")
            traffic.workloads[name] = Workload(name, None, proxy, identity)  # type: ignore[arg-type]
        edit = {"set": [{"name": "x-routed", "value": "by-grpcroute"}]}
        traffic.apply(
            grpcroute([
                {
                    "matches": [{"method": {"service": SERVICE, "method": "Who"},
                                 "headers": [{"name": "x-tier", "value": "gold"}]}],
                    "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": edit}],
                    "backendRefs": [ref("v2", 1), ref("v1", 0)],
                },
                {
                    "matches": [{"method": {"type": "RegularExpression", "method": "W.o"}}],
                    "backendRefs": [ref("v1", 1)],
                },
            ])
        )  # fmt: skip
        assert client.outbound_address is not None
        address = client.outbound_address

        def call() -> list[bytes]:
            options = [("grpc.default_authority", "echo")]
            with grpc.insecure_channel(f"{address[0]}:{address[1]}", options=options) as ch:
                who = ch.unary_unary(f"/{SERVICE}/Who")
                got = [who(b"", metadata=[("x-tier", "gold")], timeout=10) for _ in range(3)]
                got.append(who(b"", timeout=10))  # no header: the second rule
                with pytest.raises(grpc.RpcError) as e:  # no rule matches another method
                    ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=10)
                got.append(str(e.value.code()).encode())
                return got

        got = await asyncio.wait_for(asyncio.to_thread(call), 60)
        assert got == [b"v2 by-grpcroute"] * 3 + [b"v1 -", b"StatusCode.UNIMPLEMENTED"]
    finally:
        await client.close()
        for proxy in proxies:
            await proxy.close()
        for server in servers:
            server.stop(None)
