"""Envoy's stats as Gossamer's request series (gossamer.xds.metrics), one module alone.

The end-to-end proof, against real Envoy stats and `gossamer stat`, is in
test_mixed_mesh.py; this pins the mapping."""

from __future__ import annotations

from gossamer.telemetry.golden import aggregate, parse_prometheus_text
from gossamer.xds.metrics import from_envoy

ENVOY = """\
# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="outbound|80||echo~shop"} 7
envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="outbound|80||echo~shop"} 1
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="inbound|8080"} 9
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="xds"} 3
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="outbound|80||echo~shop",le="0.5"} 0
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="outbound|80||echo~shop",le="5"} 6
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="outbound|80||echo~shop",le="+Inf"} 8
# TYPE envoy_http_downstream_rq_xx counter
envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="inbound~shop~web"} 9
envoy_http_downstream_rq_xx{envoy_response_code_class="4",envoy_http_conn_manager_prefix="inbound~shop~web"} 2
envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="outbound~shop~web"} 7
# TYPE envoy_http_downstream_rq_time histogram
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="inbound~shop~web",le="1"} 10
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="inbound~shop~web",le="+Inf"} 11
"""


def test_outbound_requests_are_named_by_the_cluster_and_the_outbound_prefix() -> None:
    samples = parse_prometheus_text(from_envoy(ENVOY))
    requests = {
        (s.labels["src_service"], s.labels["dst_service"], s.labels["code"]): s.value
        for s in samples
        if s.name == "gossamer_requests_total" and s.labels["direction"] == "outbound"
    }
    assert requests == {("web", "echo", "200"): 7, ("web", "echo", "503"): 1}


def test_inbound_answers_count_by_class_and_golden_metrics_read_them() -> None:
    samples = parse_prometheus_text(from_envoy(ENVOY))
    [totals] = aggregate(samples, direction="inbound").values()
    assert (totals.requests, totals.failures) == (11, 0)  # a 4xx is no failure
    assert totals.buckets == {0.001: 10, float("inf"): 11}  # milliseconds → seconds


def test_clusters_that_are_not_a_service_are_left_out() -> None:
    text = from_envoy(ENVOY)
    assert "inbound|8080" not in text and "xds" not in text
