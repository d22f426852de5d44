"""Traffic management through real proxies in this event loop: HTTPRoutes, timeouts,
retries with a budget, outlier detection, circuit breaking, faults and mirroring.

The client proxy's snapshot is built by the real translation (`build_snapshot`) from
Kubernetes-shaped objects naming the test's workloads, so each test covers resource →
snapshot → proxy behaviour.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from gossamer.proxy.dataplane import DataPlane
from gossamer.resources import to_dict, validate
from gossamer.translate import MeshView, ProxyInfo, build_snapshot
from tests.proxy.conftest import (
    Pki,
    Workload,
    fast_config,
    parse_responses,
    server_snapshot,
    start_workload,
)

BUNDLE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class StatusApp:
    """An app that answers every request with one status (503: a failing replica; 0:
    a stuck one that never answers)."""

    def __init__(self, name: str, status: int, hang_first: int = 0, fail_first: int = 0) -> None:
        self.name = name
        self.status = status
        self.hang_first = hang_first  # this many requests are never answered
        self.fail_first = fail_first  # this many get a 503 (after those that hang)
        self.bodies: list[bytes] = []
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        self.bodies.append(await reader.readexactly(int(line.split(b":")[1])))
                if not self.status or self.requests <= self.hang_first:
                    continue  # stuck: never answers
                status = self.status
                if self.requests <= self.hang_first + self.fail_first:
                    status = 503
                body = self.name.encode()
                writer.write(
                    b"HTTP/1.1 %d X\r\nx-instance: %s\r\ncontent-length: %d\r\n\r\n%s"
                    % (status, body, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def resilience_counts(traffic: Traffic) -> dict[str, int]:
    """The client proxy's retry and ejection counters for echo.default, as exported."""
    text = traffic.client.metrics.render()
    names = {
        "retries": "gossamer_retries_total",
        "budget_exhausted": "gossamer_retry_budget_exhausted_total",
        "ejections": "gossamer_outlier_ejections_total",
    }
    labels = '{dst_namespace="default",dst_service="echo"} '
    counts = {}
    for key, name in names.items():
        lines = [line for line in text.splitlines() if line.startswith(name + labels)]
        assert len(lines) == 1, (name, text)
        counts[key] = int(lines[0].rsplit(" ", 1)[1])
    return counts


@dataclass
class Traffic:
    """A client proxy ("web-1") and named workloads behind services it routes to."""

    pki: Pki
    client: DataPlane
    workloads: dict[str, Workload] = field(default_factory=dict)
    failing: dict[str, tuple[StatusApp, DataPlane]] = field(default_factory=dict)
    services: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # the client workload's

    def inbound_port(self, name: str) -> int:
        proxy = self.workloads[name].proxy if name in self.workloads else self.failing[name][1]
        assert proxy.inbound_address is not None
        return proxy.inbound_address[1]

    def apply(self, *objects: dict[str, Any]) -> None:
        """Give the client the snapshot the control plane would build for these objects."""
        me = {"address": "127.0.0.1", "inboundPort": 1, "serviceAccount": "web"}
        mesh_objects: list[dict[str, Any]] = [
            _obj("Workload", "web-1", me, labels=self.labels or None)
        ]
        labels: dict[str, dict[str, str]] = {}
        for svc, members in self.services.items():
            mesh_objects.append(
                _obj("Service", svc, {"selector": {svc: "member"},
                                      "ports": [{"name": "http", "port": 80, "targetPort": 8080}]})
            )  # fmt: skip
            for name in members:
                labels.setdefault(name, {})[svc] = "member"
        for name, member_of in labels.items():
            mesh_objects.append(
                _obj("Workload", name, {"address": "127.0.0.1", "serviceAccount": "echo",
                                        "inboundPort": self.inbound_port(name),
                                        "ports": [{"name": "http", "port": 8080}]},
                     labels=member_of)
            )  # fmt: skip
        for i, obj in enumerate(objects):
            obj = to_dict(validate(obj))
            obj["metadata"]["creationTimestamp"] = f"2026-01-01T00:00:{i:02d}Z"
            mesh_objects.append(obj)
        mesh = MeshView.from_objects(
            mesh_objects, trust_domain=self.pki.trust_domain, trust_bundle=BUNDLE
        )
        interests = frozenset({"echo.default"})
        self.client.apply_snapshot(build_snapshot(mesh, ProxyInfo("web-1", "default", interests)))

    async def get(
        self,
        path: str = "/",
        host: str = "echo",
        headers: dict[str, str] | None = None,
        method: str = "GET",
        body: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes]:
        assert self.client.outbound_address is not None
        reader, writer = await asyncio.open_connection(*self.client.outbound_address)
        try:
            fields = dict(headers or {})
            if body:
                fields["Content-Length"] = str(len(body))
            extra = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            data = await asyncio.wait_for(reader.read(-1), 20)
        finally:
            writer.transport.abort()
        # A 100 Continue (an `Expect: 100-continue` request's) comes before the answer.
        [(status, head, body)] = [r for r in parse_responses(data) if r[0] >= 200]
        return status, head, body


