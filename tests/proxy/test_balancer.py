"""Power of two choices over peak EWMA, and taking refusing endpoints out."""

from __future__ import annotations

import random
from collections import Counter

from gossamer.proxy.policy.balancer import BACKOFF_BASE, DEFAULT_RTT, Balancer, EndpointLoad


def balancer(n: int, seed: int = 1) -> Balancer[str]:
    names = [f"e{i}" for i in range(n)]
    return Balancer(names, [EndpointLoad() for _ in names], random.Random(seed))


def test_a_single_endpoint_is_always_picked() -> None:
    b = balancer(1)
    assert {b.pick(0.0) for _ in range(10)} == {0}


def test_no_endpoints_means_no_pick() -> None:
    assert balancer(0).pick(0.0) == -1


def test_the_faster_endpoint_gets_most_requests() -> None:
    b = balancer(2)
    b.loads[0].observe(0.001, 0.0)
    b.loads[1].observe(0.200, 0.0)
    picks = Counter(b.pick(0.0) for _ in range(100))
    assert picks[0] == 100  # with two endpoints both are always drawn; the cheaper wins


def test_outstanding_requests_make_an_endpoint_costlier() -> None:
    b = balancer(2)
    for load in b.loads:
        load.observe(0.010, 0.0)
    b.loads[0].outstanding = 5
    assert b.pick(0.0) == 1


def test_a_slow_sample_raises_the_average_at_once_and_fast_ones_decay_it() -> None:
    load = EndpointLoad()
    load.observe(1.0, 0.0)
    assert load.ewma == 1.0  # the peak
    load.observe(0.001, 5.0)
    assert 0.001 < load.ewma < 1.0
    load.observe(0.001, 100.0)
    assert load.ewma < 0.01


def test_cost_decays_while_an_endpoint_gets_no_traffic() -> None:
    load = EndpointLoad()
    load.observe(1.0, 0.0)
    assert load.cost(0.0) == 1.0
    assert load.cost(30.0) < 0.1


def test_load_spreads_over_many_equal_endpoints() -> None:
    b = balancer(5)
    picks = Counter(b.pick(0.0) for _ in range(1000))
    assert set(picks) == set(range(5))
    assert min(picks.values()) > 100


def test_a_refusing_endpoint_is_taken_out_then_probed_once_with_backoff() -> None:
    b = balancer(2)
    b.loads[0].connect_failed(10.0, random.Random(0))
    retry_at = b.loads[0].retry_at
    assert 10.0 + BACKOFF_BASE * 0.8 <= retry_at <= 10.0 + BACKOFF_BASE * 1.2
    assert all(b.pick(10.1) == 1 for _ in range(50))
    # After the backoff one request probes it; others keep away while the probe runs.
    probe_time = retry_at + 0.01
    picks = [b.pick(probe_time, probe_for=1.0) for _ in range(20)]
    assert picks.count(0) == 1
    # A second failure doubles the backoff.
    b.loads[0].connect_failed(probe_time, random.Random(0))
    assert b.loads[0].retry_at - probe_time >= 2 * BACKOFF_BASE * 0.8
    b.loads[0].connected()
    assert b.loads[0].available(probe_time)


def test_an_excluded_endpoint_is_not_picked_again() -> None:
    b = balancer(3)
    assert all(b.pick(0.0, exclude=1) != 1 for _ in range(50))
    assert balancer(1).pick(0.0, exclude=0) == -1


def test_when_every_endpoint_is_out_the_one_due_back_soonest_is_tried() -> None:
    b = balancer(3)
    for i, load in enumerate(b.loads):
        load.failures = 1
        load.retry_at = 100.0 - i
    assert b.pick(0.0) == 2


def test_an_endpoint_without_samples_is_assumed_to_take_the_default() -> None:
    assert EndpointLoad().cost(0.0) == DEFAULT_RTT
