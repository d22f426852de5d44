"""Every traffic policy the proxy applies, over each protocol an app may speak to it.

Each test body is written once and runs three times:

- `http1`: HTTP/1.1 from the app, to HTTP/1.1 apps;
- `http2`: h2c with prior knowledge from the app to the outbound listener, carried to
  the peer as HTTP/2 and translated there to the same HTTP/1.1 apps (decision 0043);
- `grpc`: a real grpcio client and server, h2c all the way to the app.

HTTP/1.1 requests (`proxy.outbound.http` with `proxy.forward.exchange`) and HTTP/2
streams (`proxy.outbound.h2`) drive the same `Call` (proxy.policy.call): these tests
say that the two agree (`over_each_protocol` takes a strict xfail per protocol for a
way in which they would not, so that a fix shows up as XPASS).
Redirects, rewrites and mirrors are HTTP/1.1's only (decision 0040): HTTP/2 gets the
documented 501 for a redirect or a rewrite.

The client proxy's snapshot is built by the real translation from Kubernetes-shaped
objects (`Traffic.apply`), as in test_traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import pytest
import pytest_asyncio

from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.policy.balancer import EndpointLoad
from gossamer.proxy.policy.resilience import Limits
from tests.proxy.conftest import Pki, fast_config, start_workload
from tests.proxy.test_e2e_grpc import grpc_workload
from tests.proxy.test_e2e_http import closed_port
from tests.proxy.test_h2to1 import H2Client
from tests.proxy.test_route_metrics import counts, series
from tests.proxy.test_traffic import (
    Traffic,
    httproute,
    policy,
    ref,
    resilience_counts,
    start_failing,
)

PROTOCOLS = ("http1", "http2", "grpc")
# A gRPC method's path, which HTTP requests use too, so that one route fits all three.
PATH = "/shop.Cart/Get"
# How long a stuck gRPC app holds a call (a stuck HTTP/1.1 app never answers): longer
# than any timeout here, so that an answer sooner than this was not the app's.
HOLD = 3.0
# How long a client waits for an answer: well past every timeout here, so that a
# request the proxy loses fails its test soon, as "no answer", instead of hanging it.
CALL_TIMEOUT = 2.5
BACKOFF = {"baseInterval": "1ms"}
ECHO = ("echo", "default", 80)
ROUTE = {"route_namespace": "default", "route_name": "calls"}

# What the proxy answers, as (HTTP status, the gRPC status a gRPC client reads).
OK = (200, "OK")
FAILED = (503, "UNAVAILABLE")  # an app's 503, or gRPC's UNAVAILABLE
REFUSED = (502, "UNAVAILABLE")  # a connection the endpoint refused
TIMED_OUT = (504, "DEADLINE_EXCEEDED")
NO_RULE = (404, "UNIMPLEMENTED")
NOT_APPLIED = (501, "UNKNOWN")
Outcome = tuple[int, str]


def over_each_protocol(**xfails: str) -> pytest.MarkDecorator:
    """Run the test once per protocol; `xfails` names those on which it fails today and
    why (strict, so that the fix shows up as XPASS and the mark goes)."""
    return pytest.mark.parametrize(
        "protocol",
        [
            pytest.param(
                p, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=xfails[p])
            )
            if p in xfails
            else p
            for p in PROTOCOLS
        ],
    )


# ---- apps ---------------------------------------------------------------------------


class App(Protocol):
    requests: int  # tries that reached the app

    async def close(self) -> None: ...


class _AnyMethod(grpc.GenericRpcHandler):
    """Every method of every service, answered by one function of (method, context)."""

    def __init__(self, answer: Callable[[str, grpc.ServicerContext], bytes]) -> None:
        self.answer = answer

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = str(details.method)  # type: ignore[attr-defined]
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self.answer(method, context)
        )


class GrpcApp:
    """test_traffic's StatusApp and conftest's EchoApp as a gRPC server: `status` None
    echoes the call (its path and metadata, as JSON), 200 answers its name, 503 ends
    every call with UNAVAILABLE, 0 holds every call; `hang_first` calls are held, then
    `fail_first` end with UNAVAILABLE."""

    def __init__(
        self, name: str, status: int | None, hang_first: int = 0, fail_first: int = 0
    ) -> None:
        self.name = name
        self.status = status
        self.hang_first = hang_first
        self.fail_first = fail_first
        self.requests = 0
        self.delay = 0.0  # seconds each call is held first: a destination that slows down
        self._count = threading.Lock()
        self._closed = threading.Event()
        self._pool = futures.ThreadPoolExecutor(max_workers=8)
        self._server = grpc.server(self._pool)

    def start(self) -> int:
        self._server.add_generic_rpc_handlers((_AnyMethod(self._answer),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return port

    def _answer(self, method: str, context: grpc.ServicerContext) -> bytes:
        with self._count:
            self.requests += 1
            n = self.requests
        if self.delay:
            self._closed.wait(self.delay)
        if self.status == 0 or n <= self.hang_first:
            self._closed.wait(HOLD)
        elif self.status == 503 or n <= self.hang_first + self.fail_first:
            # Before any metadata: a trailers-only answer, as a failing server sends.
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is failing")
        context.send_initial_metadata((("x-instance", self.name),))
        if self.status is not None:
            return self.name.encode()
        seen = [list(pair) for pair in context.invocation_metadata()]
        return json.dumps({"instance": self.name, "path": method, "headers": seen}).encode()

    async def close(self) -> None:
        self._closed.set()
        self._server.stop(None)
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Mesh(Traffic):
    """A client proxy ("web-1") and workloads, added by each test, whose apps speak the
    protocol under test; a `dead` workload's inbound port refuses connections."""

    protocol: str = "http1"
    apps: dict[str, App] = field(default_factory=dict)
    proxies: dict[str, DataPlane] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)

    def inbound_port(self, name: str) -> int:
        if name in self.dead:
            return self.dead[name]
        address = self.proxies[name].inbound_address
        assert address is not None
        return address[1]

    async def add(
        self, name: str, status: int | None = None, hang_first: int = 0, fail_first: int = 0
    ) -> App:
        """A workload: an app as GrpcApp describes, behind its own inbound proxy."""
        if self.protocol == "grpc":
            grpc_app = GrpcApp(name, status, hang_first, fail_first)
            self.apps[name] = grpc_app
            self.proxies[name] = await grpc_workload(self.pki, name, grpc_app.start())
        elif status is None:
            workload = await start_workload(self.pki, name)
            self.apps[name], self.proxies[name] = workload.app, workload.proxy
        else:
            self.apps[name], self.proxies[name] = await start_failing(
                self.pki, name, status, hang_first, fail_first
            )
        return self.apps[name]

    def add_dead(self, name: str) -> None:
        self.dead[name] = closed_port()

    @property
    def echo(self) -> Any:
        """The client proxy's route for echo.default:80."""
        return self.client.table.routes[ECHO]


