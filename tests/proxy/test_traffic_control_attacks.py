"""TrafficControl in the proxy, attacked: a control edited while calls are held or in
flight (issue 16). Each test here showed a defect found by trying, first as a strict
xfail; the defects are fixed (a removed or DryRun bulkhead lets its queue go, a call
gives its slot back to the bulkhead it entered, a lowered adaptive maximum is in force
at once, a caller that leaves leaves the queue, a held gRPC call keeps its request for
a retry, a control past its ttl stays stopped); one that is not fixed keeps its strict
xfail (a tunnel's slot).

Real proxies and apps, as in test_traffic_control (whose fixtures and helpers these
use): the client proxy "web-1" (tier=web) gets the snapshot the control plane's
translation builds, and each test calls echo through it.
"""

# The fixtures `mesh`, `client` and `protocol` come from test_policies_by_protocol; the
# tests' parameters of the same names are how pytest hands them in.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gossamer.translate.controltypes import ConcurrencyView, ControlView
from tests.proxy.conftest import Pki
from tests.proxy.test_e2e_upgrade import _websocket_echo, two_proxies
from tests.proxy.test_policies_by_protocol import (  # noqa: F401 - fixtures
    OK,
    Client,
    Http1,
    Mesh,
    client,
    mesh,
    over_each_protocol,
    protocol,
    until,
)
from tests.proxy.test_traffic import httproute, policy, ref
from tests.proxy.test_traffic_control import REFUSED, control, serve

# One call in flight at most, the next held back for a second.
BULKHEAD = {"maxInFlight": 1, "maxPending": 5, "queueTimeout": "1s"}
RATE = {"limit": "100/s", "burst": 100}  # what the control keeps when its bulkhead goes


async def _one_stuck_one_held(mesh: Mesh, client: Client, route_timeout: str, **spec: Any) -> Any:
    """The first call stuck in the app (until the route's timeout), the second held back
    in the control's queue; (the app, the edge, the first call, the second call)."""
    app = await mesh.add("stuck-once", 200, hang_first=1)
    mesh.labels = {"tier": "web"}
    mesh.services = {"echo": ["stuck-once"]}
    rule = {"backendRefs": [ref("echo")], "timeouts": {"request": route_timeout}}
    mesh.apply(httproute("calls", [rule]), control(**spec))
    edge = mesh.echo.controls[0]
    first = asyncio.create_task(client.call(wait=10))
    await until(lambda: app.requests == 1, "the first call reached the app")
    second = asyncio.create_task(client.call(wait=2.5))
    await until(lambda: edge.bulkhead.queued() == 1, "the second call is held back")
    return app, edge, rule, first, second


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_call_held_when_its_bulkhead_is_removed_goes_on(mesh: Mesh, client: Client) -> None:
    app, _, rule, first, second = await _one_stuck_one_held(
        mesh, client, "3s", concurrency=BULKHEAD, rate=RATE
    )

    # The control stays (a rate), its bulkhead goes: nothing holds the call back now.
    mesh.apply(httproute("calls", [rule]), control(rate=RATE))
    waited = await second
    await first  # ended by the route's timeout

    assert (waited.code, waited.instance) == (client.code(OK), "stuck-once")
    assert app.requests == 2


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_call_held_when_its_control_turns_dry_run_goes_on(
    mesh: Mesh, client: Client
) -> None:
    app, _, rule, first, second = await _one_stuck_one_held(
        mesh, client, "3s", concurrency=BULKHEAD
    )

    mesh.apply(httproute("calls", [rule]), control(mode="DryRun", concurrency=BULKHEAD))
    waited = await second
    await first  # ended by the route's timeout

    assert (waited.code, waited.instance) == (client.code(OK), "stuck-once")
    assert app.requests == 2


@over_each_protocol()
@pytest.mark.asyncio
async def test_slots_balance_when_a_bulkhead_goes_and_comes_back_with_a_call_in_flight(
    mesh: Mesh, client: Client
) -> None:
    app = await mesh.add("stuck-once", 200, hang_first=1)
    mesh.labels = {"tier": "web"}
    mesh.services = {"echo": ["stuck-once"]}
    rule = {"backendRefs": [ref("echo")], "timeouts": {"request": "1500ms"}}
    mesh.apply(httproute("calls", [rule]), control(concurrency=BULKHEAD, rate=RATE))
    edge = mesh.echo.controls[0]
    first = asyncio.create_task(client.call(wait=10))
    await until(lambda: app.requests == 1, "the first call reached the app")

    mesh.apply(httproute("calls", [rule]), control(rate=RATE))  # the bulkhead goes
    mesh.apply(httproute("calls", [rule]), control(concurrency=BULKHEAD, rate=RATE))  # back
    second = await client.call()
    stuck = await first  # ended by the route's timeout

    assert second.code == client.code(OK)
    assert stuck.code != client.code(OK)
    assert edge.bulkhead is not None
    assert edge.bulkhead.active == 0  # every call is over: no slot taken, none owed


