"""Golden metrics from proxies' Prometheus text: success rate, request rate, latency."""

from gossamer.telemetry.golden import (
    Golden,
    Totals,
    aggregate,
    golden_between,
    histogram_quantile,
    parse_prometheus_text,
)

__all__ = [
    "Golden",
    "Totals",
    "aggregate",
    "golden_between",
    "histogram_quantile",
    "parse_prometheus_text",
]
