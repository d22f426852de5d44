"""Tracing for the proxy: trace context in headers, sampling, spans, OTLP export.

- Context: W3C `traceparent`/`tracestate` and B3 (single `b3` header or the
  `x-b3-*` set) are read; a malformed header starts a new trace and never fails the
  request. Both W3C and B3 single are written on the way out.
- Sampling: configured the OpenTelemetry way (`OTEL_TRACES_SAMPLER`,
  `OTEL_TRACES_SAMPLER_ARG`), parent-based by default.
- Export: OTLP over HTTP with protobuf bodies (`OTEL_EXPORTER_OTLP_ENDPOINT` +
  `/v1/traces`, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given). Spans wait in a
  bounded queue and are sent in batches by a background task: a slow or absent
  collector drops spans, it never slows a request.

The protobuf encoding is written by hand (a few message types, no dependency); the
tests decode it with the OpenTelemetry project's own generated classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import struct
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import aiohttp

log = logging.getLogger("gossamer.telemetry.tracing")

_TRACEPARENT = re.compile(
    r"^(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?$"
)
_HEX = re.compile(r"^[0-9a-f]+$")
ZERO_TRACE: Final = bytes(16)
ZERO_SPAN: Final = bytes(8)


@dataclass(frozen=True)
class TraceContext:
    """Where a request sits in a trace: the caller's span, and whether it is sampled."""

    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes: the parent of the next span
    sampled: bool
    tracestate: str = ""

    def traceparent(self) -> str:
        flags = "01" if self.sampled else "00"
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{flags}"

    def b3(self) -> str:
        return f"{self.trace_id.hex()}-{self.span_id.hex()}-{'1' if self.sampled else '0'}"


def parse_traceparent(value: str, tracestate: str = "") -> TraceContext | None:
    """W3C Trace Context level 1; None for anything malformed."""
    m = _TRACEPARENT.match(value.strip())
    if m is None:
        return None
    version = m.group("version")
    if version == "ff" or (version == "00" and m.group("rest")):
        return None
    trace_id, span_id = bytes.fromhex(m.group("trace")), bytes.fromhex(m.group("span"))
    if trace_id == ZERO_TRACE or span_id == ZERO_SPAN:
        return None
    sampled = bool(int(m.group("flags"), 16) & 1)
    return TraceContext(trace_id, span_id, sampled, tracestate.strip()[:512])


def _b3_id(text: str, lengths: tuple[int, ...]) -> bytes | None:
    text = text.strip().lower()
    if len(text) not in lengths or not _HEX.match(text):
        return None
    raw = bytes.fromhex(text.rjust(32 if len(text) > 16 else 16, "0"))
    return None if not any(raw) else raw


def _b3_sampled(text: str | None) -> bool | None:
    if text is None:
        return None
    return {"1": True, "d": True, "true": True, "0": False, "false": False}.get(text.strip())


def parse_b3(headers: Mapping[str, str]) -> TraceContext | None:
    """B3 single (`b3: trace-span[-sampled[-parent]]`) or multi (`x-b3-*`) headers."""
    single = headers.get("b3")
    if single is not None:
        parts = single.strip().split("-")
        if len(parts) < 2 or len(parts) > 4:
            return None
        trace_id = _b3_id(parts[0], (16, 32))
        span_id = _b3_id(parts[1], (16,))
        sampled = _b3_sampled(parts[2]) if len(parts) > 2 else True
        if trace_id is None or span_id is None or sampled is None:
            return None
        return TraceContext(trace_id.rjust(16, b"\0"), span_id, sampled)
    raw_trace, raw_span = headers.get("x-b3-traceid"), headers.get("x-b3-spanid")
    if raw_trace is None or raw_span is None:
        return None
    trace_id, span_id = _b3_id(raw_trace, (16, 32)), _b3_id(raw_span, (16,))
    if trace_id is None or span_id is None:
        return None
    flags = _b3_sampled(headers.get("x-b3-flags"))
    sampled = _b3_sampled(headers.get("x-b3-sampled"))
    return TraceContext(trace_id.rjust(16, b"\0"), span_id, bool(flags or sampled is not False))


def extract(headers: Mapping[str, str]) -> TraceContext | None:
    """The incoming context (header names lower-case): W3C first, then B3."""
    traceparent = headers.get("traceparent")
    if traceparent is not None:
        ctx = parse_traceparent(traceparent, headers.get("tracestate", ""))
        if ctx is not None:
            return ctx
    return parse_b3(headers)


def inject(ctx: TraceContext) -> list[tuple[str, str]]:
    """Headers that carry `ctx` to the next hop, in both formats."""
    out = [("traceparent", ctx.traceparent())]
    if ctx.tracestate:
        out.append(("tracestate", ctx.tracestate))
    out.append(("b3", ctx.b3()))
    return out


# -- sampling ------------------------------------------------------------------------

SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


@dataclass(frozen=True)
class Sampler:
    name: str = "parentbased_always_on"
    ratio: float = 1.0

    @staticmethod
    def from_env(env: Mapping[str, str]) -> Sampler:
        name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
        if name not in SAMPLERS:
            log.warning(
                "OTEL_TRACES_SAMPLER=%s is not supported; using parentbased_always_on", name
            )
            name = "parentbased_always_on"
        ratio = 1.0
        if name.endswith("traceidratio"):
            try:
                ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
            except ValueError:
                ratio = 1.0
            ratio = min(max(ratio, 0.0), 1.0)
        return Sampler(name, ratio)

    def sample(self, parent: TraceContext | None, trace_id: bytes) -> bool:
        if parent is not None and self.name.startswith("parentbased_"):
            return parent.sampled
        root = self.name.removeprefix("parentbased_")
        if root == "always_on":
            return True
        if root == "always_off":
            return False
        # OpenTelemetry's TraceIdRatioBased: the trace id's low 64 bits against a bound.
        return int.from_bytes(trace_id[8:], "big") < self.ratio * 2**64