@pytest.fixture
def protocol() -> str:
    """Each protocol's tests parametrize this; the rest speak HTTP/1.1 to HTTP/1.1 apps."""
    return "http1"


@pytest_asyncio.fixture
async def mesh(pki: Pki, protocol: str) -> AsyncIterator[Mesh]:
    client = DataPlane(fast_config(), on_interest=lambda key: None)
    m = Mesh(pki, client, protocol=protocol)
    try:
        await client.start()
        client.set_credentials(pki.issue("default", "web"))
        yield m
    finally:
        await client.close()
        for proxy in m.proxies.values():
            await proxy.close()
        for app in m.apps.values():
            await app.close()


# ---- clients ------------------------------------------------------------------------


@dataclass
class Reply:
    code: int | str  # the HTTP status, or the name of the gRPC status
    headers: dict[str, str]  # the response's (a gRPC call's initial metadata)
    body: bytes
    reason: str  # gossamer-error, or the gRPC status's details

    @property
    def instance(self) -> str:
        """The workload whose app answered."""
        return self.headers.get("x-instance", "")

    def received(self) -> dict[str, Any]:
        """What an echo app saw of the request: its path, and its headers lowercased."""
        seen = json.loads(self.body)
        return {"path": seen["path"], "headers": {k.lower(): v for k, v in seen["headers"]}}