def _obj(
    kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    api = "v1" if kind == "Service" else "gossamer.dev/v1alpha1"
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}


def httproute(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}], "rules": rules},
    }


def mirror_ref(name: str) -> dict[str, Any]:
    return {"name": name, "port": 80}


def policy(kind: str, spec: dict[str, Any], target: str = "echo") -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": f"{kind.lower()}-{target}", "namespace": "default"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": target}], **spec},
    }


def ref(name: str, weight: int = 1) -> dict[str, Any]:
    return {"name": name, "port": 80, "weight": weight}


async def start_failing(
    pki: Pki, name: str, status: int = 503, hang_first: int = 0, fail_first: int = 0
) -> tuple[StatusApp, DataPlane]:
    app = StatusApp(name, status, hang_first, fail_first)
    port = await app.start()
    proxy = DataPlane(fast_config(), on_interest=lambda key: None)
    await proxy.start()
    proxy.set_credentials(pki.issue("default", "echo"))
    proxy.apply_snapshot(server_snapshot(pki, name, port))
    return app, proxy


@pytest_asyncio.fixture
async def traffic(pki: Pki) -> AsyncIterator[Traffic]:
    """echo: echo-1 and echo-2; echo-canary: canary; echo-bad: a replica answering 503."""
    client = DataPlane(fast_config(), on_interest=lambda key: None)
    t = Traffic(pki, client)
    try:
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        for name in ("echo-1", "echo-2", "canary", "mirror"):
            t.workloads[name] = await start_workload(pki, name)
        t.failing["bad"] = await start_failing(pki, "bad")
        t.failing["stuck-once"] = await start_failing(pki, "stuck-once", 200, hang_first=1)
        t.failing["flaky"] = await start_failing(pki, "flaky", 200, fail_first=2)
        t.failing["stuck"] = await start_failing(pki, "stuck", 0)
        t.services = {
            "echo": ["echo-1", "echo-2"],
            "echo-canary": ["canary"],
            "echo-mirror": ["mirror"],
            "echo-bad": ["bad"],
            "echo-stuck": ["stuck"],
        }
        yield t
    finally:
        await client.close()
        for w in t.workloads.values():
            await w.proxy.close()
            await w.app.close()
        for app, proxy in t.failing.values():
            await proxy.close()
            await app.close()


def served_by(body: bytes) -> str:
    return str(json.loads(body)["instance"])


@pytest.mark.asyncio
async def test_a_header_match_reaches_the_canary_and_no_match_is_a_404(traffic: Traffic) -> None:
    traffic.apply(
        httproute("canary", [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"},
                          "headers": [{"name": "x-canary", "value": "1"}]}],
             "backendRefs": [ref("echo-canary")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
             "backendRefs": [ref("echo")]},
        ])
    )  # fmt: skip
    status, _, body = await traffic.get("/v1/x", headers={"X-Canary": "1"})
    assert (status, served_by(body)) == (200, "canary")
    status, _, body = await traffic.get("/v1/x")
    assert status == 200 and served_by(body) in {"echo-1", "echo-2"}
    status, head, _ = await traffic.get("/v2")
    assert status == 404
    assert "no rule of the HTTPRoutes of echo.default:80 (default/canary)" in head["gossamer-error"]