# -- spans -----------------------------------------------------------------------------

SERVER: Final = 2  # OTLP SpanKind
CLIENT: Final = 3
STATUS_UNSET: Final = 0
STATUS_ERROR: Final = 2

AttributeValue = str | bool | int | float


@dataclass
class Span:
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    name: str
    kind: int
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    status: int = STATUS_UNSET
    status_message: str = ""
    tracestate: str = ""


def start_span(
    parent: TraceContext | None, sampler: Sampler, name: str, kind: int
) -> tuple[Span | None, TraceContext]:
    """A new span under `parent` (or a new trace), and the context to send onwards.

    The span is None when the trace is not sampled: nothing to record or export, but
    the context still travels so later hops agree on the decision.
    """
    trace_id = parent.trace_id if parent is not None else os.urandom(16)
    span_id = os.urandom(8)
    sampled = sampler.sample(parent, trace_id)
    onward = TraceContext(trace_id, span_id, sampled, parent.tracestate if parent else "")
    if not sampled:
        return None, onward
    span = Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent.span_id if parent is not None else b"",
        name=name,
        kind=kind,
        start_ns=time.time_ns(),
        tracestate=onward.tracestate,
    )
    return span, onward


# -- OTLP protobuf encoding ----------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values are ten-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _varint(len(data)) + data


def _str(number: int, text: str) -> bytes:
    return _bytes(number, text.encode()) if text else b""


def _fixed64(number: int, n: int) -> bytes:
    return _key(number, 1) + struct.pack("<Q", n)


def _any_value(v: AttributeValue) -> bytes:
    if isinstance(v, bool):
        return _key(2, 0) + _varint(int(v))
    if isinstance(v, int):
        return _key(3, 0) + _varint(v)
    if isinstance(v, float):
        return _key(4, 1) + struct.pack("<d", v)
    return _bytes(1, str(v).encode())


def _key_values(number: int, attributes: Mapping[str, AttributeValue]) -> bytes:
    return b"".join(
        _bytes(number, _str(1, k) + _bytes(2, _any_value(v))) for k, v in attributes.items()
    )


def _span(s: Span) -> bytes:
    status = b""
    if s.status:
        status = _bytes(15, _str(2, s.status_message) + _key(3, 0) + _varint(s.status))
    return b"".join(
        [
            _bytes(1, s.trace_id),
            _bytes(2, s.span_id),
            _str(3, s.tracestate),
            _bytes(4, s.parent_span_id) if s.parent_span_id else b"",
            _str(5, s.name),
            _key(6, 0) + _varint(s.kind),
            _fixed64(7, s.start_ns),
            _fixed64(8, s.end_ns),
            _key_values(9, s.attributes),
            status,
        ]
    )


def encode_export_request(
    spans: Iterable[Span], resource: Mapping[str, AttributeValue], scope: str = "gossamer"
) -> bytes:
    """An OTLP `ExportTraceServiceRequest` with one resource and one scope."""
    from gossamer import __version__

    scope_spans = _bytes(1, _str(1, scope) + _str(2, __version__)) + b"".join(
        _bytes(2, _span(s)) for s in spans
    )
    resource_spans = _bytes(1, _key_values(1, resource)) + _bytes(2, scope_spans)
    return _bytes(1, resource_spans)


# -- export ----------------------------------------------------------------------------


def traces_endpoint(env: Mapping[str, str]) -> str | None:
    """Where spans go, by OpenTelemetry's rules; None when tracing export is off."""
    specific = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if base:
        return base.rstrip("/") + "/v1/traces"
    return None


class OtlpExporter:
    """A bounded queue of finished spans, sent in batches by one background task."""

    def __init__(
        self,
        endpoint: str,
        resource: Mapping[str, AttributeValue],
        *,
        max_queue: int = 2048,
        batch: int = 512,
        interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self.resource = dict(resource)
        self.queue: deque[Span] = deque()
        self.max_queue = max_queue
        self.batch = batch
        self.interval = interval
        self.timeout = timeout
        self.dropped = 0
        self.exported = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def submit(self, span: Span) -> None:
        """Never blocks: a full queue drops the span (and counts it)."""
        if len(self.queue) >= self.max_queue:
            self.dropped += 1
            return
        self.queue.append(span)
        if len(self.queue) >= self.batch:
            self._wake.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False
        )
        self._task = asyncio.create_task(self._loop(), name="otlp-export")

    async def stop(self) -> None:
        """Send what is queued (bounded by the timeout), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout):
                while self.queue:
                    await self.flush()
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            while self.queue:
                await self.flush()

    async def flush(self) -> None:
        spans = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
        if not spans or self._session is None:
            return
        body = encode_export_request(spans, self.resource)
        try:
            async with self._session.post(
                self.endpoint, data=body, headers={"Content-Type": "application/x-protobuf"}
            ) as resp:
                if resp.status >= 300:
                    raise aiohttp.ClientError(f"collector answered {resp.status}")
            self.exported += len(spans)
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            self.dropped += len(spans)
            log.warning("dropped %d spans: %s at %s", len(spans), err, self.endpoint)
