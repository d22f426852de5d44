"""Policies on HTTP/2 streams through real proxies, with a real grpcio server and client:
FaultPolicy, a route's request timeout, CircuitBreakerPolicy and OutlierPolicy act on
gRPC calls as on HTTP/1.1 requests, answer the way gRPC clients read, and every stream
is counted, also those the proxy answers itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio

from gossamer.proxy.dataplane import DataPlane
from tests.proxy.conftest import Pki, Workload, fast_config
from tests.proxy.test_e2e_grpc import grpc_workload
from tests.proxy.test_route_metrics import counts, series
from tests.proxy.test_traffic import Traffic, httproute, policy, ref, resilience_counts

SERVICE = "test.Policies"


def _sleep(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(min(float(request or b"0"), 5.0))
    return b"slept"


def _unavailable(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.UNAVAILABLE, "down for maintenance")
    return b""  # pragma: no cover - abort raises


def _ok(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"ok"


@dataclass
class Mesh:
    traffic: Traffic
    address: str
    served: Counter[str]  # calls the server answered, by method

    def call(self, method: str, payload: bytes = b"", authority: str = "echo") -> str:
        """One unary call: its answer, or its status code and details."""
        options = [("grpc.default_authority", authority)]
        with grpc.insecure_channel(self.address, options=options) as channel:
            unary = channel.unary_unary(f"/{SERVICE}/{method}")
            try:
                return unary(payload, timeout=10).decode()
            except grpc.RpcError as e:
                return f"{e.code().name}: {e.details()}"

    async def calls(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wait_for(asyncio.to_thread(fn), 60)


@pytest_asyncio.fixture
async def mesh(pki: Pki) -> AsyncIterator[Mesh]:
    calls: Counter[str] = Counter()

    def flaky(request: bytes, context: grpc.ServicerContext) -> bytes:
        """UNAVAILABLE to the first call, then answers."""
        calls["Flaky"] += 1
        if calls["Flaky"] == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b"ok"

    def slow_once(request: bytes, context: grpc.ServicerContext) -> bytes:
        """The first call takes 3 s, then they answer at once."""
        calls["SlowOnce"] += 1
        if calls["SlowOnce"] == 1:
            time.sleep(3.0)
        return b"ok"

    def sleep(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls["Sleep"] += 1
        return _sleep(request, context)

    def unavailable(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls["Unavailable"] += 1
        return _unavailable(request, context)

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
            "Unavailable": grpc.unary_unary_rpc_method_handler(unavailable),
            "Ok": grpc.unary_unary_rpc_method_handler(_ok),
            "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
            "SlowOnce": grpc.unary_unary_rpc_method_handler(slow_once),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    proxy = await grpc_workload(pki, "v1", port)
    client = DataPlane(fast_config(), on_interest=lambda key: None)
    try:
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        traffic = Traffic(pki, client, services={"echo": ["v1"]})
        traffic.workloads["v1"] = Workload("v1", None, proxy, pki.identity("default", "echo"))  # type: ignore[arg-type]
        assert client.outbound_address is not None
        host, outbound = client.outbound_address
        yield Mesh(traffic, f"{host}:{outbound}", calls)
    finally:
        await client.close()
        await proxy.close()
        server.stop(None)


@pytest.mark.asyncio
async def test_a_fault_abort_answers_grpc_unavailable_and_is_counted(mesh: Mesh) -> None:
    mesh.traffic.apply(policy("FaultPolicy", {"abort": {"httpStatus": 503, "percent": 100}}))

    got = await mesh.calls(lambda: mesh.call("Ok"))

    assert got.startswith("UNAVAILABLE: fault injected: abort with 503")
    assert counts(mesh.traffic.client.metrics.render()) == {
        series(dst_service="echo", code="200", grpc_status="14"): 1
    }


@pytest.mark.asyncio
async def test_a_route_request_timeout_ends_a_slow_call_with_deadline_exceeded(
    mesh: Mesh,
) -> None:
    mesh.traffic.apply(
        httproute("slow", [{"backendRefs": [ref("echo")], "timeouts": {"request": "300ms"}}])
    )

    started = time.monotonic()
    slow = await mesh.calls(lambda: mesh.call("Sleep", b"3"))
    elapsed = time.monotonic() - started
    fast = await mesh.calls(lambda: mesh.call("Sleep", b"0"))

    assert slow.startswith("DEADLINE_EXCEEDED: request timeout: echo.default:80 did not answer")
    assert elapsed < 2.5  # the proxy's 300 ms, not the server's 3 s
    assert fast == "slept"
    labels = {"route_namespace": "default", "route_name": "slow"}
    assert counts(mesh.traffic.client.metrics.render()) == {
        series(dst_service="echo", code="200", grpc_status="4", **labels): 1,
        series(dst_service="echo", code="200", grpc_status="0", **labels): 1,
    }


@pytest.mark.asyncio
async def test_the_circuit_breaker_refuses_a_stream_over_max_requests(mesh: Mesh) -> None:
    mesh.traffic.apply(policy("CircuitBreakerPolicy", {"maxRequests": 1}))
    results: list[str] = []

    def two_calls() -> list[str]:
        first = threading.Thread(target=lambda: results.append(mesh.call("Sleep", b"2")))
        first.start()
        deadline = time.monotonic() + 20
        while mesh.served["Sleep"] == 0:  # until the first call is in flight at the server
            assert time.monotonic() < deadline, "the first call never reached the server"
            time.sleep(0.01)
        second = mesh.call("Ok")
        first.join()
        return [*results, second]

    slow, refused = await mesh.calls(two_calls)
    after = await mesh.calls(lambda: mesh.call("Ok"))

    assert slow == "slept"
    assert refused.startswith("UNAVAILABLE: circuit breaker: echo.default:80 has 1 requests")
    assert after == "ok"  # the slot came back when the first call ended


@pytest.mark.asyncio
async def test_outlier_detection_ejects_an_endpoint_answering_unavailable(mesh: Mesh) -> None:
    mesh.traffic.apply(
        policy("OutlierPolicy", {"consecutiveFailures": 2, "baseEjectionTime": "30s"})
    )

    got = await mesh.calls(lambda: [mesh.call("Unavailable") for _ in range(2)])

    assert got == ["UNAVAILABLE: down for maintenance"] * 2
    assert resilience_counts(mesh.traffic) == {"retries": 0, "budget_exhausted": 0, "ejections": 1}


@pytest.mark.asyncio
async def test_the_retry_budget_stops_a_grpc_retry_storm(mesh: Mesh) -> None:
    mesh.traffic.apply(policy("RetryPolicy", {
        "attempts": 3, "retryOn": ["gateway-error"], "backoff": {"baseInterval": "1ms"},
        "budget": {"percent": 20, "minRetriesPerSecond": 0, "ttl": "60s"}}))  # fmt: skip

    got = await mesh.calls(lambda: [mesh.call("Unavailable") for _ in range(50)])

    assert got == ["UNAVAILABLE: down for maintenance"] * 50
    sent = mesh.served["Unavailable"]
    # Without a budget 50 calls would be 200 tries; with it, about 20% more (before the
    # budget was paid into by HTTP/2 streams, none at all: minRetriesPerSecond is 0).
    assert 55 <= sent <= 61, sent
    counted = resilience_counts(mesh.traffic)
    assert counted["retries"] == sent - 50
    assert counted["budget_exhausted"] >= 50 - counted["retries"]


@pytest.mark.asyncio
async def test_a_stream_for_an_unknown_host_is_counted_to_unknown(mesh: Mesh) -> None:
    mesh.traffic.apply()

    got = await mesh.calls(lambda: mesh.call("Ok", authority="nowhere.default"))

    assert got.startswith("UNIMPLEMENTED") or got.startswith("UNAVAILABLE"), got
    statuses = Counter(labels for labels in counts(mesh.traffic.client.metrics.render()) if labels)
    assert len(statuses) == 1
    (only,) = statuses
    assert ("dst_service", "unknown") in only


@pytest.fixture(params=["connection", "stream"])
def carriage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How HTTP/1.1 travels between the proxies (set before `mesh` makes them): a
    connection per request (the default), or a stream (GOSSAMER_MULTIPLEX_HTTP1=1)."""
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "1" if request.param == "stream" else "0")
    return str(request.param)