class Client:
    """The app's side of one protocol: `call` sends one request for echo, unary."""

    speaks_grpc = False

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    async def call(
        self, path: str = PATH, headers: dict[str, str] | None = None, wait: float = CALL_TIMEOUT
    ) -> Reply:
        try:
            return await asyncio.wait_for(self._call(path, headers or {}), wait)
        except TimeoutError:
            return Reply(f"no answer in {wait:g}s", {}, b"", "")

    async def _call(self, path: str, headers: dict[str, str]) -> Reply:
        raise NotImplementedError

    def code(self, outcome: Outcome) -> int | str:
        """What this protocol's client reads for `outcome`."""
        return outcome[1] if self.speaks_grpc else outcome[0]

    def series(self, service: str, outcome: Outcome, **labels: str) -> tuple[tuple[str, str], ...]:
        """The gossamer_requests_total series `outcome` is counted in (test_route_metrics)."""
        if self.speaks_grpc:
            number = grpc.StatusCode[outcome[1]].value[0]
            return series(dst_service=service, code="200", grpc_status=str(number), **labels)
        return series(dst_service=service, code=str(outcome[0]), **labels)


class Http1(Client):
    async def _call(self, path: str, headers: dict[str, str]) -> Reply:
        status, head, body = await self.mesh.get(path, headers=headers)
        return Reply(status, head, body, head.get("gossamer-error", ""))


class Http2(Client):
    async def _call(self, path: str, headers: dict[str, str]) -> Reply:
        async with H2Client.connect(self.mesh.client) as h2:
            answer = await h2.request(path, "GET", *headers.items())
        if answer.reset is not None:
            return Reply(f"RST_STREAM {answer.reset}", {}, b"", "")
        head = {k.decode(): v.decode() for k, v in answer.headers if k[:1] != b":"}
        code = answer.status if answer.headers else 0
        return Reply(code, head, bytes(answer.body), head.get("gossamer-error", ""))


class Grpc(Client):
    speaks_grpc = True

    async def _call(self, path: str, headers: dict[str, str]) -> Reply:
        loop = asyncio.get_running_loop()
        assert self.mesh.client.outbound_address is not None
        host, port = self.mesh.client.outbound_address
        channel = grpc.insecure_channel(
            f"{host}:{port}", options=[("grpc.default_authority", "echo")]
        )
        try:
            metadata = tuple(headers.items())
            call = channel.unary_unary(path).future(b"", timeout=20, metadata=metadata)
            done = asyncio.Event()
            call.add_done_callback(lambda _: loop.call_soon_threadsafe(done.set))
            try:
                await done.wait()
            except asyncio.CancelledError:
                call.cancel()
                raise
            code = call.code()
            body = call.result() if code == grpc.StatusCode.OK else b""
            head = {k: v for k, v in call.initial_metadata() or () if isinstance(v, str)}
            return Reply(code.name, head, body, call.details() or "")
        finally:
            channel.close()


@pytest.fixture
def client(mesh: Mesh) -> Client:
    return {"http1": Http1, "http2": Http2, "grpc": Grpc}[mesh.protocol](mesh)


async def until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def route_retries(mesh: Mesh) -> int:
    """The client's retries of calls the HTTPRoute "calls" sent to echo, as exported."""
    prefix = (
        'gossamer_retries_total{dst_namespace="default",dst_service="echo",'
        'route_namespace="default",route_name="calls"} '
    )
    lines = [x for x in mesh.client.metrics.render().splitlines() if x.startswith(prefix)]
    return int(lines[0].rsplit(" ", 1)[1]) if lines else 0


def elapsed_since(start: float) -> float:
    return asyncio.get_running_loop().time() - start


def now() -> float:
    return asyncio.get_running_loop().time()


# ---- RetryPolicy --------------------------------------------------------------------


