"""Retry budgets and outlier detection, as pure functions of time."""

from __future__ import annotations

import random

from gossamer.proxy.policy.balancer import Balancer, EndpointLoad
from gossamer.proxy.policy.resilience import OutlierDetector, RetryBudget, RetryPolicy
from gossamer.translate.routetypes import OutlierSpec, RetrySpec


def test_a_budget_allows_its_share_of_retries_plus_the_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1, ttl=10)
    for _ in range(100):
        budget.deposit(0.0)
    # 20% of 100 requests, plus 1 per second over 10 seconds.
    allowed = sum(budget.try_withdraw(0.5) for _ in range(100))
    assert allowed == 30


def test_a_budgets_deposits_expire_after_its_ttl() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0, ttl=10)
    for _ in range(10):
        budget.deposit(0.0)
    assert budget.balance(5.0) == 5.0
    assert budget.balance(11.0) == 0.0
    assert not budget.try_withdraw(11.0)


def test_backoff_is_jittered_below_an_exponential_ceiling() -> None:
    spec = RetrySpec(backoff_base=0.1, backoff_max=0.3)
    policy = RetryPolicy(spec, RetryBudget(0.2, 10, 10), random.Random(3))
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.3), (6, 0.3)):
        waits = [policy.backoff(retry) for _ in range(200)]
        assert min(waits) >= 0 and max(waits) <= ceiling


def test_retry_conditions_name_the_codes_they_retry() -> None:
    budget = RetryBudget(0.2, 10, 10)
    assert RetryPolicy(RetrySpec(on=("gateway-error",)), budget).codes == {502, 503, 504}
    assert RetryPolicy(RetrySpec(on=("reset",), codes=(409,)), budget).codes == {409}
    assert len(RetryPolicy(RetrySpec(on=("5xx",)), budget).codes) == 100


def loads(n: int) -> list[EndpointLoad]:
    return [EndpointLoad() for _ in range(n)]


def test_consecutive_failures_eject_and_the_ejection_grows_on_repeat() -> None:
    ls = loads(4)
    detector = OutlierDetector(OutlierSpec(consecutive_failures=3, base_ejection_time=10), ls)
    bad = ls[0]
    assert not detector.failure(bad, 1.0)
    detector.success(bad, 1.1)  # a success breaks the run
    assert not detector.failure(bad, 1.2)
    assert not detector.failure(bad, 1.3)
    assert detector.failure(bad, 1.4)
    assert bad.ejected_until == 11.4 and not bad.available(5.0) and bad.available(11.5)
    for t in (12.0, 12.1, 12.2):
        detector.failure(bad, t)
    assert bad.ejected_until == 12.2 + 20  # second ejection: twice as long


def test_a_failure_rate_ejects_once_enough_requests_were_seen() -> None:
    ls = loads(4)
    spec = OutlierSpec(
        consecutive_failures=0, failure_rate_percent=50, failure_rate_minimum_requests=10
    )
    detector = OutlierDetector(spec, ls)
    for i in range(9):  # success, failure, ...: 4 of 9 failed, too few requests yet
        if i % 2:
            assert not detector.failure(ls[1], i)
        else:
            detector.success(ls[1], i)
    assert detector.failure(ls[1], 9.0)  # 5 of 10: 50%


def test_never_more_than_the_maximum_share_is_ejected_but_always_one_may_be() -> None:
    ls = loads(2)
    detector = OutlierDetector(OutlierSpec(consecutive_failures=1, max_ejected_percent=10), ls)
    assert detector.failure(ls[0], 0.0)  # 10% of 2 rounds down to 0, but one may go
    assert not detector.failure(ls[1], 0.0)
    assert detector.ejected(0.0) == 1


def test_the_balancer_skips_an_ejected_endpoint() -> None:
    ls = loads(2)
    balancer = Balancer(["a", "b"], ls, random.Random(1))
    ls[0].ejected_until = 100.0
    assert {balancer.pick(1.0) for _ in range(50)} == {1}
    assert {balancer.pick(101.0) for _ in range(50)} == {0, 1}
