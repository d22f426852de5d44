"""Envoy's `/stats/prometheus` as Gossamer's request series, so golden metrics
(`gossamer stat`, `edges`, the dashboard) do not care which engine a workload runs.

Pure: text in, text out. What Envoy's stats say, and what they become:

- outbound: `envoy_cluster_upstream_rq{envoy_cluster_name="outbound|PORT||SVC~NS",
  envoy_response_code}` and `envoy_cluster_upstream_rq_time_bucket` (milliseconds)
  → `gossamer_requests_total` / `gossamer_request_duration_seconds_bucket` with
  `direction="outbound"`, dst from the cluster name, src from the outbound
  listener's stat prefix (`outbound~NS~SERVICE`, gossamer.translate.envoy.stat_prefix);
- inbound: `envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix=
  "inbound~NS~SERVICE", envoy_response_code_class}` and
  `envoy_http_downstream_rq_time_bucket` → `direction="inbound"`, dst from the
  prefix. Envoy counts inbound answers by class only, so `code` is `200`, `400`,
  `500`...: enough for success rates, which is what golden metrics read. Envoy does
  not know the caller's service there: `src_service="unknown"`.

Histograms keep Envoy's buckets (converted to seconds); percentiles interpolate
within them as within Gossamer's own.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from gossamer.telemetry.golden import Sample, parse_prometheus_text

__all__ = ["from_envoy"]

_OUT_RQ = "envoy_cluster_upstream_rq"
_OUT_TIME = "envoy_cluster_upstream_rq_time_bucket"
_IN_RQ = "envoy_http_downstream_rq_xx"
_IN_TIME = "envoy_http_downstream_rq_time_bucket"
_PREFIX = "envoy_http_conn_manager_prefix"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)


def _split_prefix(prefix: str) -> tuple[str, str, str] | None:
    parts = prefix.split("~")
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def _dst(cluster: str) -> tuple[str, str] | None:
    """`outbound|PORT||NAME~NS` (the cluster's alt_stat_name) → (NS, NAME); None for
    anything else (inbound clusters, TCP ones, the xDS cluster)."""
    parts = cluster.split("|")
    if len(parts) != 4 or parts[0] != "outbound" or parts[2]:
        return None
    name, _, namespace = parts[3].partition("~")
    return (namespace, name) if namespace else None


def _seconds(le: str) -> str:
    if le == "+Inf":
        return le
    return f"{float(le) / 1000:g}"


def from_envoy(text: str) -> str:
    """Gossamer's request series made from one scrape of Envoy's /stats/prometheus."""
    samples = parse_prometheus_text(text)
    src = ("", "unknown")
    for s in samples:
        parsed = _split_prefix(s.labels.get(_PREFIX, ""))
        if parsed is not None and parsed[0] == "outbound":
            src = (parsed[1], parsed[2])
            break
    requests: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
    buckets: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
    for s in samples:
        _add(s, src, requests, buckets)
    lines = [
        "# HELP gossamer_requests_total HTTP requests the proxy answered (from Envoy's stats).",
        "# TYPE gossamer_requests_total counter",
        *(f"gossamer_requests_total{{{_labels(k)}}} {v:g}" for k, v in sorted(requests.items())),
        "# HELP gossamer_request_duration_seconds Request time (from Envoy's histograms).",
        "# TYPE gossamer_request_duration_seconds histogram",
        *(
            f"gossamer_request_duration_seconds_bucket{{{_labels(k)}}} {v:g}"
            for k, v in sorted(buckets.items(), key=_bucket_order)
        ),
    ]
    return "\n".join(lines) + "\n"


def _bucket_order(item: tuple[tuple[tuple[str, str], ...], float]) -> tuple[object, ...]:
    labels = dict(item[0])
    le = labels.pop("le", "+Inf")
    return (sorted(labels.items()), math.inf if le == "+Inf" else float(le))


def _add(
    s: Sample,
    src: tuple[str, str],
    requests: dict[tuple[tuple[str, str], ...], float],
    buckets: dict[tuple[tuple[str, str], ...], float],
) -> None:
    if s.name in (_OUT_RQ, _OUT_TIME):
        dst = _dst(s.labels.get("envoy_cluster_name", ""))
        if dst is None:
            return
        base = (
            ("direction", "outbound"),
            ("src_namespace", src[0]),
            ("src_service", src[1]),
            ("dst_namespace", dst[0]),
            ("dst_service", dst[1]),
        )
        if s.name == _OUT_RQ:
            code = s.labels.get("envoy_response_code", "")
            requests[(*base, ("code", code), ("tls", "true"))] += s.value
        else:
            buckets[(*base, ("tls", "true"), ("le", _seconds(s.labels["le"])))] += s.value
        return
    if s.name not in (_IN_RQ, _IN_TIME):
        return
    parsed = _split_prefix(s.labels.get(_PREFIX, ""))
    if parsed is None or parsed[0] != "inbound":
        return
    base = (
        ("direction", "inbound"),
        ("src_namespace", "unknown"),
        ("src_service", "unknown"),
        ("dst_namespace", parsed[1]),
        ("dst_service", parsed[2]),
    )
    if s.name == _IN_RQ:
        code = s.labels.get("envoy_response_code_class", "")
        requests[(*base, ("code", f"{code}00"), ("tls", "true"))] += s.value
    else:
        buckets[(*base, ("tls", "true"), ("le", _seconds(s.labels["le"])))] += s.value
