"""Tracing wired into the proxy: a span per hop, context in and out of the headers.

On by configuring an OTLP endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_EXPORTER_OTLP_ENDPOINT`); without one the proxy leaves trace headers as the app
sent them and spends nothing on tracing. With one, each request:

- at its head (`start`): the incoming context is read (W3C, then B3; a malformed one
  starts a new trace), a span is started under it (CLIENT on the outbound side,
  SERVER on the inbound side), and the trace headers are replaced by the new span's
  context in both formats, so the next hop's span is this span's child;
- at its end (`finish`): the span gets the mesh's attributes and goes to the
  exporter's bounded queue, which drops rather than waits.

A request the sampler leaves out gets no span, only the onward context with the
sampled flag off, so later hops agree. HTTP/1.1 exchanges (`start`) and HTTP/2
streams (`start_stream`, on the stream's header list) are traced alike.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from gossamer.telemetry.tracing import (
    CLIENT,
    SERVER,
    STATUS_ERROR,
    OtlpExporter,
    Sampler,
    Span,
    extract,
    inject,
    start_span,
    traces_endpoint,
)

if TYPE_CHECKING:
    from gossamer.proxy.forward.exchange import Exchange
    from gossamer.proxy.wire.http1 import Headers

# Incoming headers that carry trace context: read, then replaced by ours.
TRACE_HEADERS: Final = frozenset(
    (
        b"traceparent",
        b"tracestate",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-b3-flags",
    )
)


class ProxyTracer:
    def __init__(self, sampler: Sampler, exporter: OtlpExporter) -> None:
        self.sampler = sampler
        self.exporter = exporter
        self._resource_for: tuple[str, str, str] | None = None

    @staticmethod
    def from_env(env: Mapping[str, str]) -> ProxyTracer | None:
        """A tracer configured the OpenTelemetry way; None when no endpoint is set."""
        endpoint = traces_endpoint(env)
        if endpoint is None:
            return None
        try:  # the batch span processor's delay, as OpenTelemetry SDKs read it
            interval = int(env.get("OTEL_BSP_SCHEDULE_DELAY", "1000")) / 1000
        except ValueError:
            interval = 1.0
        exporter = OtlpExporter(endpoint, {}, interval=min(max(interval, 0.01), 60.0))
        return ProxyTracer(Sampler.from_env(env), exporter)

    async def start_exporting(self) -> None:
        await self.exporter.start()

    async def stop(self) -> None:
        await self.exporter.stop()

    def start(self, ex: Exchange, outbound: bool) -> None:
        """Read the request's context, start its span, write the onward context."""
        head = ex.head
        ex.trace, head.headers = self.start_stream(head.method, head.headers, outbound)

    def start_stream(
        self, method: bytes, headers: Headers, outbound: bool
    ) -> tuple[Span | None, Headers]:
        """The span for a request with `headers` (None: not sampled), and the headers
        to send on: the trace headers replaced by the span's context. An HTTP/2
        stream's list keeps its pseudo-headers first."""
        found: dict[str, str] = {}
        kept = []
        for name, value in headers:
            lower = name.lower()
            if lower in TRACE_HEADERS:
                found[lower.decode("latin-1")] = value.decode("latin-1")
            else:
                kept.append((name, value))
        parent = extract(found) if found else None
        kind = CLIENT if outbound else SERVER
        span, onward = start_span(parent, self.sampler, method.decode("latin-1"), kind)
        kept.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in inject(onward))
        return span, kept

    def finish(self, span: Span, event: dict[str, Any], workload: tuple[str, str, str]) -> None:
        """End `span` with the mesh's attributes (from the request's tap event)."""
        span.end_ns = time.time_ns()
        source, destination = event["source"], event["destination"]
        status = event["status"]
        attrs = span.attributes
        attrs["http.request.method"] = event["method"]
        attrs["url.path"] = event["path"]
        if event["authority"]:
            attrs["server.address"] = event["authority"]
        attrs["http.response.status_code"] = status
        attrs["network.protocol.version"] = event["protocol"].removeprefix("HTTP/")
        grpc_status = event.get("grpc_status")
        if grpc_status is not None:
            attrs["rpc.system"] = "grpc"
            attrs["rpc.grpc.status_code"] = grpc_status
        attrs["gossamer.direction"] = event["direction"]
        for side, where in (("source", source), ("destination", destination)):
            for key in ("workload", "namespace", "service", "identity"):
                value = where.get(key)
                if value:
                    attrs[f"gossamer.{side}.{key}"] = value
        if event.get("route"):
            attrs["gossamer.route"] = event["route"]
        attrs["gossamer.retries"] = event["retries"]
        if event.get("upstream"):
            attrs["gossamer.upstream"] = event["upstream"]
        span.name = f"{event['method']} {destination.get('service') or event['authority']}"
        if status >= 500 or status == 0:
            span.status = STATUS_ERROR
            span.status_message = f"HTTP {status}"
        elif grpc_status:
            span.status = STATUS_ERROR
            span.status_message = f"gRPC status {grpc_status}"
        if self._resource_for != workload:
            self._resource_for = workload
            name, namespace, service = workload
            self.exporter.resource = {
                "service.name": service or name or "gossamer-proxy",
                "service.namespace": namespace,
                "service.instance.id": name,
                "telemetry.sdk.name": "gossamer",
            }
        self.exporter.submit(span)

    def describe(self) -> dict[str, Any]:
        exporter = self.exporter
        return {
            "endpoint": exporter.endpoint,
            "sampler": self.sampler.name,
            "ratio": self.sampler.ratio,
            "exported": exporter.exported,
            "dropped": exporter.dropped,
            "queued": len(exporter.queue),
        }
