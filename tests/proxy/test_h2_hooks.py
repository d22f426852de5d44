"""Tap, access logs and spans for HTTP/2 streams, as for HTTP/1.1 requests: an HTTP/2
client (grpcio, or the `h2` package) → client proxy → mTLS → server proxy → app (gRPC
over h2c, or HTTP/1.1), all in this test's event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from aiohttp import web

from gossamer.translate.telemetry import TelemetryView
from tests.proxy.conftest import EchoApp, Pki, curl
from tests.proxy.test_e2e_grpc import SERVICE, grpc_server
from tests.proxy.test_e2e_upgrade import two_proxies
from tests.proxy.test_h2to1 import H2Client, echoed
from tests.proxy.test_observability import (
    TRACEPARENT,
    TapReader,
    _attrs,
    _close,
    _two_hops,
    _wait_spans,
    _with_telemetry,
)


@pytest_asyncio.fixture
async def collector() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP receiver that keeps each request body."""
    bodies: list[bytes] = []

    async def traces(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.add_routes([web.post("/v1/traces", traces)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", bodies
    finally:
        await runner.cleanup()


def unary_calls(address: tuple[str, int], *requests: bytes, metadata: Any = None) -> list[str]:
    """One unary call per request; the status code name each ended with."""
    got = []
    options = [("grpc.default_authority", "echo")]
    with grpc.insecure_channel(f"{address[0]}:{address[1]}", options=options) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        for request in requests:
            try:
                unary(request, timeout=10, metadata=metadata)
                got.append("OK")
            except grpc.RpcError as e:
                got.append(e.code().name)
    return got


@pytest.mark.asyncio
async def test_a_tap_shows_grpc_calls_with_their_protocol_and_grpc_status(pki: Pki) -> None:
    server, app_port = grpc_server()
    try:
        async with two_proxies(pki, app_port, "grpc") as (client, proxy):
            outbound = await TapReader.open(client, f"?path=/{SERVICE}")
            inbound = await TapReader.open(proxy)
            try:
                for tap in (outbound, inbound):
                    await tap.head()
                    await tap.event()  # started
                assert client.outbound_address is not None
                codes = await asyncio.to_thread(
                    unary_calls, client.outbound_address, b"hi", b"fail"
                )
                assert codes == ["OK", "NOT_FOUND"]
                out_events = [await outbound.event() for _ in range(2)]
                in_events = [await inbound.event() for _ in range(2)]
            finally:
                outbound.close()
                inbound.close()
    finally:
        server.stop(None)
    for events, direction in ((out_events, "outbound"), (in_events, "inbound")):
        seen = [
            (e["direction"], e["protocol"], e["method"], e["path"], e["status"]) for e in events
        ]
        assert seen == [(direction, "HTTP/2", "POST", f"/{SERVICE}/Unary", 200)] * 2
        assert [e["grpc_status"] for e in events] == [0, 5]
    assert out_events[0]["destination"] == {"workload": "echo-1", "namespace": "default",
        "service": "echo", "identity": pki.identity("default", "echo")}  # fmt: skip
    assert out_events[0]["upstream"].startswith("echo-1.default at 127.0.0.1:")
    assert in_events[0]["source"]["identity"] == pki.identity("default", "web")
    assert in_events[0]["source"]["service"] == "web" and in_events[0]["tls"] is True


@pytest.mark.asyncio
async def test_spans_for_grpc_calls_link_the_two_hops_and_carry_the_grpc_status(
    pki: Pki, collector: tuple[str, list[bytes]]
) -> None:
    endpoint, bodies = collector
    server, app_port = grpc_server()
    try:
        async with two_proxies(pki, app_port, "grpc") as (client, proxy):
            for dp in (client, proxy):
                _with_telemetry(dp, TelemetryView(tracing_endpoint=endpoint))
            assert client.outbound_address is not None
            codes = await asyncio.to_thread(
                unary_calls, client.outbound_address, b"fail",
                metadata=[("traceparent", TRACEPARENT)],
            )  # fmt: skip
            assert codes == ["NOT_FOUND"]
            spans = await _wait_spans(bodies, 2)
    finally:
        server.stop(None)
    client_span = next(s for s in spans if s.kind == 3)
    server_span = next(s for s in spans if s.kind == 2)
    assert client_span.trace_id.hex() == server_span.trace_id.hex() == TRACEPARENT[3:35]
    assert client_span.parent_span_id.hex() == TRACEPARENT[36:52]
    assert server_span.parent_span_id == client_span.span_id
    for span in (client_span, server_span):
        attrs = _attrs(span)
        assert attrs["network.protocol.version"] == "2"
        assert attrs["rpc.grpc.status_code"] == 5 and attrs["rpc.system"] == "grpc"
        assert attrs["http.response.status_code"] == 200
        assert span.status.code == 2  # ERROR: a gRPC failure behind an HTTP 200
    assert _attrs(client_span)["gossamer.destination.workload"] == "echo-1"


@pytest.mark.asyncio
async def test_an_access_log_has_a_line_per_http2_stream_each_way(pki: Pki, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    hops = await _two_hops(pki, access_log=str(log), otel={})
    try:
        async with H2Client.connect(hops.mesh.client) as client:
            assert (await client.request("/over-h2")).status == 200
        code, _, err = await curl("-x", hops.mesh.proxy_url, "http://echo/over-h1")
        assert code == 0, err
    finally:
        await _close(hops)  # closing flushes
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    got = sorted((e["path"], e["direction"], e["protocol"], e["status"]) for e in lines)
    assert got == [
        ("/over-h1", "inbound", "HTTP/1.1", 200),
        ("/over-h1", "outbound", "HTTP/1.1", 200),
        ("/over-h2", "inbound", "HTTP/2", 200),
        ("/over-h2", "outbound", "HTTP/2", 200),
    ]
    assert all(e["grpc_status"] is None and e["authority"] == "echo" for e in lines)


@pytest.mark.asyncio
async def test_with_nothing_observing_http2_streams_keep_the_apps_trace_headers(
    pki: Pki,
) -> None:
    app = EchoApp("echo-1")
    await app.start()
    try:
        async with two_proxies(pki, app.port) as (client, server):
            assert client.hooks is None and server.hooks is None
            async with H2Client.connect(client) as h2client:
                answer = await h2client.request("/", "GET", ("traceparent", TRACEPARENT))
    finally:
        await app.close()
    headers = echoed(answer)["headers"]
    assert headers["traceparent"] == TRACEPARENT and "b3" not in headers
