"""Golden metrics computed from two scrapes of proxies' `/metrics`.

Pure functions: the caller scrapes, these parse and subtract. Latency percentiles
are interpolated within histogram buckets the way Prometheus' `histogram_quantile`
does, so the numbers agree with what a Prometheus server would show.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Key = tuple[str, ...]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_prometheus_text(text: str) -> list[Sample]:
    """Samples of the text exposition format; malformed lines raise ValueError."""
    samples = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"line {n}: not a Prometheus sample: {line[:80]!r}")
        labels = {
            k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            for k, v in _LABEL.findall(m.group("labels") or "")
        }
        try:
            value = float(m.group("value"))
        except ValueError:
            raise ValueError(f"line {n}: bad value {m.group('value')!r}") from None
        samples.append(Sample(m.group("name"), labels, value))
    return samples


@dataclass
class Totals:
    """Cumulative counts for one group (a service, an edge, ...)."""

    requests: float = 0.0
    failures: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count

    def minus(self, earlier: Totals | None) -> Totals:
        if earlier is None:
            return self
        return Totals(
            max(self.requests - earlier.requests, 0.0),
            max(self.failures - earlier.failures, 0.0),
            {le: max(c - earlier.buckets.get(le, 0.0), 0.0) for le, c in self.buckets.items()},
        )


def _failed(code: str, grpc_status: str | None = None) -> bool:
    # A proxy-made error (no route, no endpoints) counts as a failure as surely as
    # the app's own 5xx; so does a gRPC call that ended with any status but OK (0),
    # though its HTTP status is 200.
    if grpc_status is not None and grpc_status != "0":
        return True
    # 499: the caller gave up before the answer (a proxy counts it so): not a success.
    return not code.isdigit() or int(code) >= 500 or code == "499"


def aggregate(
    samples: Iterable[Sample],
    *,
    direction: str = "inbound",
    by: tuple[str, ...] = ("dst_namespace", "dst_service"),
    labelled: str | None = None,
) -> dict[Key, Totals]:
    """Totals per group of `by`; with `labelled`, only samples that have that label."""
    out: dict[Key, Totals] = {}
    for s in samples:
        if s.labels.get("direction") != direction:
            continue
        if labelled is not None and not s.labels.get(labelled):
            continue
        key = tuple(s.labels.get(k, "") for k in by)
        if s.name == "gossamer_requests_total":
            t = out.setdefault(key, Totals())
            t.requests += s.value
            if _failed(s.labels.get("code", ""), s.labels.get("grpc_status")):
                t.failures += s.value
        elif s.name == "gossamer_request_duration_seconds_bucket":
            le = math.inf if s.labels.get("le") == "+Inf" else float(s.labels.get("le", "nan"))
            t = out.setdefault(key, Totals())
            t.buckets[le] = t.buckets.get(le, 0.0) + s.value
    return out


RETRIES = "gossamer_retries_total"


def retries_by_edge(samples: Iterable[Sample]) -> dict[Key, Totals]:
    """One proxy's retries per caller → callee edge, as `Totals.requests` (decision 0082).

    `gossamer_retries_total` is labelled by the destination only: every retry a proxy
    sends is its own service's. That service is the `src_*` of the proxy's outbound
    requests to the same destination (a retried call is counted there too), so the
    edge key is (src_namespace, src_service, dst_namespace, dst_service), the key of
    the "edge" view.
    """
    samples = list(samples)
    callers: dict[tuple[str, str], tuple[str, str]] = {}
    for s in samples:
        if s.name == "gossamer_requests_total" and s.labels.get("direction") == "outbound":
            dst = (s.labels.get("dst_namespace", ""), s.labels.get("dst_service", ""))
            callers.setdefault(
                dst, (s.labels.get("src_namespace", ""), s.labels.get("src_service", ""))
            )
    out: dict[Key, Totals] = {}
    for s in samples:
        if s.name != RETRIES or not s.value:
            continue
        dst = (s.labels.get("dst_namespace", ""), s.labels.get("dst_service", ""))
        src = callers.get(dst)
        if src is not None:
            out.setdefault((*src, *dst), Totals()).requests += s.value
    return out


def retries_by_route(samples: Iterable[Sample]) -> dict[Key, Totals]:
    """One proxy's retries of the calls a route sent, as `Totals.requests`, keyed as the
    "route" view is: (dst_namespace, dst_service, route_namespace, route_name). The
    proxy counts a routed call's retries in route-labelled series only (decision 0082)."""
    out: dict[Key, Totals] = {}
    for s in samples:
        if s.name != RETRIES or not s.value or not s.labels.get("route_name"):
            continue
        key = tuple(
            s.labels.get(k, "")
            for k in ("dst_namespace", "dst_service", "route_namespace", "route_name")
        )
        out.setdefault(key, Totals()).requests += s.value
    return out


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' interpolation: linear within the bucket holding the q-th observation."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return ordered[-1][0]


@dataclass(frozen=True)
class Golden:
    key: Key
    requests: float
    success_rate: float | None  # a fraction; None when there were no requests
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def golden_between(
    earlier: Mapping[Key, Totals], later: Mapping[Key, Totals], seconds: float
) -> list[Golden]:
    """Golden metrics for each group over the time between two aggregated scrapes."""
    rows = []
    for key in sorted(later):
        d = later[key].minus(earlier.get(key))

        def ms(q: float, d: Totals = d) -> float | None:
            v = histogram_quantile(q, d.buckets)
            return None if v is None else v * 1000

        rows.append(
            Golden(
                key=key,
                requests=d.requests,
                success_rate=(1 - d.failures / d.requests) if d.requests else None,
                rps=d.requests / seconds if seconds > 0 else 0.0,
                p50_ms=ms(0.5),
                p95_ms=ms(0.95),
                p99_ms=ms(0.99),
            )
        )
    return rows