@pytest.mark.asyncio
async def test_a_weighted_split_lands_within_statistical_bounds(traffic: Traffic) -> None:
    traffic.apply(httproute("split", [{"backendRefs": [ref("echo", 90), ref("echo-canary", 10)]}]))
    seen: Counter[str] = Counter()
    for _ in range(300):
        status, _, body = await traffic.get("/")
        assert status == 200
        seen["canary" if served_by(body) == "canary" else "stable"] += 1
    # Binomial(300, 0.1): mean 30, sd 5.2; 12..54 is beyond 3.4 sd either way.
    assert 12 <= seen["canary"] <= 54, seen


@pytest.mark.asyncio
async def test_rewrites_header_edits_and_redirects_are_exact(traffic: Traffic) -> None:
    traffic.apply(
        httproute("edit", [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "filters": [
                 {"type": "URLRewrite", "urlRewrite": {
                     "hostname": "echo.example", "path": {"type": "ReplacePrefixMatch",
                                                          "replacePrefixMatch": "/new"}}},
                 {"type": "RequestHeaderModifier",
                  "requestHeaderModifier": {"set": [{"name": "x-env", "value": "test"}],
                                            "remove": ["x-drop"]}},
                 {"type": "ResponseHeaderModifier",
                  "responseHeaderModifier": {"add": [{"name": "x-route", "value": "edit"}]}},
             ],
             "backendRefs": [ref("echo")]},
            {"matches": [{"path": {"type": "Exact", "value": "/moved"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {
                 "scheme": "https", "hostname": "shop.example", "statusCode": 301,
                 "path": {"type": "ReplaceFullPath", "replaceFullPath": "/here"}}}]},
        ])
    )  # fmt: skip
    status, head, body = await traffic.get("/old/items?id=7", headers={"x-drop": "1"})
    assert status == 200
    seen = json.loads(body)
    assert seen["path"] == "/new/items?id=7"
    received = {k.lower(): v for k, v in seen["headers"]}
    assert received["host"] == "echo.example"
    assert received["x-env"] == "test"
    assert "x-drop" not in received
    assert head["x-route"] == "edit"
    status, head, _ = await traffic.get("/moved?a=b")
    assert status == 301
    assert head["location"] == "https://shop.example/here?a=b"