RETRIES = [
    ("a RetryPolicy retrying gateway errors",
     policy("RetryPolicy", {"attempts": 1, "retryOn": ["gateway-error"], "backoff": BACKOFF}),
     {}),
    ("a RetryPolicy retrying any 5xx",
     policy("RetryPolicy", {"attempts": 1, "retryOn": ["5xx"], "backoff": BACKOFF}),
     {}),
    ("a RetryPolicy retrying the status code 503",
     policy("RetryPolicy", {"attempts": 1, "retryOn": ["retriable-status-codes"],
                            "codes": [503], "backoff": BACKOFF}),
     {}),
    ("an HTTPRoute rule's retry of 503",
     httproute("calls", [{"backendRefs": [ref("echo")],
                          "retry": {"attempts": 1, "codes": [503], "backoff": "1ms"}}]),
     ROUTE),
]  # fmt: skip


@pytest.mark.parametrize(("retry", "labels"), [c[1:] for c in RETRIES], ids=[c[0] for c in RETRIES])
@over_each_protocol()
@pytest.mark.asyncio
async def test_a_failed_try_is_sent_again_and_the_second_try_answers(
    mesh: Mesh, client: Client, retry: dict[str, Any], labels: dict[str, str]
) -> None:
    flaky = await mesh.add("flaky", 200, fail_first=1)
    mesh.services = {"echo": ["flaky"]}
    mesh.apply(retry)

    reply = await client.call()

    assert (reply.code, reply.instance) == (client.code(OK), "flaky")
    assert flaky.requests == 2
    # A call a route sent has its retries counted for that route, and only there.
    routed = 1 if labels else 0
    assert resilience_counts(mesh) == {
        "retries": 1 - routed,
        "budget_exhausted": 0,
        "ejections": 0,
    }
    assert route_retries(mesh) == routed
    # The request is counted once, as it ended: not once per try.
    assert counts(mesh.client.metrics.render()) == {client.series("echo", OK, **labels): 1}


@over_each_protocol()
@pytest.mark.asyncio
async def test_retries_stop_after_the_policys_attempts(mesh: Mesh, client: Client) -> None:
    bad = await mesh.add("bad", 503)
    mesh.services = {"echo": ["bad"]}
    mesh.apply(policy("RetryPolicy", {"attempts": 2, "retryOn": ["gateway-error"],
                                      "backoff": BACKOFF}))  # fmt: skip

    reply = await client.call()

    assert reply.code == client.code(FAILED)
    assert bad.requests == 3  # the request and two retries
    assert resilience_counts(mesh) == {"retries": 2, "budget_exhausted": 0, "ejections": 0}
    assert counts(mesh.client.metrics.render()) == {client.series("echo", FAILED): 1}


@over_each_protocol()
@pytest.mark.asyncio
async def test_the_retry_budget_stops_a_retry_storm(mesh: Mesh, client: Client) -> None:
    bad = await mesh.add("bad", 503)
    mesh.services = {"echo": ["bad"]}
    mesh.apply(policy("RetryPolicy", {
        "attempts": 3, "retryOn": ["gateway-error"], "backoff": BACKOFF,
        "budget": {"percent": 20, "minRetriesPerSecond": 0, "ttl": "60s"}}))  # fmt: skip

    for i in range(50):
        reply = await client.call()
        assert reply.code == client.code(FAILED), (i, reply)

    # Without a budget 50 requests would be 200 tries; with it, about 20% more.
    assert 55 <= bad.requests <= 61, bad.requests
    counted = resilience_counts(mesh)
    assert counted["retries"] == bad.requests - 50
    # A request stops at the first retry the budget refuses: each of those counted once.
    assert counted["budget_exhausted"] >= 50 - counted["retries"]
    assert counts(mesh.client.metrics.render()) == {client.series("echo", FAILED): 50}


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_per_try_timeout_sends_a_stuck_request_again(mesh: Mesh, client: Client) -> None:
    stuck_once = await mesh.add("stuck-once", 200, hang_first=1)
    mesh.services = {"echo": ["stuck-once"]}
    mesh.apply(policy("RetryPolicy", {"attempts": 1, "perTryTimeout": "300ms",
                                      "backoff": BACKOFF}))  # fmt: skip

    start = now()
    reply = await client.call()

    assert (reply.code, reply.instance) == (client.code(OK), "stuck-once")
    assert elapsed_since(start) < HOLD  # the second try's answer: the first never came
    assert stuck_once.requests == 2
    assert resilience_counts(mesh)["retries"] == 1


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_retry_policy_without_connect_failure_does_not_retry_a_refused_connection(
    mesh: Mesh, client: Client
) -> None:
    live = await mesh.add("live")
    mesh.add_dead("dead")
    mesh.services = {"echo": ["live", "dead"]}
    mesh.apply(policy("RetryPolicy", {"attempts": 2, "retryOn": ["gateway-error"],
                                      "backoff": BACKOFF}))  # fmt: skip
    dead = _prefer_the_dead_endpoint(mesh)

    reply = await client.call()

    assert dead.failures == 1  # it was tried, and refused
    assert reply.code == client.code(REFUSED), reply
    assert "connect refused by 127.0.0.1:" in reply.reason
    assert live.requests == 0


