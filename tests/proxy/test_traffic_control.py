"""TrafficControl in the proxy, over each protocol an app may speak (issue 16).

Real proxies and apps, as in test_policies_by_protocol (whose fixtures these use): the
client proxy ("web-1", labelled tier=web) gets the snapshot the control plane's
translation builds for a TrafficControl from tier=web to the echo service, and each
test calls echo through it over HTTP/1.1, HTTP/2 and gRPC.
"""

# The fixtures `mesh`, `client` and `protocol` come from test_policies_by_protocol; the
# tests' parameters of the same names are how pytest hands them in.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from tests.proxy.test_policies_by_protocol import (  # noqa: F401 - fixtures
    FAILED,
    OK,
    Client,
    Mesh,
    client,
    mesh,
    over_each_protocol,
    protocol,
    until,
)
from tests.proxy.test_traffic import httproute, policy, ref

REFUSED = (503, "RESOURCE_EXHAUSTED")


def control(name: str = "shield", mode: str = "Enforce", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "TrafficControl",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "from": {"selector": {"matchLabels": {"tier": "web"}}},
            "to": {"selector": {"matchLabels": {"echo": "member"}}},
            "mode": mode,
            **spec,
        },
    }


def refused_total(mesh: Mesh, reason: str, mode: str = "Enforce", name: str = "shield") -> int:
    text = mesh.client.controls.render()
    found = re.search(
        rf'gossamer_control_refused_total{{control_namespace="default",control_name="{name}",'
        rf'dst_namespace="default",dst_service="echo",mode="{mode}",reason="{reason}"}} (\d+)',
        text,
    )
    assert found is not None, text
    return int(found.group(1))


async def serve(mesh: Mesh, *objects: dict[str, Any], status: int | None = None) -> Any:
    mesh.labels = {"tier": "web"}
    app = await mesh.add("echo-1", status)
    mesh.services = {"echo": ["echo-1"]}
    mesh.apply(*objects)
    return app


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_rate_refuses_calls_over_it_and_says_when_to_come_back(
    mesh: Mesh, client: Client
) -> None:
    # 1 call a minute, a burst of 2: the third call in a row finds the bucket empty.
    await serve(mesh, control(rate={"limit": "1/m", "burst": 2}))

    replies = [await client.call() for _ in range(3)]

    assert [r.code for r in replies] == [client.code(OK)] * 2 + [client.code(REFUSED)]
    refused = replies[2]
    assert refused.reason == (
        "TrafficControl default/shield: over 0.0166667 requests/s to echo.default"
    )
    if not client.speaks_grpc:
        # The next token comes in a minute (less what the two calls took).
        assert 55 <= int(refused.headers["retry-after"]) <= 60
    assert refused_total(mesh, "rate") == 1


@over_each_protocol()
@pytest.mark.asyncio
async def test_dry_run_counts_what_it_would_refuse_and_refuses_nothing(
    mesh: Mesh, client: Client
) -> None:
    await serve(mesh, control(mode="DryRun", rate={"limit": "1/m", "burst": 1}))

    replies = [await client.call() for _ in range(3)]

    assert [r.code for r in replies] == [client.code(OK)] * 3
    assert refused_total(mesh, "rate", mode="DryRun") == 2


