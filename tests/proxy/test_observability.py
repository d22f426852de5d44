"""Tap, access logs and tracing in real proxies: curl → client proxy → mTLS → echo
proxy → echo app, all in this test's event loop, with an in-process OTLP receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from gossamer.proxy.dataplane import DataPlane
from gossamer.translate.snapshot import ServicePort, ServiceView
from gossamer.translate.telemetry import TelemetryView
from tests.proxy.conftest import EchoApp, Mesh, Pki, curl, fast_config, server_snapshot

pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class Hop:
    proxy: DataPlane
    app: EchoApp


@dataclass
class TwoHops:
    mesh: Mesh
    server: Hop


async def _two_hops(pki: Pki, **config: Any) -> TwoHops:
    """A client proxy and one echo workload, both built from `config`."""
    app = EchoApp("echo-1")
    app_port = await app.start()
    server = DataPlane(fast_config(**config), on_interest=lambda key: None)
    client = DataPlane(fast_config(**config), on_interest=lambda key: None)
    hops = TwoHops(Mesh(pki, client), Hop(server, app))
    await server.start()
    server.set_credentials(pki.issue("default", "echo"))
    server.apply_snapshot(server_snapshot(pki, "echo-1", app_port))
    await client.start()
    client.set_credentials(pki.issue("default", "web"))
    assert server.inbound_address is not None
    from gossamer.translate.snapshot import Endpoint

    endpoint = Endpoint("echo-1", "default", "127.0.0.1", server.inbound_address[1], 8080,
                        pki.identity("default", "echo"))  # fmt: skip
    client.apply_snapshot(
        hops.mesh.client_snapshot(
            (ServiceView("echo", "default", (ServicePort(80, "http", None, (endpoint,)),)),)
        )
    )
    for _ in range(200):
        if server.ready and client.ready:
            break
        await asyncio.sleep(0.01)
    return hops


async def _close(hops: TwoHops) -> None:
    await hops.mesh.client.close()
    await hops.server.proxy.close()
    await hops.server.app.close()


@pytest_asyncio.fixture
async def plain(pki: Pki) -> AsyncIterator[TwoHops]:
    """Two hops with tap, access logs and tracing all off."""
    hops = await _two_hops(pki, access_log=None, otel={})
    try:
        yield hops
    finally:
        await _close(hops)


async def _get(hops: TwoHops, path: str, *headers: str) -> tuple[int, dict[str, Any]]:
    args = ["-x", hops.mesh.proxy_url, "-w", "\n%{http_code}", f"http://echo{path}"]
    for h in headers:
        args += ["-H", h]
    code, out, err = await curl(*args)
    assert code == 0, err
    body, _, status = out.rpartition(b"\n")
    return int(status), json.loads(body) if body.startswith(b"{") else {}


class TapReader:
    """A tapper on a proxy's admin listener, reading its chunked JSON lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @staticmethod
    async def open(proxy: DataPlane, query: str = "") -> TapReader:
        assert proxy.admin_address is not None
        reader, writer = await asyncio.open_connection(*proxy.admin_address)
        writer.write(f"GET /tap{query} HTTP/1.1\r\nhost: admin\r\n\r\n".encode())
        return TapReader(reader, writer)

    async def head(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)

    async def event(self) -> dict[str, Any]:
        size = int(await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 5), 16)
        data = await self.reader.readexactly(size + 2)
        event: dict[str, Any] = json.loads(data[:-2])
        return event

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.mark.asyncio
async def test_with_nothing_observing_the_hot_path_has_no_hooks(plain: TwoHops) -> None:
    for proxy in (plain.mesh.client, plain.server.proxy):
        assert proxy.hooks is None and proxy.tracer is None
    status, body = await _get(plain, "/", f"traceparent: {TRACEPARENT}")
    assert status == 200
    # Without a collector the proxies pass the app's trace headers on untouched.
    headers = {k.lower(): v for k, v in body["headers"]}
    assert headers["traceparent"] == TRACEPARENT and "b3" not in headers


@pytest.mark.asyncio
async def test_a_tap_streams_each_request_made_after_it_started(plain: TwoHops) -> None:
    server = plain.server.proxy
    tap = await TapReader.open(server, "?path=/items&method=get")
    try:
        assert b" 200 " in await tap.head()
        started = await tap.event()
        assert started == {"type": "started", "workload": "echo-1", "namespace": "default",
                           "service": "echo"}  # fmt: skip
        assert server.hooks is not None
        assert (await _get(plain, "/other"))[0] == 200  # filtered out by path
        assert (await _get(plain, "/items/7?x=1"))[0] == 200
        event = await tap.event()
    finally:
        tap.close()
    assert event["path"] == "/items/7?x=1"
    assert (event["direction"], event["method"], event["status"]) == ("inbound", "GET", 200)
    assert event["source"]["identity"] == plain.mesh.pki.identity("default", "web")
    assert event["source"]["service"] == "web"
    assert event["destination"]["workload"] == "echo-1"
    assert event["tls"] is True and event["latency_ms"] > 0
    for _ in range(100):
        if server.hooks is None:
            break
        await asyncio.sleep(0.01)
    assert server.hooks is None, "the last tapper went, the hooks should be off again"