@pytest.mark.asyncio
async def test_http1_to_a_port_declared_grpc_gets_a_clear_error(carriage: str, mesh: Mesh) -> None:
    """The callee's proxy refuses it alike, whether the request came over HTTP/1.1 or as
    a stream its peer carried (which it knows from gossamer-orig-proto)."""
    assert mesh.traffic.client.config.multiplex_http1 == (carriage == "stream")
    mesh.traffic.apply()

    status, head, _ = await mesh.traffic.get("/")

    assert status == 502
    assert "declared appProtocol grpc, which speaks only HTTP/2" in head["gossamer-error"]


RETRY = {"attempts": 2, "retryOn": ["gateway-error"], "backoff": {"baseInterval": "1ms"}}


@pytest.mark.asyncio
async def test_a_retry_policy_sends_a_grpc_call_again_after_unavailable(mesh: Mesh) -> None:
    mesh.traffic.apply(policy("RetryPolicy", RETRY))

    got = await mesh.calls(lambda: mesh.call("Flaky", b"x" * 1000))

    assert got == "ok"
    assert mesh.served["Flaky"] == 2
    assert resilience_counts(mesh.traffic)["retries"] == 1
    assert counts(mesh.traffic.client.metrics.render()) == {
        series(dst_service="echo", code="200", grpc_status="0"): 1
    }