@over_each_protocol()
@pytest.mark.asyncio
async def test_quarantine_refuses_every_call_unless_the_source_is_allowed(
    mesh: Mesh, client: Client
) -> None:
    app = await serve(mesh, control(quarantine={}))

    refused = await client.call()

    assert refused.code == client.code(REFUSED)
    assert refused.reason == "TrafficControl default/shield: calls to echo.default are quarantined"
    assert app.requests == 0

    # Allowed by its labels: the control no longer acts on this proxy at all.
    mesh.apply(control(quarantine={"allow": [{"selector": {"matchLabels": {"tier": "web"}}}]}))
    assert mesh.client.table.routes[("echo", "default", 80)].controls == ()
    assert (await client.call()).code == client.code(OK)


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_bulkhead_holds_a_call_back_until_a_slot_frees_and_refuses_past_its_queue(
    mesh: Mesh, client: Client
) -> None:
    app = await mesh.add("stuck-once", 200, hang_first=1)
    mesh.labels = {"tier": "web"}
    mesh.services = {"echo": ["stuck-once"]}
    # The first call is held by the app until the route's timeout (1.5 s) ends it; the
    # second waits in the queue (up to 20 s) meanwhile, the third finds the queue full.
    rule = {"backendRefs": [ref("echo")], "timeouts": {"request": "1500ms"}}
    mesh.apply(
        httproute("calls", [rule]),
        control(concurrency={"maxInFlight": 1, "maxPending": 1, "queueTimeout": "20s"}),
    )
    edge = mesh.echo.controls[0]
    assert edge.bulkhead is not None

    first = asyncio.create_task(client.call(wait=10))
    await until(lambda: app.requests == 1, "the first call reached the app")
    second = asyncio.create_task(client.call(wait=10))
    await until(lambda: edge.bulkhead.queued() == 1, "the second call is held back")
    assert app.requests == 1
    third = await client.call()
    held, waited = await first, await second

    assert third.code == client.code(REFUSED)
    assert third.reason == (
        "TrafficControl default/shield: 1 calls to echo.default in flight (limit 1) and 1 waiting"
    )
    assert held.code != client.code(OK)  # the route's timeout ended it
    assert (waited.code, waited.instance) == (client.code(OK), "stuck-once")
    assert app.requests == 2
    assert (edge.bulkhead.active, edge.bulkhead.queued()) == (0, 0)
    assert refused_total(mesh, "concurrency") == 1


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_call_held_past_the_queue_timeout_is_refused(mesh: Mesh, client: Client) -> None:
    app = await mesh.add("stuck-once", 200, hang_first=1)
    mesh.labels = {"tier": "web"}
    mesh.services = {"echo": ["stuck-once"]}
    rule = {"backendRefs": [ref("echo")], "timeouts": {"request": "3s"}}
    mesh.apply(
        httproute("calls", [rule]),
        control(concurrency={"maxInFlight": 1, "maxPending": 5, "queueTimeout": "200ms"}),
    )

    first = asyncio.create_task(client.call(wait=10))
    await until(lambda: app.requests == 1, "the first call reached the app")
    second = await client.call()
    await first

    assert second.code == client.code(REFUSED)
    assert second.reason.endswith("(waited 0.2s in its queue)")
    assert app.requests == 1


@over_each_protocol()
@pytest.mark.asyncio
async def test_the_group_circuit_breaker_opens_after_failures_and_stops_calls(
    mesh: Mesh, client: Client
) -> None:
    app = await serve(
        mesh, control(circuitBreaker={"consecutiveFailures": 2, "ejectionTime": "1m"}), status=503
    )

    failing = [await client.call() for _ in range(2)]
    stopped = await client.call()

    assert [r.code for r in failing] == [client.code(FAILED)] * 2
    assert stopped.code == client.code(REFUSED)
    assert stopped.reason == "TrafficControl default/shield: the group's circuit breaker is open"
    assert app.requests == 2


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_controls_retry_budget_replaces_the_services_own(
    mesh: Mesh, client: Client
) -> None:
    # The service would retry every failure twice; the control allows no retries.
    retry = {"attempts": 2, "retryOn": ["5xx"], "budget": {"minRetriesPerSecond": 100}}
    app = await serve(
        mesh,
        policy("RetryPolicy", retry),
        control(retryBudget={"percent": 0, "minRetriesPerSecond": 0}),
        status=503,
    )

    reply = await client.call()

    assert reply.code == client.code(FAILED)
    assert app.requests == 1


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_control_for_another_source_group_does_nothing_here(
    mesh: Mesh, client: Client
) -> None:
    other = control(quarantine={})
    other["spec"]["from"] = {"selector": {"matchLabels": {"tier": "batch"}}}
    await serve(mesh, other)

    assert mesh.echo.controls == ()
    assert (await client.call()).code == client.code(OK)


@over_each_protocol()
@pytest.mark.asyncio
async def test_an_adaptive_bulkhead_shrinks_its_limit_when_the_destination_slows_down(
    mesh: Mesh, client: Client
) -> None:
    adaptive = {"algorithm": "Gradient2", "initialLimit": 20, "minLimit": 2, "maxLimit": 40}
    app = await serve(
        mesh, control(concurrency={"adaptive": adaptive, "maxPending": 500, "queueTimeout": "30s"})
    )
    bulkhead = mesh.echo.controls[0].bulkhead
    assert bulkhead is not None

    async def wave() -> None:
        # More callers than the limit, so it is used (Gradient2 moves only then).
        replies = await asyncio.gather(*(client.call(wait=30) for _ in range(30)))
        assert [r.code for r in replies] == [client.code(OK)] * 30  # held back, never refused

    for _ in range(3):
        await wave()
    fast = bulkhead.limit
    app.delay = 0.1  # the destination slows down
    for _ in range(4):
        await wave()

    # It shrinks, and below where it began: the slow destination holds fewer calls at
    # once. (How far depends on the app: the gRPC app serves 8 calls at a time, so its
    # limit never grew much while it was fast.)
    assert 2 <= bulkhead.limit < fast
    assert bulkhead.limit < 20
    assert bulkhead.active == 0 and bulkhead.queued() == 0
    assert refused_total(mesh, "concurrency") == 0