@over_each_protocol()
@pytest.mark.asyncio
async def test_lowering_an_adaptive_max_limit_lowers_the_limit_in_force(
    mesh: Mesh, client: Client
) -> None:
    wide = {"adaptive": {"initialLimit": 50, "maxLimit": 100}}
    narrow = {"adaptive": {"initialLimit": 2, "maxLimit": 3}}
    app = await serve(mesh, control(concurrency=wide))
    mesh.apply(control(concurrency=narrow))
    app.delay = 0.3  # the calls overlap

    replies = await asyncio.gather(*(client.call() for _ in range(8)))

    bulkhead = mesh.echo.controls[0].bulkhead
    assert bulkhead is not None
    assert bulkhead.limit <= 3
    # No queue (maxPending 0): the calls over the limit are refused.
    assert sum(r.code == client.code(REFUSED) for r in replies) >= 5


@pytest.mark.asyncio
async def test_callers_that_leave_while_held_leave_the_queue(mesh: Mesh) -> None:
    bulkhead = {"maxInFlight": 1, "maxPending": 2, "queueTimeout": "30s"}
    _, edge, _, first, second = await _one_stuck_one_held(
        mesh, Http1(mesh), "3s", concurrency=bulkhead
    )
    address = mesh.client.outbound_address
    assert address is not None

    for _ in range(60):  # each comes, is held behind the second call, and leaves
        _, writer = await asyncio.open_connection(*address)
        writer.write(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
        await until(lambda: edge.bulkhead.queued() == 2, "the caller is held back")
        writer.transport.abort()
        await until(lambda: edge.bulkhead.queued() == 1, "the caller left")
    queue = len(edge.bulkhead.waiting)
    await second
    await first

    assert queue <= 2  # maxPending


@over_each_protocol()
@pytest.mark.asyncio
async def test_a_control_past_its_ttl_refuses_nothing_on_a_new_snapshot(
    mesh: Mesh, client: Client
) -> None:
    # The harness stamps creationTimestamp 2026-01-01: a ttl of an hour ran out long ago.
    await serve(mesh, control(quarantine={}, ttl="1h"))
    # Before any sweep (nothing awaited since the snapshot was applied):
    assert all(not edge.live for edge in mesh.echo.controls)

    reply = await client.call()

    assert reply.code == client.code(OK)


@pytest.mark.asyncio
async def test_an_open_websocket_holds_its_bulkhead_slot(pki: Pki) -> None:
    app = web.Application()
    app.router.add_get("/ws", _websocket_echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    try:
        await site.start()
        async with two_proxies(pki, runner.addresses[0][1]) as (client, _):
            assert client.snapshot is not None
            shield = ControlView(
                "shield",
                "default",
                ("echo.default",),
                concurrency=ConcurrencyView(max_in_flight=1, max_pending=0),
            )
            client.apply_snapshot(replace(client.snapshot, controls=(shield,)))
            assert client.table.routes[("echo", "default", 80)].controls != ()
            assert client.outbound_address is not None
            host, port = client.outbound_address
            url = f"http://{host}:{port}/ws"
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.ws_connect(url, headers={"Host": "echo"}) as first,
            ):
                await first.send_str("one")
                assert await first.receive_str() == "echo: one"
                # The first WebSocket is open: the bulkhead of one has no room.
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    async with session.ws_connect(url, headers={"Host": "echo"}):
                        pass
                assert refused.value.status == 503
                [edge] = client.controls.edges.values()
                bulkhead = edge.bulkhead
                assert bulkhead is not None and bulkhead.active == 1
            # Closed, it gives its slot back: the next WebSocket opens.
            await until(lambda: bulkhead.active == 0, "the closed tunnel's slot")
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.ws_connect(url, headers={"Host": "echo"}) as second,
            ):
                await second.send_str("two")
                assert await second.receive_str() == "echo: two"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("protocol", ["grpc"])
@pytest.mark.asyncio
async def test_a_held_call_is_retried_with_its_whole_request(mesh: Mesh, client: Client) -> None:
    app = await mesh.add("stuck-once", 503, hang_first=1)  # then every call fails
    mesh.labels = {"tier": "web"}
    mesh.services = {"echo": ["stuck-once"]}
    # No route timeout (it would count the time held too): the first call ends when
    # its client gives up on it, and the held one has all the time it needs.
    rule = {"backendRefs": [ref("echo")]}
    retry = {"attempts": 2, "retryOn": ["5xx"], "budget": {"minRetriesPerSecond": 100}}
    mesh.apply(
        httproute("calls", [rule]),
        policy("RetryPolicy", {**retry, "backoff": {"baseInterval": "1ms"}}),
        control(concurrency={"maxInFlight": 1, "maxPending": 5, "queueTimeout": "10s"}),
    )
    edge = mesh.echo.controls[0]
    first = asyncio.create_task(client.call(wait=1.0))
    await until(lambda: app.requests == 1, "the first call reached the app")
    second = asyncio.create_task(client.call(wait=10))
    await until(lambda: edge.bulkhead.queued() == 1, "the second call is held back")

    stuck, held = await first, await second

    assert stuck.code != client.code(OK)
    # The app's own answer, after the policy's tries: each try carried the message.
    assert (held.code, held.reason) == ("UNAVAILABLE", "stuck-once is failing")
    assert app.requests == 1 + 3