@pytest.mark.asyncio
async def test_retries_stop_after_the_policys_attempts(mesh: Mesh) -> None:
    mesh.traffic.apply(policy("RetryPolicy", RETRY))

    got = await mesh.calls(lambda: mesh.call("Unavailable"))

    assert got == "UNAVAILABLE: down for maintenance"
    assert mesh.served["Unavailable"] == 3  # the call and two retries
    assert resilience_counts(mesh.traffic)["retries"] == 2


@pytest.mark.asyncio
async def test_a_call_too_big_to_keep_is_not_retried(mesh: Mesh) -> None:
    mesh.traffic.apply(policy("RetryPolicy", RETRY))

    got = await mesh.calls(lambda: mesh.call("Flaky", b"x" * 100_000))

    assert got == "UNAVAILABLE: warming up"
    assert mesh.served["Flaky"] == 1
    assert resilience_counts(mesh.traffic)["retries"] == 0


@pytest.mark.asyncio
async def test_a_route_rules_retry_applies_to_grpc_calls(mesh: Mesh) -> None:
    rule = {"backendRefs": [ref("echo")], "retry": {"attempts": 1, "codes": [503]}}
    mesh.traffic.apply(httproute("calls", [rule]))

    got = await mesh.calls(lambda: mesh.call("Flaky"))

    assert got == "ok"
    assert mesh.served["Flaky"] == 2


@pytest.mark.asyncio
async def test_a_per_try_timeout_sends_a_stuck_call_again(mesh: Mesh) -> None:
    spec = {"attempts": 1, "perTryTimeout": "300ms", "backoff": {"baseInterval": "1ms"}}
    mesh.traffic.apply(policy("RetryPolicy", spec))

    started = time.monotonic()
    got = await mesh.calls(lambda: mesh.call("SlowOnce"))

    assert got == "ok"
    assert time.monotonic() - started < 2.5  # the second try, not the first's 3 s
    assert mesh.served["SlowOnce"] == 2
    assert resilience_counts(mesh.traffic)["retries"] == 1


@pytest.mark.asyncio
async def test_a_backend_request_timeout_ends_a_slow_call(mesh: Mesh) -> None:
    rule = {"backendRefs": [ref("echo")], "timeouts": {"backendRequest": "300ms"}}
    mesh.traffic.apply(httproute("calls", [rule]))

    got = await mesh.calls(lambda: mesh.call("Sleep", b"3"))

    # The endpoint of the try that timed out is named, as over HTTP/1.1.
    assert got.startswith("DEADLINE_EXCEEDED: backend request timeout: v1.default at 127.0.0.1:")
    assert got.endswith("did not answer in 0.3s")


@pytest.mark.asyncio
async def test_a_call_whose_upstream_connection_is_lost_is_sent_again(mesh: Mesh) -> None:
    spec = {"attempts": 1, "retryOn": ["reset"], "backoff": {"baseInterval": "1ms"}}
    mesh.traffic.apply(policy("RetryPolicy", spec))
    server_proxy = mesh.traffic.workloads["v1"].proxy

    async def cut_when_called() -> None:
        while mesh.served["SlowOnce"] == 0:
            await asyncio.sleep(0.02)
        for conn in list(server_proxy.h2_connections):
            assert conn.transport is not None
            conn.transport.abort()

    cutter = asyncio.create_task(cut_when_called())
    started = time.monotonic()
    got = await mesh.calls(lambda: mesh.call("SlowOnce"))
    await cutter

    assert got == "ok"
    assert time.monotonic() - started < 2.5  # the retry's answer, not the first try's
    assert mesh.served["SlowOnce"] == 2
    assert resilience_counts(mesh.traffic)["retries"] == 1


@pytest.mark.asyncio
async def test_a_stream_no_rule_matched_is_counted_to_its_service_not_a_route(
    mesh: Mesh,
) -> None:
    """A call the proxy answers itself because no rule of the service's route matched
    (a 404, UNIMPLEMENTED to gRPC) is counted as HTTP/1.1's is: the service's, no
    route's (docs/observability.md)."""
    only_x = [{"matches": [{"path": {"type": "PathPrefix", "value": "/x"}}],
               "backendRefs": [ref("echo")]}]  # fmt: skip
    mesh.traffic.apply(httproute("only-x", only_x))

    got = await mesh.calls(lambda: mesh.call("Ok"))

    assert got.startswith("UNIMPLEMENTED"), got
    assert counts(mesh.traffic.client.metrics.render()) == {
        series(dst_service="echo", code="200", grpc_status="12"): 1
    }
