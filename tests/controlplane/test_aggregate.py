"""Splitting an Aggregate TrafficControl rate between source proxies (controlplane.aggregate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossamer.controlplane.aggregate import FLOOR, AggregateRates, SharedDemand, split
from gossamer.resources import validate
from gossamer.resources.trafficcontrol import TrafficControl
from gossamer.store import SqliteStore


def test_parts_always_add_up_to_the_budget() -> None:
    for demands in ({"a": 0.0}, {"a": 5.0, "b": 50.0, "c": 500.0}, {"a": 1.0, "b": 1.0}):
        assert sum(split(100.0, demands).values()) == pytest.approx(100.0)


def test_nobody_gets_more_than_it_asked_while_another_gets_less() -> None:
    parts = split(100.0, {"light": 5.0, "heavy-1": 200.0, "heavy-2": 200.0})
    floor = 100.0 * FLOOR / 3
    assert parts["light"] == pytest.approx(5.0)  # it asked for 5: the floor covers part
    assert parts["heavy-1"] == pytest.approx(parts["heavy-2"])
    assert parts["heavy-1"] == pytest.approx((100.0 - 5.0) / 2)
    assert parts["light"] >= floor


def test_what_nobody_asked_for_goes_in_equal_parts_and_an_idle_proxy_keeps_a_floor() -> None:
    parts = split(90.0, {"a": 30.0, "b": 0.0, "c": 0.0})
    assert parts["a"] > parts["b"] == parts["c"] > 0
    assert sum(parts.values()) == pytest.approx(90.0)
    assert parts["a"] >= 30.0


class Stream:
    def __init__(self) -> None:
        self.got: list[dict[str, float]] = []

    async def send_shares(self, shares: dict[str, float]) -> None:
        self.got.append(shares)


def control(limit: str, scope: str = "Aggregate") -> TrafficControl:
    obj: dict[str, Any] = {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "TrafficControl",
        "metadata": {"name": "cap", "namespace": "shop"},
        "spec": {
            "from": {"selector": {"matchLabels": {"tier": "web"}}},
            "rate": {"limit": limit, "scope": scope},
        },
    }
    resource = validate(obj)
    assert isinstance(resource, TrafficControl)
    return resource


@pytest.mark.asyncio
async def test_reports_become_shares_sent_once_until_they_change() -> None:
    controls = [control("60/s")]
    rates = AggregateRates(lambda: controls)
    a, b = Stream(), Stream()
    edge = "shop/cap/api.shop"
    assert rates.report(("shop", "a"), a, {"seconds": 1.0, "edges": {edge: 100}})
    assert rates.report(("shop", "b"), b, {"seconds": 2.0, "edges": {edge: 20}})  # 10/s

    await rates.rebalance()
    await rates.rebalance()  # unchanged: not sent again

    assert len(a.got) == len(b.got) == 1
    assert a.got[0][edge] + b.got[0][edge] == pytest.approx(60.0)
    assert b.got[0][edge] == pytest.approx(10.0)

    controls[:] = [control("60/s", scope="Edge")]  # no longer Aggregate: nothing to split
    assert rates.shares() == {}


def test_a_malformed_report_is_ignored() -> None:
    rates = AggregateRates(lambda: [control("10/s")])
    s = Stream()
    assert not rates.report(("shop", "a"), s, {"seconds": 0, "edges": {"x": 1}})
    assert not rates.report(("shop", "a"), s, {"seconds": 1, "edges": "all of them"})
    assert rates.shares() == {}


def test_a_proxy_that_left_leaves_the_split_unless_it_is_back_on_a_new_stream() -> None:
    rates = AggregateRates(lambda: [control("10/s")])
    old, new = Stream(), Stream()
    edge = {"seconds": 1, "edges": {"shop/cap/api.shop": 5}}
    rates.report(("shop", "a"), old, edge)
    rates.report(("shop", "a"), new, edge)
    rates.forget(("shop", "a"), old)  # the old stream's end: the new one stays
    assert list(rates.shares()) == [("shop", "a")]
    rates.forget(("shop", "a"), new)
    assert rates.shares() == {}


@pytest.mark.asyncio
async def test_replicas_split_over_every_replicas_proxies_through_the_system_store(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "system.db")
    try:
        controls = [control("90/s")]
        edge = "shop/cap/api.shop"
        one, two = AggregateRates(lambda: controls), AggregateRates(lambda: controls)
        one.shared = SharedDemand(store, "replica-1", lambda r: True)
        two.shared = SharedDemand(store, "replica-2", lambda r: True)
        a, b, c = Stream(), Stream(), Stream()
        one.report(("shop", "a"), a, {"seconds": 1, "edges": {edge: 100}})
        one.report(("shop", "b"), b, {"seconds": 1, "edges": {edge: 100}})
        two.report(("shop", "c"), c, {"seconds": 1, "edges": {edge: 100}})

        await one.rebalance()  # sees only its own: the others have not written yet
        await two.rebalance()  # sees replica-1's two proxies
        await one.rebalance()  # and now replica-2's one

        assert c.got[-1][edge] == pytest.approx(30.0)
        assert a.got[-1][edge] + b.got[-1][edge] == pytest.approx(60.0)
    finally:
        store.close()


@pytest.mark.asyncio
async def test_a_dead_replicas_demand_leaves_the_split(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "system.db")
    try:
        controls = [control("90/s")]
        edge = "shop/cap/api.shop"
        live, dead = AggregateRates(lambda: controls), AggregateRates(lambda: controls)
        live.shared = SharedDemand(store, "replica-1", lambda r: r != "replica-2")
        dead.shared = SharedDemand(store, "replica-2", lambda r: True)
        a, c = Stream(), Stream()
        live.report(("shop", "a"), a, {"seconds": 1, "edges": {edge: 100}})
        dead.report(("shop", "c"), c, {"seconds": 1, "edges": {edge: 100}})
        await dead.rebalance()
        await live.rebalance()
        assert a.got[-1][edge] == pytest.approx(90.0)
    finally:
        store.close()