@pytest.mark.asyncio
async def test_a_tap_with_a_bad_filter_is_refused_with_the_reason(plain: TwoHops) -> None:
    tap = await TapReader.open(plain.server.proxy, "?direction=sideways")
    try:
        head = await tap.head()
        body = await asyncio.wait_for(tap.reader.read(-1), 5)
    finally:
        tap.close()
    assert b" 400 " in head and b"direction: must be inbound or outbound" in body


@pytest.mark.asyncio
async def test_an_outbound_tap_names_the_destination_workload_and_identity(plain: TwoHops) -> None:
    tap = await TapReader.open(plain.mesh.client, "?direction=outbound")
    try:
        await tap.head()
        await tap.event()
        assert (await _get(plain, "/"))[0] == 200
        event = await tap.event()
    finally:
        tap.close()
    assert event["direction"] == "outbound" and event["route"] == "echo.default:80"
    assert event["destination"] == {"workload": "echo-1", "namespace": "default",
        "service": "echo", "identity": plain.mesh.pki.identity("default", "echo")}  # fmt: skip
    assert event["source"]["workload"] == "web-1"


@pytest.mark.asyncio
async def test_an_access_log_has_one_json_line_per_request(pki: Pki, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    hops = await _two_hops(pki, access_log=str(log), otel={})
    try:
        assert hops.server.proxy.hooks is not None
        for path in ("/a", "/b"):
            assert (await _get(hops, path))[0] == 200
    finally:
        await _close(hops)  # closing flushes
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    inbound = [e for e in lines if e["direction"] == "inbound"]
    outbound = [e for e in lines if e["direction"] == "outbound"]
    assert [e["path"] for e in inbound] == ["/a", "/b"]
    assert [e["path"] for e in outbound] == ["/a", "/b"]
    assert all(e["status"] == 200 and e["time"].endswith("Z") for e in lines)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[str, list[bytes]]]:
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
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", bodies
    finally:
        await runner.cleanup()


def _spans(bodies: list[bytes]) -> list[Any]:
    spans = []
    for body in bodies:
        request = pb.ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                spans += list(ss.spans)
    return spans


def _attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which)
    return out


async def _traced(pki: Pki, endpoint: str) -> TwoHops:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    return await _two_hops(pki, access_log=None, otel=otel)


async def _wait_spans(bodies: list[bytes], n: int) -> list[Any]:
    for _ in range(300):
        spans = _spans(bodies)
        if len(spans) >= n:
            return spans
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {n} spans, got {len(_spans(bodies))}")


@pytest.mark.asyncio
async def test_two_hops_export_spans_with_one_trace_id_and_parent_links(
    pki: Pki, receiver: tuple[str, list[bytes]]
) -> None:
    endpoint, bodies = receiver
    hops = await _traced(pki, endpoint)
    try:
        status, body = await _get(hops, "/items", f"traceparent: {TRACEPARENT}")
        assert status == 200
        spans = await _wait_spans(bodies, 2)
    finally:
        await _close(hops)
    client = next(s for s in spans if s.kind == 3)
    server = next(s for s in spans if s.kind == 2)
    assert client.trace_id.hex() == server.trace_id.hex() == TRACEPARENT[3:35]
    assert client.parent_span_id.hex() == TRACEPARENT[36:52]
    assert server.parent_span_id == client.span_id
    # The app sees the inbound span as its parent, in both formats.
    headers = {k.lower(): v for k, v in body["headers"]}
    assert headers["traceparent"] == f"00-{server.trace_id.hex()}-{server.span_id.hex()}-01"
    assert headers["b3"] == f"{server.trace_id.hex()}-{server.span_id.hex()}-1"
    attrs = _attrs(client)
    assert attrs["gossamer.source.workload"] == "web-1"
    assert attrs["gossamer.destination.workload"] == "echo-1"
    assert attrs["gossamer.route"] == "echo.default:80"
    assert attrs["http.response.status_code"] == 200 and attrs["gossamer.retries"] == 0
    assert _attrs(server)["gossamer.source.identity"] == pki.identity("default", "web")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "header",
    ["traceparent: 00-zzzz-not-a-trace-01", "b3: 1-2-3-4-5", "x-b3-traceid: 00"],
    ids=["bad-traceparent", "bad-b3-single", "half-a-b3-multi"],
)
async def test_a_malformed_trace_header_starts_a_new_trace_and_the_request_succeeds(
    pki: Pki, receiver: tuple[str, list[bytes]], header: str
) -> None:
    endpoint, bodies = receiver
    hops = await _traced(pki, endpoint)
    try:
        status, _ = await _get(hops, "/", header)
        assert status == 200
        spans = await _wait_spans(bodies, 2)
    finally:
        await _close(hops)
    client = next(s for s in spans if s.kind == 3)
    server = next(s for s in spans if s.kind == 2)
    assert client.parent_span_id == b"" and server.parent_span_id == client.span_id