CONNECT_RETRIES = [
    ("retryOn connect-failure", ["connect-failure"]),
    ("retryOn 5xx", ["5xx"]),
    ("the default retryOn", None),
]


@pytest.mark.parametrize(
    "retry_on", [c[1] for c in CONNECT_RETRIES], ids=[c[0] for c in CONNECT_RETRIES]
)
@over_each_protocol()
@pytest.mark.asyncio
async def test_a_retry_policy_on_connect_failures_sends_a_refused_request_to_another_endpoint(
    mesh: Mesh, client: Client, retry_on: list[str] | None
) -> None:
    live = await mesh.add("live")
    mesh.add_dead("dead")
    mesh.services = {"echo": ["live", "dead"]}
    spec: dict[str, Any] = {"attempts": 2, "backoff": BACKOFF}
    if retry_on is not None:
        spec["retryOn"] = retry_on
    mesh.apply(policy("RetryPolicy", spec))
    dead = _prefer_the_dead_endpoint(mesh)

    reply = await client.call()

    assert dead.failures == 1  # it was tried, and refused
    assert (reply.code, reply.instance) == (client.code(OK), "live")
    assert live.requests == 1


def _prefer_the_dead_endpoint(mesh: Mesh) -> EndpointLoad:
    """Make the live endpoint look slow, so that the balancer (two endpoints: both are
    drawn, the cheaper wins) tries the dead one first; the dead one's load."""
    balancer = mesh.echo.balancer
    loads = {
        pool.endpoint.workload: load
        for pool, load in zip(balancer.items, balancer.loads, strict=True)
    }
    # Both as of now: a load last stamped long ago has decayed to nothing, and two
    # zero costs tie, which the balancer breaks at random.
    now = asyncio.get_running_loop().time()
    loads["live"].ewma, loads["live"].stamp = 100.0, now
    loads["dead"].ewma, loads["dead"].stamp = 0.001, now
    return loads["dead"]


# ---- route timeouts -----------------------------------------------------------------


TIMEOUTS = [
    ("the request timeout", "request", "request timeout: echo.default:80"),
    ("the backend request timeout", "backendRequest", "backend request timeout: "),
]


@pytest.mark.parametrize(("timeout", "reason"), [c[1:] for c in TIMEOUTS],
                         ids=[c[0] for c in TIMEOUTS])  # fmt: skip
@over_each_protocol()
@pytest.mark.asyncio
async def test_a_route_timeout_ends_a_request_the_app_does_not_answer(
    mesh: Mesh, client: Client, timeout: str, reason: str
) -> None:
    await mesh.add("stuck", 0)
    mesh.services = {"echo": ["stuck"]}
    mesh.apply(httproute("calls", [{"backendRefs": [ref("echo")], "timeouts": {timeout: "300ms"}}]))

    start = now()
    reply = await client.call()

    assert reply.code == client.code(TIMED_OUT)
    assert reply.reason.startswith(reason), reply.reason
    assert reply.reason.endswith(" did not answer in 0.3s"), reply.reason
    assert elapsed_since(start) < HOLD  # the proxy's 300 ms, not the app's
    assert counts(mesh.client.metrics.render()) == {client.series("echo", TIMED_OUT, **ROUTE): 1}


