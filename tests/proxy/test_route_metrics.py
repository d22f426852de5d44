"""Per-route request metrics: outbound requests an HTTPRoute or GRPCRoute rule matched
carry `route_namespace` and `route_name` (decision 0031); the rest carry neither."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping

import grpc
import pytest
import pytest_asyncio

from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.policy.balancer import Balancer
from gossamer.proxy.policy.routing import Route
from gossamer.telemetry.golden import parse_prometheus_text
from gossamer.telemetry.window import summarize
from tests.proxy.conftest import Pki, Workload, fast_config, start_workload
from tests.proxy.test_e2e_grpc import SERVICE, grpc_server, grpc_workload
from tests.proxy.test_traffic import Traffic, httproute, ref, start_failing

BASE = ("direction", "src_namespace", "src_service", "dst_namespace", "dst_service", "code", "tls")


def counts(text: str) -> Counter[tuple[tuple[str, str], ...]]:
    """Outbound `gossamer_requests_total` by every label but those all its series share."""
    shared = ("direction", "src_namespace", "src_service", "tls")
    out: Counter[tuple[tuple[str, str], ...]] = Counter()
    for s in parse_prometheus_text(text):
        if s.name == "gossamer_requests_total" and s.labels["direction"] == "outbound":
            kept = sorted((k, v) for k, v in s.labels.items() if k not in shared)
            out[tuple(kept)] += int(s.value)
    return out


def series(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"dst_namespace": "default", **labels}.items()))


# ---- label rendering ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("grpc_status", "route", "tail"),
    [
        (None, None, 'tls="true"'),
        (None, ("shop", "reads"), 'tls="true",route_namespace="shop",route_name="reads"'),
        ("14", None, 'tls="true",grpc_status="14"'),
        ("0", ("shop", "calls"),
         'tls="true",grpc_status="0",route_namespace="shop",route_name="calls"'),
    ],
    ids=[
        "a request no route matched has no route labels",
        "a routed request names its route last",
        "a grpc call without a route has only grpc_status",
        "a routed grpc call has grpc_status and its route",
    ],
)  # fmt: skip
def test_route_labels_render_on_every_request_series(
    grpc_status: str | None, route: tuple[str, str] | None, tail: str
) -> None:
    metrics = Metrics()
    metrics.request_stats(
        "outbound", "shop", "web", "shop", "api", 200, True, grpc_status, route
    ).observe(0.002)
    labels = (
        'direction="outbound",src_namespace="shop",src_service="web",'
        f'dst_namespace="shop",dst_service="api",code="200",{tail}'
    )
    lines = metrics.render().splitlines()
    assert f"gossamer_requests_total{{{labels}}} 1" in lines
    assert f'gossamer_request_duration_seconds_bucket{{{labels},le="0.0025"}} 1' in lines
    assert f"gossamer_request_duration_seconds_count{{{labels}}} 1" in lines
    # What the proxy writes, the control plane reads back under the same names.
    [sample] = [
        s for s in parse_prometheus_text(metrics.render()) if s.name == "gossamer_requests_total"
    ]
    expected = dict(
        zip(BASE, ("outbound", "shop", "web", "shop", "api", "200", "true"), strict=True)
    )
    if grpc_status is not None:
        expected["grpc_status"] = grpc_status
    if route is not None:
        expected["route_namespace"], expected["route_name"] = route
    assert sample.labels == expected


def test_a_route_label_value_is_escaped() -> None:
    metrics = Metrics()
    metrics.request_stats("outbound", "a", "b", "c", "d", 200, True, route=("n", 'x"y')).observe(0)
    assert 'route_namespace="n",route_name="x\\"y"' in metrics.render()


def test_a_service_port_keeps_one_cell_per_route_and_status() -> None:
    metrics = Metrics()
    route: Route[object] = Route("api", "shop", 80, Balancer([], []), metrics, ("shop", "web"))
    reads = route.stats_for(200, "shop/reads")
    assert route.stats_for(200, "shop/reads") is reads  # looked up, not made again
    assert route.stats_for(200) is not reads
    assert route.stats_for(200, "shop/writes") is not reads
    assert route.stats_for(503, "shop/reads") is not reads
    call = route.grpc_stats_for(200, b"0", "shop/calls")
    assert route.grpc_stats_for(200, b"0", "shop/calls") is call
    assert route.grpc_stats_for(200, b"0") is not call
    assert reads.labels[-2:] == ("shop", "reads")
    assert call.labels[-3:] == ("0", "shop", "calls")
    assert len(route.stats_for(200).labels) == len(BASE)
    for _ in range(100):
        route.stats_for(200, "shop/reads").observe(0.001)
    assert reads.count == 100
    assert metrics.render().count("gossamer_requests_total{") == 6


# ---- through real proxies -----------------------------------------------------------


@pytest_asyncio.fixture
async def routed(pki: Pki) -> AsyncIterator[Traffic]:
    """A client proxy, `echo` (an echo app) and `echo-bad` (a replica answering 503)."""
    client = DataPlane(fast_config(), on_interest=lambda key: None)
    t = Traffic(pki, client)
    try:
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        t.workloads["echo-1"] = await start_workload(pki, "echo-1")
        t.failing["bad"] = await start_failing(pki, "bad")
        t.services = {"echo": ["echo-1"], "echo-bad": ["bad"]}
        yield t
    finally:
        await client.close()
        for w in t.workloads.values():
            await w.proxy.close()
            await w.app.close()
        for app, proxy in t.failing.values():
            await proxy.close()
            await app.close()


@pytest.mark.asyncio
async def test_http1_requests_are_counted_per_route_and_unmatched_ones_without(
    routed: Traffic,
) -> None:
    routed.apply(
        httproute("pages", [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
             "backendRefs": [ref("echo")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/b"}}],
             "backendRefs": [ref("echo-bad")]},
        ]),
        httproute("broken", [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/c"}}],
             "backendRefs": [ref("echo", 0)]},
        ]),
    )  # fmt: skip
    sent = [("/a/1", 200)] * 4 + [("/b", 503)] * 2 + [("/c", 500)] * 3 + [("/zzz", 404)]
    for path, status in sent:
        assert (await routed.get(path))[0] == status, path
    text = routed.client.metrics.render()
    assert counts(text) == {
        series(dst_service="echo", code="200", route_namespace="default", route_name="pages"): 4,
        series(dst_service="echo-bad", code="503", route_namespace="default",
               route_name="pages"): 2,
        # A rule that answers itself (every weight 0) still counts for its route.
        series(dst_service="echo", code="500", route_namespace="default", route_name="broken"): 3,
        # No rule matched: the request is the service's, no route's.
        series(dst_service="echo", code="404"): 1,
    }  # fmt: skip
    # The control plane reads the same text into route rows: the 404 is in none.
    route_view = summarize(parse_prometheus_text(text), at=0.0).views["route"]
    rows = {k: (t.requests, t.failures) for k, t in route_view.items()}
    assert rows == {
        ("default", "echo", "default", "pages"): (4, 0),
        ("default", "echo-bad", "default", "pages"): (2, 2),
        ("default", "echo", "default", "broken"): (3, 3),
    }


@pytest.mark.asyncio
async def test_grpc_calls_are_counted_per_grpcroute(pki: Pki) -> None:
    server, port = grpc_server("v1")
    proxy = await grpc_workload(pki, "v1", port)
    client = DataPlane(fast_config(), on_interest=lambda key: None)
    try:
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        traffic = Traffic(pki, client, services={"echo": ["v1"]})
        traffic.workloads["v1"] = Workload("v1", None, proxy, pki.identity("default", "echo"))  # type: ignore[arg-type]
        traffic.apply(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GRPCRoute",
                "metadata": {"name": "calls", "namespace": "default"},
                "spec": {
                    "parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                    "rules": [{"matches": [{"method": {"service": SERVICE}}],
                               "backendRefs": [ref("echo")]}],
                },
            }
        )  # fmt: skip
        assert client.outbound_address is not None
        host, outbound = client.outbound_address

        def call() -> list[str]:
            options = [("grpc.default_authority", "echo")]
            with grpc.insecure_channel(f"{host}:{outbound}", options=options) as ch:
                unary = ch.unary_unary(f"/{SERVICE}/Unary")
                got = [unary(b"ok", timeout=10).decode() for _ in range(3)]
                with pytest.raises(grpc.RpcError) as e:
                    unary(b"fail", timeout=10)
                got.append(str(e.value.code()))
                return got

        got = await asyncio.wait_for(asyncio.to_thread(call), 60)
        assert got == ["ko"] * 3 + ["StatusCode.NOT_FOUND"]
        labels: Mapping[str, str] = {"route_namespace": "default", "route_name": "calls"}
        assert counts(client.metrics.render()) == {
            series(dst_service="echo", code="200", grpc_status="0", **labels): 3,
            series(dst_service="echo", code="200", grpc_status="5", **labels): 1,
        }
    finally:
        await client.close()
        await proxy.close()
        server.stop(None)