@pytest.mark.asyncio
async def test_an_absent_collector_never_fails_or_holds_a_request(pki: Pki) -> None:
    hops = await _traced(pki, "http://127.0.0.1:9")
    try:
        for _ in range(3):
            assert (await _get(hops, "/"))[0] == 200
    finally:
        await _close(hops)


def _with_telemetry(proxy: DataPlane, view: TelemetryView) -> None:
    assert proxy.snapshot is not None
    proxy.apply_snapshot(replace(proxy.snapshot, telemetry=view))


@pytest.mark.asyncio
async def test_tracing_settings_in_the_snapshot_turn_tracing_on_and_off(
    pki: Pki, receiver: tuple[str, list[bytes]]
) -> None:
    endpoint, bodies = receiver
    hops = await _two_hops(pki, access_log=None, otel={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    proxies = (hops.mesh.client, hops.server.proxy)
    try:
        for proxy in proxies:  # a collector's base URL: the proxy adds /v1/traces
            _with_telemetry(proxy, TelemetryView(tracing_endpoint=endpoint))
            assert proxy.tracer is not None and proxy.hooks is not None
        status, _ = await _get(hops, "/from-mesh-config", f"traceparent: {TRACEPARENT}")
        assert status == 200
        spans = await _wait_spans(bodies, 2)
        client = next(s for s in spans if s.kind == 3)
        server = next(s for s in spans if s.kind == 2)
        assert client.trace_id.hex() == server.trace_id.hex() == TRACEPARENT[3:35]
        assert server.parent_span_id == client.span_id
        assert _attrs(server)["url.path"] == "/from-mesh-config"
        tracing = hops.server.proxy.observability_dump()["tracing"]
        assert tracing["endpoint"] == endpoint + "/v1/traces"

        for proxy in proxies:  # the setting removed from mesh config: off again
            _with_telemetry(proxy, TelemetryView())
            assert proxy.tracer is None and proxy.hooks is None
        status, body = await _get(hops, "/untraced", f"traceparent: {TRACEPARENT}")
        assert status == 200
        headers = {k.lower(): v for k, v in body["headers"]}
        assert headers["traceparent"] == TRACEPARENT
    finally:
        await _close(hops)


@pytest.mark.asyncio
async def test_the_proxys_own_environment_wins_over_tracing_in_mesh_config(
    pki: Pki, receiver: tuple[str, list[bytes]]
) -> None:
    endpoint, _ = receiver
    hops = await _traced(pki, endpoint)
    try:
        server = hops.server.proxy
        tracer = server.tracer
        assert tracer is not None
        _with_telemetry(server, TelemetryView("http://127.0.0.1:9", "always_off", None, True))
        assert server.tracer is not None
        assert server.tracer.describe()["endpoint"] == endpoint + "/v1/traces"
        assert server.tracer.sampler.name == "always_off"  # not set in its environment
        _with_telemetry(server, TelemetryView("http://127.0.0.1:9"))
        assert server.tracer is not tracer and server.tracer.sampler.name == tracer.sampler.name
    finally:
        await _close(hops)


@pytest.mark.asyncio
async def test_an_access_log_turned_on_in_mesh_config_writes_to_standard_output(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    hops = await _two_hops(pki, access_log=None, otel={})
    try:
        _with_telemetry(hops.server.proxy, TelemetryView(access_log=True))
        assert (await _get(hops, "/logged-by-mesh-config"))[0] == 200
    finally:
        await _close(hops)  # closing flushes
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["direction"], e["path"]) for e in lines] == [("inbound", "/logged-by-mesh-config")]


@pytest.mark.asyncio
async def test_an_access_log_set_in_the_environment_stays_when_mesh_config_turns_it_off(
    pki: Pki, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    hops = await _two_hops(pki, access_log=str(log), otel={})
    try:
        _with_telemetry(hops.server.proxy, TelemetryView(access_log=False))
        assert hops.server.proxy.access_log is not None
        assert (await _get(hops, "/still-logged"))[0] == 200
    finally:
        await _close(hops)
    assert "/still-logged" in log.read_text()