@pytest.mark.asyncio
async def test_a_backend_request_timeout_names_the_same_thing_over_http1_and_http2(
    mesh: Mesh,
) -> None:
    await mesh.add("stuck", 0)
    mesh.services = {"echo": ["stuck"]}
    rule = {"backendRefs": [ref("echo")], "timeouts": {"backendRequest": "300ms"}}
    mesh.apply(httproute("calls", [rule]))

    over_http1 = await Http1(mesh).call()
    over_http2 = await Http2(mesh).call()

    assert over_http1.code == over_http2.code == 504
    assert over_http1.reason == over_http2.reason


# ---- FaultPolicy --------------------------------------------------------------------


@over_each_protocol()
@pytest.mark.asyncio
async def test_an_injected_abort_answers_every_request_and_says_so(
    mesh: Mesh, client: Client
) -> None:
    app = await mesh.add("echo-1")
    mesh.services = {"echo": ["echo-1"]}
    mesh.apply(policy("FaultPolicy", {"abort": {"httpStatus": 503, "percent": 100}}))

    replies = [await client.call() for _ in range(3)]

    assert [r.code for r in replies] == [client.code(FAILED)] * 3
    assert replies[0].reason.startswith("fault injected: abort with 503 for echo.default:80")
    assert app.requests == 0
    assert counts(mesh.client.metrics.render()) == {client.series("echo", FAILED): 3}


@over_each_protocol()
@pytest.mark.asyncio
async def test_an_injected_delay_holds_the_request_then_sends_it(
    mesh: Mesh, client: Client
) -> None:
    app = await mesh.add("echo-1")
    mesh.services = {"echo": ["echo-1"]}
    mesh.apply(policy("FaultPolicy", {"delay": {"fixedDelay": "300ms", "percent": 100}}))

    start = now()
    reply = await client.call()

    assert (reply.code, reply.instance) == (client.code(OK), "echo-1")
    assert elapsed_since(start) >= 0.25  # generous: the loop's clock is coarse
    assert app.requests == 1


# ---- CircuitBreakerPolicy -----------------------------------------------------------


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_request_over_max_requests_is_refused_and_the_slot_comes_back(
    mesh: Mesh, client: Client
) -> None:
    app = await mesh.add("stuck-once", 200, hang_first=1)
    mesh.services = {"echo": ["stuck-once"]}
    # The first request is held by the app until the route's timeout ends it.
    rule = {"backendRefs": [ref("echo")], "timeouts": {"request": "1500ms"}}
    mesh.apply(httproute("calls", [rule]), policy("CircuitBreakerPolicy", {"maxRequests": 1}))

    first = asyncio.create_task(client.call(wait=10))
    try:
        await until(lambda: app.requests == 1, "the first request reached the app")
        refused = await client.call()
    finally:
        held = await first
    after = await client.call()

    assert refused.code == client.code(FAILED)
    assert refused.reason == (
        "circuit breaker: echo.default:80 has 1 requests in flight (maxRequests 1)"
    )
    assert held.code == client.code(TIMED_OUT)
    assert (after.code, after.instance) == (client.code(OK), "stuck-once")
    assert app.requests == 2  # the first and the last: the refused one never left
    assert counts(mesh.client.metrics.render()) == {
        client.series("echo", FAILED, **ROUTE): 1,
        client.series("echo", TIMED_OUT, **ROUTE): 1,
        client.series("echo", OK, **ROUTE): 1,
    }


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_request_whose_client_gives_up_gives_its_slot_back(
    mesh: Mesh, client: Client
) -> None:
    app = await mesh.add("stuck-once", 200, hang_first=1)
    mesh.services = {"echo": ["stuck-once"]}
    mesh.apply(policy("CircuitBreakerPolicy", {"maxRequests": 1}))
    limits: Limits = mesh.echo.limits

    first = asyncio.create_task(client.call(wait=10))
    try:
        await until(lambda: app.requests == 1, "the first request reached the app")
    finally:
        first.cancel()  # the app never answers it: its client closes the connection
        with contextlib.suppress(asyncio.CancelledError):
            await first
    await until(lambda: limits.active == 0, "the slot came back", seconds=3)
    after = await client.call()

    assert (after.code, after.instance) == (client.code(OK), "stuck-once")


# ---- OutlierPolicy ------------------------------------------------------------------


