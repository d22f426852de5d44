"""TrafficControl's pieces in the proxy, without sockets (proxy.policy.control, and
`Call.admit` with controls): limiters, buckets, breakers, the registry across
snapshots, and a call held in a bulkhead's queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.policy.balancer import Balancer, EndpointLoad
from gossamer.proxy.policy.call import Answer, Call, Held, proceed
from gossamer.proxy.policy.control import (
    AIMDLimit,
    Bulkhead,
    ControlRegistry,
    FixedLimit,
    Gradient2Limit,
    GroupBreaker,
    TokenBucket,
    Waiter,
)
from gossamer.proxy.policy.routing import Route
from gossamer.translate.controltypes import (
    BreakerView,
    ConcurrencyView,
    ControlView,
    RateView,
)


def view(**kw: Any) -> ControlView:
    fields: dict[str, Any] = {"name": "shield", "namespace": "shop", "services": ("pay.shop",)}
    fields.update(kw)
    return ControlView(**fields)


def route(registry: ControlRegistry, *views: ControlView) -> Route[str]:
    r: Route[str] = Route(
        "pay", "shop", 80, Balancer(["pay-1"], [EndpointLoad()]), Metrics(), ("shop", "web")
    )
    r.controls = registry.update(views).get("pay.shop", ())
    return r


# ---- limiters ----------------------------------------------------------------------------


def test_a_token_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    assert bucket.take(0.25) == 0.25  # half a token back
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0  # refills up to the burst, no more
    assert bucket.tokens == 2.0


def test_gradient2_shrinks_when_the_destination_slows_down_and_stays_in_bounds() -> None:
    limit = Gradient2Limit(initial=20, min_limit=2, max_limit=200)
    for _ in range(1000):  # steady 10 ms, fully used: the limit grows towards max
        limit.sample(0.010, int(limit.limit), dropped=False)
    steady = limit.limit
    assert 20 < steady <= 200
    for _ in range(300):  # the destination slows down five times
        limit.sample(0.050, int(limit.limit), dropped=False)
    assert limit.limit < steady / 4
    assert limit.limit >= 2
    for _ in range(3000):
        limit.sample(0.050, int(limit.limit), dropped=False)
    assert 2 <= limit.limit <= 200


def test_gradient2_does_not_grow_a_limit_that_is_not_used() -> None:
    limit = Gradient2Limit(initial=20, min_limit=1, max_limit=200)
    for _ in range(500):
        limit.sample(0.010, 3, dropped=False)  # app-limited: 3 in flight of 20
    assert limit.limit == 20


def test_aimd_grows_by_one_when_used_and_backs_off_on_a_drop_or_a_timeout() -> None:
    limit = AIMDLimit(initial=10, min_limit=2, max_limit=12)
    limit.sample(0.01, 5, dropped=False)
    assert limit.limit == 11
    limit.sample(0.01, 1, dropped=False)  # under half used: unchanged
    assert limit.limit == 11
    limit.sample(0.01, 11, dropped=False)
    limit.sample(0.01, 11, dropped=False)
    assert limit.limit == 12  # max
    limit.sample(0.01, 12, dropped=True)
    assert limit.limit == 10  # int(12 * 0.9)
    limit.sample(6.0, 10, dropped=False)  # slower than AIMD_TIMEOUT
    assert limit.limit == 9
    for _ in range(50):
        limit.sample(0.01, 1, dropped=True)
    assert limit.limit == 2  # min


# ---- bulkhead and breaker ------------------------------------------------------------------


def test_a_bulkhead_lets_waiters_in_in_order_and_skips_those_gone() -> None:
    bulkhead = Bulkhead(FixedLimit(1), max_pending=3, queue_timeout=1.0)
    let_in: list[str] = []
    assert bulkhead.enter()
    assert not bulkhead.enter()

    a, b, c = (Waiter(lambda n=n: let_in.append(n)) for n in "abc")
    bulkhead.waiting.extend((a, b, c))
    b.gone = True
    assert bulkhead.queued() == 2
    bulkhead.leave(0.01, dropped=False)
    assert let_in == ["a"] and bulkhead.active == 1
    bulkhead.leave(0.01, dropped=False)
    assert let_in == ["a", "c"] and bulkhead.active == 1 and not bulkhead.waiting


def test_the_group_breaker_opens_on_a_failure_share_and_closes_after_its_ejection() -> None:
    breaker = GroupBreaker(
        view(breaker=BreakerView(failure_percent=50, min_requests=4, interval=10, ejection_time=5))
    )
    for failed in (True, False, True):
        breaker.record(failed, now=1.0)
    assert breaker.allows(1.0)  # 3 calls: under min_requests
    breaker.record(True, now=2.0)  # 3 of 4 failed
    assert not breaker.allows(2.0)
    assert not breaker.allows(6.9)
    assert breaker.allows(7.0)


# ---- the registry across snapshots ---------------------------------------------------------


def test_a_new_snapshot_changes_limits_but_keeps_what_is_counted() -> None:
    registry = ControlRegistry()
    first = route(registry, view(rate=RateView(1.0, 2), concurrency=ConcurrencyView(4)))
    edge = first.controls[0]
    assert edge.bucket is not None and edge.bulkhead is not None
    edge.bucket.take(0.0)
    assert edge.bulkhead.enter()

    second = route(registry, view(rate=RateView(1.0, 1), concurrency=ConcurrencyView(8)))

    assert second.controls[0] is edge
    assert edge.bulkhead.active == 1 and edge.bulkhead.limit == 8
    assert edge.bucket.tokens == 1.0  # capped by the new burst, not refilled


def test_a_control_that_is_removed_lets_the_calls_it_holds_go_on() -> None:
    registry = ControlRegistry()
    edge = route(
        registry, view(concurrency=ConcurrencyView(1, max_pending=5, queue_timeout=9))
    ).controls[0]
    assert edge.bulkhead is not None
    let_in: list[int] = []

    assert edge.bulkhead.enter()
    edge.bulkhead.waiting.append(Waiter(lambda: let_in.append(1)))

    assert route(registry).controls == ()
    assert let_in == [1] and not edge.live


def test_a_control_past_its_ttl_stops_acting_at_the_next_sweep() -> None:
    registry = ControlRegistry()
    edge = route(registry, view(quarantined=True, expires_at=1000.0)).controls[0]
    registry.sweep(999.0)
    assert edge.live
    registry.sweep(1000.0)
    assert not edge.live


# ---- Call.admit with controls ---------------------------------------------------------------


class Later:
    """call_later for a test: timers run when the test says."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[[], None], list[bool]]] = []

    def __call__(self, delay: float, fn: Callable[[], None]) -> Any:
        cancelled = [False]
        self.timers.append((delay, fn, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True

        return Handle()

    def fire(self) -> None:
        for _, fn, cancelled in self.timers:
            if not cancelled[0]:
                fn()


def test_a_refusal_names_the_control_and_says_when_to_come_back() -> None:
    r = route(ControlRegistry(), view(rate=RateView(0.5, 1)))
    assert Call(r, b"GET").admit(r, None, 10.0) is None
    refused = Call(r, b"GET").admit(r, None, 10.0)
    assert refused == Answer(
        503, "TrafficControl shop/shield: over 0.5 requests/s to pay.shop", 8, 2.0
    )
    assert refused.retry_after_value() == b"2"


def test_a_held_call_goes_on_when_a_slot_frees_and_gives_it_back_at_the_end() -> None:
    r = route(ControlRegistry(), view(concurrency=ConcurrencyView(1, max_pending=1)))
    bulkhead = r.controls[0].bulkhead
    assert bulkhead is not None
    first, second, third = Call(r, b"GET"), Call(r, b"GET"), Call(r, b"GET")
    later, went, refused = Later(), [], []

    assert first.admit(r, None, 0.0) is None
    verdict = second.admit(r, None, 0.0)
    assert isinstance(verdict, Held)
    proceed(verdict, later, lambda: 1.0, lambda: went.append(2), refused.append)
    over = third.admit(r, None, 0.0)
    assert isinstance(over, Answer) and over.reason.endswith("(limit 1) and 1 waiting")

    first.finish(200, 0.5)
    assert went == [2] and bulkhead.active == 1
    later.fire()  # the queue timeout was cancelled when it got in
    assert refused == []
    second.finish(200, 2.0)
    assert bulkhead.active == 0


def test_a_held_call_whose_client_leaves_gives_up_its_place() -> None:
    r = route(ControlRegistry(), view(concurrency=ConcurrencyView(1, max_pending=1)))
    bulkhead = r.controls[0].bulkhead
    assert bulkhead is not None
    first, second = Call(r, b"GET"), Call(r, b"GET")
    later, went = Later(), []
    assert first.admit(r, None, 0.0) is None
    verdict = second.admit(r, None, 0.0)
    assert isinstance(verdict, Held)
    proceed(verdict, later, lambda: 0.0, lambda: went.append(2), lambda a: None)

    second.finish(0)  # its client went away while it waited
    first.finish(200, 0.1)

    assert went == [] and bulkhead.active == 0 and bulkhead.queued() == 0


def test_dry_run_lets_the_call_through_and_counts_it() -> None:
    r = route(ControlRegistry(), view(mode="DryRun", quarantined=True))
    assert Call(r, b"GET").admit(r, None, 0.0) is None
    assert r.controls[0].would_refuse["quarantine"] == 1
    assert r.controls[0].refused["quarantine"] == 0


def test_a_free_slot_is_taken_even_when_only_calls_that_left_were_queued() -> None:
    bulkhead = Bulkhead(FixedLimit(1), max_pending=3, queue_timeout=1.0)
    gone = Waiter(lambda: None)
    gone.gone = True
    bulkhead.waiting.append(gone)
    assert bulkhead.enter()
    assert not bulkhead.waiting


def test_a_limit_that_grew_lets_those_waiting_in_before_a_newcomer() -> None:
    limiter = FixedLimit(1)
    bulkhead = Bulkhead(limiter, max_pending=3, queue_timeout=1.0)
    let_in: list[str] = []
    assert bulkhead.enter()
    bulkhead.waiting.append(Waiter(lambda: let_in.append("waiter")))
    limiter.limit = 3.0
    assert bulkhead.enter()  # the waiter first, then the newcomer
    assert let_in == ["waiter"] and bulkhead.active == 3


def test_an_aggregate_rate_reports_its_demand_and_enforces_its_share() -> None:
    registry = ControlRegistry()
    r = route(registry, view(rate=RateView(30.0, 6, aggregate=True)))
    edge = r.controls[0]
    assert edge.bucket is not None and edge.bucket.rate == 30.0  # no share yet: all of it
    for _ in range(4):
        Call(r, b"GET").admit(r, None, 0.0)
    assert registry.demand() == {"shop/shield/pay.shop": 4}
    assert registry.demand() == {"shop/shield/pay.shop": 0}  # counted since the last ask

    registry.set_shares({"shop/shield/pay.shop": 10.0, "shop/other/pay.shop": 5.0})
    assert (edge.bucket.rate, edge.bucket.burst) == (10.0, 2.0)  # burst: 6 x 10/30
    # A new snapshot with the same budget keeps the share; a new budget drops it.
    route(registry, view(rate=RateView(30.0, 6, aggregate=True)))
    assert edge.bucket.rate == 10.0
    route(registry, view(rate=RateView(60.0, 6, aggregate=True)))
    assert edge.bucket.rate == 60.0


def test_an_edge_rate_ignores_shares() -> None:
    registry = ControlRegistry()
    edge = route(registry, view(rate=RateView(30.0, 6))).controls[0]
    registry.set_shares({"shop/shield/pay.shop": 10.0})
    assert edge.bucket is not None and edge.bucket.rate == 30.0
    assert registry.demand() == {}


def test_a_call_another_control_refuses_teaches_the_first_nothing() -> None:
    """Control a let the call through; b refused it: the destination never saw it, so
    a's breaker counts no failure and its bulkhead gets its slot back unsampled."""
    registry = ControlRegistry()
    a = view(
        name="a",
        breaker=BreakerView(consecutive_failures=2),
        concurrency=ConcurrencyView(algorithm="AIMD", initial_limit=10, max_limit=10),
    )
    b = view(name="b", rate=RateView(1 / 60, 1))
    r = route(registry, a, b)
    first = Call(r, b"GET")
    assert first.admit(r, None, 0.0) is None
    first.finish(200, 0.1)
    for _ in range(3):
        call = Call(r, b"GET")
        refused = call.admit(r, None, 1.0)
        assert isinstance(refused, Answer) and "shop/b" in refused.reason
        call.finish(503, 1.1)  # the side answers the refusal

    edge_a = r.controls[0]
    assert edge_a.breaker is not None and edge_a.breaker.in_a_row == 0
    assert edge_a.breaker.allows(2.0)
    assert edge_a.bulkhead is not None
    assert (edge_a.bulkhead.active, edge_a.bulkhead.limit) == (0, 10)  # no drop sampled
