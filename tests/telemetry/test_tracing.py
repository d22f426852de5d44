"""Trace context, sampling and OTLP export (decoded with OpenTelemetry's own classes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from gossamer.telemetry.tracing import (
    CLIENT,
    SERVER,
    STATUS_ERROR,
    OtlpExporter,
    Sampler,
    Span,
    TraceContext,
    encode_export_request,
    extract,
    inject,
    start_span,
    traces_endpoint,
)

pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN = bytes.fromhex("00f067aa0ba902b7")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
            TraceContext(TRACE, SPAN, True),
        ),
        (
            {
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                "tracestate": "congo=t61rcWkgMzE",
            },
            TraceContext(TRACE, SPAN, False, "congo=t61rcWkgMzE"),
        ),
        (
            {"traceparent": "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"},
            TraceContext(TRACE, SPAN, True),
        ),
        (
            {"b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"},
            TraceContext(TRACE, SPAN, True),
        ),
        (
            {"b3": "a3ce929d0e0e4736-00f067aa0ba902b7-0-05e3ac9a4f6e3b90"},
            TraceContext(bytes(8) + TRACE[8:], SPAN, False),
        ),
        (
            {
                "x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
                "x-b3-spanid": "00f067aa0ba902b7",
                "x-b3-sampled": "1",
            },
            TraceContext(TRACE, SPAN, True),
        ),
        (
            {"traceparent": "garbage", "b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"},
            TraceContext(TRACE, SPAN, True),
        ),
    ],
    ids=[
        "W3C traceparent, sampled",
        "W3C with tracestate, not sampled",
        "a later W3C version with more fields",
        "B3 single header",
        "B3 single with a 64-bit trace id, padded",
        "B3 multi headers",
        "a malformed traceparent falls back to B3",
    ],
)
def test_incoming_trace_context_is_read(headers: dict[str, str], expected: TraceContext) -> None:
    assert extract(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"},
        {"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"},
        {"b3": "not-a-trace"},
        {"b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-maybe"},
        {"x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736"},
        {},
    ],
    ids=[
        "an all-zero trace id",
        "an all-zero parent id",
        "the forbidden version ff",
        "upper-case hex",
        "version 00 with extra fields",
        "B3 that is not hex",
        "B3 with an unknown sampling flag",
        "B3 multi without a span id",
        "no headers at all",
    ],
)
def test_malformed_or_missing_context_starts_a_new_trace(headers: dict[str, str]) -> None:
    assert extract(headers) is None
    span, onward = start_span(extract(headers), Sampler("always_on"), "GET /", SERVER)
    assert span is not None and span.parent_span_id == b"" and any(onward.trace_id)


def test_outgoing_headers_carry_both_formats() -> None:
    headers = dict(inject(TraceContext(TRACE, SPAN, True, "a=1")))
    assert headers == {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "a=1",
        "b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
    }
    assert extract(headers) == TraceContext(TRACE, SPAN, True, "a=1")


@pytest.mark.parametrize(
    ("env", "parent", "trace_id", "sampled"),
    [
        ({}, None, TRACE, True),
        ({}, TraceContext(TRACE, SPAN, False), TRACE, False),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, TraceContext(TRACE, SPAN, True), TRACE, False),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, TraceContext(TRACE, SPAN, False), TRACE, True),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
            None,
            bytes(8) + (2**62).to_bytes(8, "big"),
            True,
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
            None,
            bytes(8) + (2**63 + 1).to_bytes(8, "big"),
            False,
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
            TraceContext(TRACE, SPAN, True),
            TRACE,
            True,
        ),
        ({"OTEL_TRACES_SAMPLER": "bogus"}, None, TRACE, True),
    ],
    ids=[
        "by default a new trace is sampled",
        "by default the parent's decision is kept",
        "always_off samples nothing",
        "always_on ignores the parent",
        "a ratio samples trace ids below its share",
        "a ratio leaves out trace ids above its share",
        "parent-based ratio follows a sampled parent",
        "an unknown sampler falls back to the default",
    ],
)
def test_sampling_follows_the_opentelemetry_settings(
    env: dict[str, str], parent: TraceContext | None, trace_id: bytes, sampled: bool
) -> None:
    assert Sampler.from_env(env).sample(parent, trace_id) is sampled


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, None),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
            "http://collector:4318/v1/traces",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:9999/traces",
            },
            "http://b:9999/traces",
        ),
    ],
    ids=["no endpoint: no export", "the base endpoint gets /v1/traces", "the traces one wins"],
)
def test_the_collector_endpoint_comes_from_the_environment(
    env: dict[str, str], endpoint: str | None
) -> None:
    assert traces_endpoint(env) == endpoint


def test_an_export_request_decodes_with_opentelemetrys_own_classes() -> None:
    span = Span(
        trace_id=TRACE, span_id=bytes(range(1, 9)), parent_span_id=SPAN, name="GET /items",
        kind=CLIENT, start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_000_250_000_000,
        attributes={"http.response.status_code": 503, "gossamer.retries": -1, "tls": True,
                    "ratio": 0.5, "gossamer.dst.service": "catalog"},
        status=STATUS_ERROR, status_message="no endpoints", tracestate="a=1",
    )  # fmt: skip
    body = encode_export_request([span], {"service.name": "web"})
    request = pb.ExportTraceServiceRequest()
    request.ParseFromString(body)
    [rs] = request.resource_spans
    assert {a.key: a.value.string_value for a in rs.resource.attributes} == {"service.name": "web"}
    [ss] = rs.scope_spans
    assert ss.scope.name == "gossamer"
    [s] = ss.spans
    assert (s.trace_id, s.span_id, s.parent_span_id) == (TRACE, bytes(range(1, 9)), SPAN)
    assert (s.name, s.kind, s.trace_state) == ("GET /items", CLIENT, "a=1")
    assert (s.start_time_unix_nano, s.end_time_unix_nano) == (span.start_ns, span.end_ns)
    values = {a.key: a.value for a in s.attributes}
    assert values["http.response.status_code"].int_value == 503
    assert values["gossamer.retries"].int_value == -1
    assert values["tls"].bool_value is True
    assert values["ratio"].double_value == 0.5
    assert values["gossamer.dst.service"].string_value == "catalog"
    assert (s.status.code, s.status.message) == (STATUS_ERROR, "no endpoints")


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP receiver that keeps each request body."""
    bodies: list[bytes] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        bodies.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.add_routes([web.post("/v1/traces", traces)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1/traces", bodies
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_spans_of_two_hops_arrive_with_one_trace_id_and_parent_links(
    receiver: tuple[str, list[bytes]],
) -> None:
    endpoint, bodies = receiver
    exporter = OtlpExporter(endpoint, {"service.name": "mesh"}, interval=0.05)
    await exporter.start()
    sampler = Sampler()
    client, onward = start_span(None, sampler, "GET /", CLIENT)
    server, _ = start_span(extract(dict(inject(onward))), sampler, "GET /", SERVER)
    assert client is not None and server is not None
    for s in (client, server):
        s.end_ns = s.start_ns + 1000
        exporter.submit(s)
    for _ in range(100):
        if exporter.exported == 2:
            break
        await asyncio.sleep(0.02)
    await exporter.stop()
    spans = []
    for body in bodies:
        request = pb.ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    by_kind = {s.kind: s for s in spans}
    assert by_kind[CLIENT].trace_id == by_kind[SERVER].trace_id
    assert by_kind[SERVER].parent_span_id == by_kind[CLIENT].span_id
    assert by_kind[CLIENT].parent_span_id == b""


@pytest.mark.asyncio
async def test_an_absent_collector_drops_spans_and_never_blocks() -> None:
    exporter = OtlpExporter("http://127.0.0.1:9/v1/traces", {}, max_queue=3, timeout=0.5)
    await exporter.start()
    span, _ = start_span(None, Sampler(), "GET /", SERVER)
    assert span is not None
    for _ in range(5):
        exporter.submit(span)  # returns at once, full or not
    assert len(exporter.queue) <= 3 and exporter.dropped >= 2
    await exporter.flush()
    assert exporter.exported == 0 and exporter.dropped == 5
    await exporter.stop()