@over_each_protocol()
@pytest.mark.asyncio
async def test_consecutive_failures_eject_an_endpoint(mesh: Mesh, client: Client) -> None:
    # Two replicas that both fail, so that the balancer's preferences do not decide
    # which one is tried: whichever fails twice in a row first is ejected, and at most
    # half of them may be out, so the other one takes every request after that.
    apps = [await mesh.add("bad", 503), await mesh.add("bad-2", 503)]
    mesh.services = {"echo": ["bad", "bad-2"]}
    mesh.apply(policy("OutlierPolicy", {"consecutiveFailures": 2, "baseEjectionTime": "30s",
                                        "maxEjectedPercent": 50}))  # fmt: skip

    codes = Counter([(await client.call()).code for _ in range(12)])

    assert codes == Counter({client.code(FAILED): 12})
    assert min(app.requests for app in apps) == 2  # two failures in a row, then none
    assert resilience_counts(mesh) == {"retries": 0, "budget_exhausted": 0, "ejections": 1}


# ---- HTTPRoute ----------------------------------------------------------------------


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_header_match_reaches_the_canary_and_no_match_is_answered_by_the_proxy(
    mesh: Mesh, client: Client
) -> None:
    await mesh.add("echo-1")
    await mesh.add("canary")
    mesh.services = {"echo": ["echo-1"], "echo-canary": ["canary"]}
    mesh.apply(
        httproute("canary", [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/shop.Cart"},
                          "headers": [{"name": "x-canary", "value": "1"}]}],
             "backendRefs": [ref("echo-canary")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/shop.Cart"}}],
             "backendRefs": [ref("echo")]},
        ])
    )  # fmt: skip

    canary = await client.call(headers={"x-canary": "1"})
    stable = await client.call()
    unmatched = await client.call("/shop.Orders/List")

    assert (canary.code, canary.instance) == (client.code(OK), "canary")
    assert (stable.code, stable.instance) == (client.code(OK), "echo-1")
    assert unmatched.code == client.code(NO_RULE)
    assert unmatched.reason.startswith(
        "no rule of the HTTPRoutes of echo.default:80 (default/canary) matches"
    )


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_request_header_modifier_edits_what_the_app_receives(
    mesh: Mesh, client: Client
) -> None:
    await mesh.add("echo-1")
    mesh.services = {"echo": ["echo-1"]}
    edit = {"set": [{"name": "x-env", "value": "test"}], "remove": ["x-drop"]}
    mesh.apply(
        httproute("calls", [{"backendRefs": [ref("echo")], "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": edit}]}])
    )  # fmt: skip

    reply = await client.call(headers={"x-drop": "1", "x-keep": "2"})

    assert reply.code == client.code(OK)
    received = reply.received()["headers"]
    assert (received["x-env"], received["x-keep"]) == ("test", "2")
    assert "x-drop" not in received


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_response_header_modifier_edits_what_the_client_receives(
    mesh: Mesh, client: Client
) -> None:
    await mesh.add("echo-1")
    mesh.services = {"echo": ["echo-1"]}
    edit = {"add": [{"name": "x-route", "value": "calls"}]}
    mesh.apply(
        httproute("calls", [{"backendRefs": [ref("echo")], "filters": [
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": edit}]}])
    )  # fmt: skip

    reply = await client.call()

    assert (reply.code, reply.instance) == (client.code(OK), "echo-1")
    assert reply.headers.get("x-route") == "calls"


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_weighted_split_lands_within_statistical_bounds(mesh: Mesh, client: Client) -> None:
    await mesh.add("echo-1")
    await mesh.add("canary")
    mesh.services = {"echo": ["echo-1"], "echo-canary": ["canary"]}
    mesh.apply(httproute("split", [{"backendRefs": [ref("echo", 3), ref("echo-canary", 1)]}]))

    seen = Counter([(await client.call()).instance for _ in range(80)])

    assert sum(seen.values()) == seen["echo-1"] + seen["canary"] == 80, seen
    # Binomial(80, 0.25): mean 20, sd 3.9; 6..36 is beyond 3.5 sd either way.
    assert 6 <= seen["canary"] <= 36, seen


_REDIRECT = {"type": "RequestRedirect", "requestRedirect": {
    "scheme": "https", "hostname": "shop.example", "statusCode": 301,
    "path": {"type": "ReplaceFullPath", "replaceFullPath": "/here"}}}  # fmt: skip
_REWRITE = {"type": "URLRewrite", "urlRewrite": {
    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/shop.CartV2"}}}  # fmt: skip
NOT_ON_HTTP2 = "redirects and rewrites are not applied to HTTP/2"
FILTERS = [
    ("a redirect", {"filters": [_REDIRECT]}, (301, "location", "https://shop.example/here")),
    ("a rewrite", {"filters": [_REWRITE], "backendRefs": [ref("echo")]},
     (200, "path", "/shop.CartV2/Get")),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "over_http1"), [c[1:] for c in FILTERS],
                         ids=[c[0] for c in FILTERS])  # fmt: skip
@over_each_protocol()
@pytest.mark.asyncio
async def test_redirects_and_rewrites_apply_to_http1_and_http2_gets_a_501(
    mesh: Mesh, client: Client, protocol: str, rule: dict[str, Any],
    over_http1: tuple[int, str, str],
) -> None:  # fmt: skip
    app = await mesh.add("echo-1")
    mesh.services = {"echo": ["echo-1"]}
    mesh.apply(
        httproute(
            "calls",
            [{"matches": [{"path": {"type": "PathPrefix", "value": "/shop.Cart"}}], **rule}],
        )
    )

    reply = await client.call()

    if protocol == "http1":
        status, where, value = over_http1
        assert reply.code == status
        seen = reply.headers if where == "location" else reply.received()
        assert seen[where] == value
    else:
        assert reply.code == client.code(NOT_APPLIED)
        assert reply.reason.endswith(NOT_ON_HTTP2), reply.reason
        assert app.requests == 0
        # Still the route's request, in its metrics.
        assert counts(mesh.client.metrics.render()) == {
            client.series("echo", NOT_APPLIED, **ROUTE): 1
        }


# ---- metrics ------------------------------------------------------------------------


@over_each_protocol()
@pytest.mark.asyncio
async def test_requests_are_counted_per_route_and_status_and_unmatched_ones_without(
    mesh: Mesh, client: Client
) -> None:
    await mesh.add("echo-1")
    await mesh.add("bad", 503)
    mesh.services = {"echo": ["echo-1"], "echo-bad": ["bad"]}
    mesh.apply(
        httproute("calls", [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/shop.Cart"}}],
             "backendRefs": [ref("echo")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/shop.Broken"}}],
             "backendRefs": [ref("echo-bad")]},
        ])
    )  # fmt: skip

    sent = [(PATH, OK)] * 3 + [("/shop.Broken/Get", FAILED)] * 2 + [("/other.Svc/Get", NO_RULE)]
    for path, outcome in sent:
        assert (await client.call(path)).code == client.code(outcome), path

    assert counts(mesh.client.metrics.render()) == {
        client.series("echo", OK, **ROUTE): 3,
        client.series("echo-bad", FAILED, **ROUTE): 2,
        # No rule matched: the request is the service's, no route's.
        client.series("echo", NO_RULE): 1,
    }


@pytest.mark.asyncio
async def test_an_http1_request_whose_client_gives_up_is_counted_499(mesh: Mesh) -> None:
    """A caller that gives up on a slow service leaves a 499 in the proxy's counts (a
    failure in golden metrics), not nothing: the cascade scenario saw services that
    every caller gave up on show no traffic at all."""
    client = Http1(mesh)
    app = await mesh.add("stuck-once", 200, hang_first=1)
    mesh.services = {"echo": ["stuck-once"]}
    mesh.apply()

    first = asyncio.create_task(client.call(wait=10))
    try:
        await until(lambda: app.requests == 1, "the request reached the app")
    finally:
        first.cancel()  # the app never answers: its client closes the connection
        with contextlib.suppress(asyncio.CancelledError):
            await first
    gone = series(dst_service="echo", code="499")
    await until(
        lambda: counts(mesh.client.metrics.render()).get(gone) == 1,
        "the abandoned request was counted 499",
    )
    assert counts(mesh.client.metrics.render()) == {gone: 1}  # and nothing else