@pytest.mark.asyncio
async def test_a_request_timeout_answers_504_with_a_reason(traffic: Traffic) -> None:
    traffic.apply(
        httproute("slow", [{"backendRefs": [ref("echo")], "timeouts": {"request": "300ms"}}])
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, head, _ = await traffic.get("/hang")
    assert status == 504
    assert head["gossamer-error"].startswith("request timeout: echo.default:80 did not answer")
    assert loop.time() - start < 10  # generous: the point is that it fired


@pytest.mark.asyncio
async def test_all_backends_weighted_zero_answer_500(traffic: Traffic) -> None:
    traffic.apply(httproute("zero", [{"backendRefs": [ref("echo", 0)]}]))
    status, head, _ = await traffic.get("/")
    assert status == 500
    assert "every backendRef has weight 0" in head["gossamer-error"]


@pytest.mark.asyncio
async def test_retries_recover_from_a_failing_replica(traffic: Traffic) -> None:
    traffic.services["echo"] = ["flaky"]  # 503, 503, then 200s
    traffic.apply(policy("RetryPolicy", {"attempts": 3, "retryOn": ["gateway-error"],
                                         "backoff": {"baseInterval": "1ms"}}))  # fmt: skip
    status, _, body = await traffic.get("/")
    assert (status, body) == (200, b"flaky")
    assert traffic.failing["flaky"][0].requests == 3
    statuses = Counter([(await traffic.get("/"))[0] for _ in range(10)])
    assert statuses == Counter({200: 10})
    assert resilience_counts(traffic) == {"retries": 2, "budget_exhausted": 0, "ejections": 0}


@pytest.mark.asyncio
async def test_a_small_body_is_kept_and_sent_again_but_a_post_is_not_retried(
    traffic: Traffic,
) -> None:
    traffic.services["echo"] = ["flaky"]  # 503, 503, then 200s
    traffic.apply(policy("RetryPolicy", {"attempts": 3, "retryOn": ["gateway-error"],
                                         "backoff": {"baseInterval": "1ms"}}))  # fmt: skip
    flaky = traffic.failing["flaky"][0]
    status, _, _ = await traffic.get("/", method="POST", body=b"not idempotent")
    assert status == 503  # POST is not safe to send twice
    status, _, _ = await traffic.get("/", method="PUT", body=b"x" * 1000)
    assert status == 200
    assert flaky.bodies == [b"not idempotent", b"x" * 1000, b"x" * 1000]


@pytest.mark.asyncio
async def test_a_per_try_timeout_sends_a_stuck_request_again(traffic: Traffic) -> None:
    traffic.services["echo"] = ["stuck-once"]
    traffic.apply(policy("RetryPolicy", {"attempts": 2, "perTryTimeout": "200ms"}))
    status, _, body = await traffic.get("/")
    assert (status, body) == (200, b"stuck-once")
    assert traffic.failing["stuck-once"][0].requests == 2  # the stuck try, then the retry


@pytest.mark.asyncio
async def test_the_retry_budget_stops_a_retry_storm(traffic: Traffic) -> None:
    traffic.services["echo"] = ["bad"]
    traffic.apply(policy("RetryPolicy", {
        "attempts": 3, "retryOn": ["gateway-error"], "backoff": {"baseInterval": "1ms"},
        "budget": {"percent": 20, "minRetriesPerSecond": 0, "ttl": "60s"}}))  # fmt: skip
    statuses = Counter([(await traffic.get("/"))[0] for _ in range(50)])
    assert statuses == Counter({503: 50})
    sent = traffic.failing["bad"][0].requests
    # Without a budget 50 requests would be 200 tries; with it, about 20% more.
    assert 55 <= sent <= 61, sent
    counts = resilience_counts(traffic)
    assert counts["retries"] == sent - 50
    # A request stops at the first retry the budget refuses: each of those counted once.
    assert counts["budget_exhausted"] >= 50 - counts["retries"]


@pytest.mark.asyncio
async def test_an_endpoint_failing_every_request_is_ejected_and_let_back_in(
    traffic: Traffic,
) -> None:
    # Two replicas that both fail, so that the balancer's preferences do not decide
    # which one is tried: whichever fails twice in a row first is ejected, and at most
    # half of them may be out, so the other one takes every request after that.
    traffic.failing["bad-2"] = await start_failing(traffic.pki, "bad-2")
    traffic.services["echo"] = ["bad", "bad-2"]
    traffic.apply(policy("OutlierPolicy", {"consecutiveFailures": 2, "baseEjectionTime": "1s",
                                           "maxEjectedPercent": 50}))  # fmt: skip
    apps = [traffic.failing["bad"][0], traffic.failing["bad-2"][0]]
    for _ in range(30):
        assert (await traffic.get("/"))[0] == 503
    ejected = min(apps, key=lambda app: app.requests)
    assert ejected.requests == 2  # two failures in a row, then no more requests
    assert resilience_counts(traffic)["ejections"] == 1
    # After the ejection time it is let back in (and, failing again, ejected again).
    await asyncio.sleep(1.2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while ejected.requests == 2:
        assert loop.time() < deadline, "the ejected replica was never let back in"
        await traffic.get("/")


@pytest.mark.asyncio
async def test_requests_over_the_circuit_breaker_limit_get_503(traffic: Traffic) -> None:
    traffic.apply(policy("CircuitBreakerPolicy", {"maxRequests": 1}))
    hanging = asyncio.create_task(traffic.get("/hang"))
    limits = traffic.client.table.routes[("echo", "default", 80)].limits
    assert limits is not None
    for _ in range(200):
        if limits.active:
            break
        await asyncio.sleep(0.05)
    try:
        status, head, _ = await traffic.get("/")
        assert status == 503
        assert head["gossamer-error"] == (
            "circuit breaker: echo.default:80 has 1 requests in flight (maxRequests 1)"
        )
    finally:
        hanging.cancel()
    traffic.apply()  # the hanging request's connection goes with the limit
    status, _, _ = await traffic.get("/")
    assert status == 200


@pytest.mark.asyncio
async def test_an_injected_abort_says_it_was_injected(traffic: Traffic) -> None:
    traffic.apply(policy("FaultPolicy", {"abort": {"httpStatus": 418, "percent": 100}}))
    status, head, _ = await traffic.get("/")
    assert status == 418
    assert head["gossamer-error"].startswith("fault injected: abort with 418")


@pytest.mark.asyncio
async def test_mirrored_requests_reach_the_mirror_and_do_not_change_the_answer(
    traffic: Traffic,
) -> None:
    traffic.apply(
        httproute("mirror", [{"filters": [{"type": "RequestMirror", "requestMirror": {
            "backendRef": mirror_ref("echo-mirror")}}], "backendRefs": [ref("echo")]}])
    )  # fmt: skip
    for _ in range(5):
        status, _, body = await traffic.get("/copy")
        assert status == 200 and served_by(body) in {"echo-1", "echo-2"}
    mirror = traffic.workloads["mirror"].app
    for _ in range(50):
        if mirror.requests >= 5:
            break
        await asyncio.sleep(0.05)
    assert mirror.requests == 5


@pytest.mark.asyncio
async def test_a_small_request_body_is_mirrored_whole_and_a_large_one_not_at_all(
    traffic: Traffic,
) -> None:
    """With `Expect: 100-continue` too: this hop answers the 100 and keeps the body."""
    traffic.apply(
        httproute("mirror", [{"filters": [{"type": "RequestMirror", "requestMirror": {
            "backendRef": mirror_ref("echo-mirror")}}], "backendRefs": [ref("echo")]}])
    )  # fmt: skip
    small, large = b"s" * 20_000, b"L" * 100_000
    assert (await traffic.get("/small", method="POST", body=small))[0] == 200
    expect = {"Expect": "100-continue"}
    assert (await traffic.get("/expect", method="PUT", body=small, headers=expect))[0] == 200
    assert (await traffic.get("/large", method="POST", body=large))[0] == 200
    assert (await traffic.get("/after"))[0] == 200
    mirror = traffic.workloads["mirror"].app
    for _ in range(100):
        if any(path == "/after" for _, path, _, _ in mirror.received):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # a copy of /large, were there one, would have come first
    # Copies travel on their own connections: their order is not the requests'.
    assert sorted(mirror.received) == [
        ("GET", "/after", 0, hashlib.sha256(b"").hexdigest()),
        ("POST", "/small", len(small), hashlib.sha256(small).hexdigest()),
        ("PUT", "/expect", len(small), hashlib.sha256(small).hexdigest()),
    ]


@pytest.mark.asyncio
async def test_an_injected_delay_holds_the_request_then_sends_it(traffic: Traffic) -> None:
    traffic.apply(policy("FaultPolicy", {"delay": {"fixedDelay": "300ms", "percent": 100}}))
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, _, _ = await traffic.get("/")
    assert status == 200
    assert loop.time() - start >= 0.3


@pytest.mark.asyncio
async def test_a_mirror_that_never_answers_does_not_slow_the_primary(traffic: Traffic) -> None:
    traffic.apply(
        httproute("mirror", [{"filters": [{"type": "RequestMirror", "requestMirror": {
            "backendRef": mirror_ref("echo-stuck")}}], "backendRefs": [ref("echo")]}])
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(3):
        status, _, body = await traffic.get("/")
        assert status == 200 and served_by(body) in {"echo-1", "echo-2"}
    assert loop.time() - start < 5  # the mirror hangs for 10 s; the primary never waits
    stuck = traffic.failing["stuck"][0]
    for _ in range(50):
        if stuck.requests >= 3:
            break
        await asyncio.sleep(0.05)
    assert stuck.requests == 3
