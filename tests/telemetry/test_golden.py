from __future__ import annotations

import math

import pytest

from gossamer.telemetry import aggregate, golden_between, histogram_quantile, parse_prometheus_text

SCRAPE = """
# HELP gossamer_requests_total Requests
# TYPE gossamer_requests_total counter
gossamer_requests_total{direction="inbound",dst_namespace="shop",dst_service="api",code="200",tls="true"} 90
gossamer_requests_total{direction="inbound",dst_namespace="shop",dst_service="api",code="503",tls="true"} 10
gossamer_requests_total{direction="outbound",dst_namespace="shop",dst_service="db",code="200",tls="true"} 5
gossamer_request_duration_seconds_bucket{direction="inbound",dst_namespace="shop",dst_service="api",code="200",tls="true",le="0.01"} 50
gossamer_request_duration_seconds_bucket{direction="inbound",dst_namespace="shop",dst_service="api",code="200",tls="true",le="0.1"} 90
gossamer_request_duration_seconds_bucket{direction="inbound",dst_namespace="shop",dst_service="api",code="200",tls="true",le="+Inf"} 90
gossamer_request_duration_seconds_bucket{direction="inbound",dst_namespace="shop",dst_service="api",code="503",tls="true",le="0.01"} 10
gossamer_request_duration_seconds_bucket{direction="inbound",dst_namespace="shop",dst_service="api",code="503",tls="true",le="0.1"} 10
gossamer_request_duration_seconds_bucket{direction="inbound",dst_namespace="shop",dst_service="api",code="503",tls="true",le="+Inf"} 10
"""


def test_inbound_requests_are_grouped_by_destination_service() -> None:
    totals = aggregate(parse_prometheus_text(SCRAPE))
    assert set(totals) == {("shop", "api")}
    api = totals[("shop", "api")]
    assert (api.requests, api.failures) == (100, 10)
    assert api.buckets == {0.01: 60, 0.1: 100, math.inf: 100}


def test_golden_metrics_are_deltas_over_the_window() -> None:
    later = aggregate(parse_prometheus_text(SCRAPE))
    [row] = golden_between({}, later, seconds=10)
    assert row.requests == 100
    assert row.success_rate == pytest.approx(0.9)
    assert row.rps == pytest.approx(10)
    # 60 of 100 under 10 ms: the median interpolates inside the first bucket.
    assert row.p50_ms == pytest.approx(50 / 60 * 10)
    assert row.p99_ms == pytest.approx(10 + 90 * (99 - 60) / 40)
    [same] = golden_between(later, later, seconds=10)
    assert same.requests == 0 and same.success_rate is None and same.p99_ms is None


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {1.0: 10, math.inf: 10}, 0.5),
        (0.5, {1.0: 0, 2.0: 10, math.inf: 10}, 1.5),
        (0.99, {1.0: 5, math.inf: 10}, 1.0),
        (0.5, {}, None),
    ],
    ids=[
        "interpolates from zero in the first bucket",
        "interpolates within the bucket holding the rank",
        "beyond the last finite bucket answers its bound",
        "no observations give no answer",
    ],
)
def test_histogram_quantile_matches_prometheus(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    assert histogram_quantile(q, buckets) == (
        expected if expected is None else pytest.approx(expected)
    )


def test_a_malformed_scrape_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="line 1"):
        parse_prometheus_text("this is not prometheus")


def test_a_grpc_call_that_ended_with_a_status_other_than_ok_is_a_failure() -> None:
    scrape = "\n".join(
        f'gossamer_requests_total{{direction="inbound",dst_namespace="shop",dst_service="api",'
        f'code="200",tls="true"{grpc}}} {n}'
        for grpc, n in (
            (',grpc_status="0"', 7),
            (',grpc_status="5"', 2),
            (',grpc_status="unknown"', 1),
            ("", 10),
        )
    )
    api = aggregate(parse_prometheus_text(scrape + "\n"))[("shop", "api")]
    assert (api.requests, api.failures) == (20, 3)


def test_grpc_status_is_one_more_label_on_grpc_requests_only() -> None:
    from gossamer.proxy.observe.metrics import Metrics

    metrics = Metrics()
    metrics.request_stats("inbound", "a", "b", "c", "d", 200, True).observe(0.001)
    metrics.request_stats("inbound", "a", "b", "c", "d", 200, True, "14").observe(0.001)
    lines = [line for line in metrics.render().splitlines() if "_requests_total{" in line]
    assert lines == [
        'gossamer_requests_total{direction="inbound",src_namespace="a",src_service="b",'
        'dst_namespace="c",dst_service="d",code="200",tls="true"} 1',
        'gossamer_requests_total{direction="inbound",src_namespace="a",src_service="b",'
        'dst_namespace="c",dst_service="d",code="200",tls="true",grpc_status="14"} 1',
    ]
