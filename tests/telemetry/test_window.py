"""The window of golden metrics: increase between scrapes, resets, staleness, sums."""

from __future__ import annotations

import math

import pytest

from gossamer.telemetry.golden import Totals, parse_prometheus_text
from gossamer.telemetry.window import (
    Health,
    Increase,
    Scrape,
    combine,
    golden_of,
    increase,
    is_stale,
    prune,
    series,
    summarize,
    window_golden,
)

KEY = ("shop", "api")


def scrape(at: float, requests: float, failures: float = 0, started: float | None = 0.0) -> Scrape:
    """A proxy's scrape with one service group; every request took under 10 ms."""
    t = Totals(requests, failures, {0.01: requests, math.inf: requests})
    return Scrape(at=at, started_at=started, views={"service": {KEY: t}})


def counted(history: list[Scrape], start: float, end: float) -> tuple[float, float]:
    inc = increase(history, "service", start, end)
    t = inc.totals.get(KEY, Totals())
    return t.requests, inc.seconds


@pytest.mark.parametrize(
    ("history", "start", "end", "expected"),
    [
        ([scrape(10, 5), scrape(20, 15), scrape(30, 40)], 15, 30, (35, 20)),
        ([scrape(10, 5), scrape(20, 15), scrape(30, 40)], 20, 30, (25, 10)),
        ([scrape(10, 5), scrape(20, 15), scrape(30, 40)], 0, 25, (15, 20)),
        ([scrape(10, 5), scrape(20, 15)], 100, 200, (0, 0)),
        ([scrape(10, 5), scrape(20, 15)], 0, 5, (0, 0)),
        ([scrape(100, 5), scrape(110, 9)], 50, 110, (4, 10)),
        ([scrape(10, 50), scrape(20, 3, started=15), scrape(30, 8, started=15)], 5, 30, (8, 20)),
        ([scrape(10, 50, started=None), scrape(20, 3, started=None)], 5, 20, (3, 10)),
        ([scrape(10, 50), scrape(20, 50), scrape(30, 50)], 5, 30, (0, 20)),
    ],
    ids=[
        "counts from the newest scrape at or before the start",
        "a scrape exactly at the start is the baseline",
        "the end is the newest scrape at or before it",
        "nothing after the history ends",
        "nothing before the history begins",
        "a history that begins in the window counts from its first scrape",
        "a restart (new start time) counts the new counters from zero",
        "counters that went down without a start time are a restart too",
        "a quiet service has no increase",
    ],
)
def test_increase_over_a_window(
    history: list[Scrape], start: float, end: float, expected: tuple[float, float]
) -> None:
    assert counted(history, start, end) == expected


def test_a_proxy_that_started_inside_the_window_counts_from_zero() -> None:
    # Requests made before the first scrape still count, if the proxy began in the window.
    history = [scrape(10, 7, started=4), scrape(20, 9, started=4)]
    assert counted(history, 0, 20) == (9, 16)
    assert counted(history, 5, 20) == (2, 10)


def test_sums_over_proxies_add_each_proxys_own_rate() -> None:
    combined = combine(
        [
            Increase({KEY: Totals(10, 1, {0.01: 10, math.inf: 10})}, 10),
            Increase({KEY: Totals(30, 0, {0.01: 20, math.inf: 30})}, 60),
        ]
    )
    c = combined[KEY]
    assert (c.totals.requests, c.totals.failures) == (40, 1)
    assert c.totals.buckets == {0.01: 30, math.inf: 40}
    assert c.rps == pytest.approx(1.0 + 0.5)


def test_golden_of_a_group_has_its_success_rate_and_percentiles() -> None:
    [c] = combine(
        [Increase({KEY: Totals(100, 10, {0.01: 50, 0.1: 100, math.inf: 100})}, 10)]
    ).values()
    g = golden_of(KEY, c)
    assert g.requests == 100
    assert g.success_rate == pytest.approx(0.9)
    assert g.rps == pytest.approx(10)
    assert g.p50_ms == pytest.approx(10)
    assert g.p99_ms == pytest.approx(10 + 90 * 49 / 50)


def test_window_golden_leaves_out_groups_without_requests() -> None:
    quiet = [scrape(10, 5), scrape(20, 5)]
    busy = [scrape(10, 5), scrape(20, 25, failures=2)]
    rows = window_golden([quiet, busy], "service", 10, 20)
    assert rows[KEY].requests == 20
    assert rows[KEY].success_rate == pytest.approx(0.9)
    assert window_golden([quiet], "service", 10, 20) == {}


def test_series_has_one_point_per_step_ending_now() -> None:
    history = [scrape(t, t) for t in range(0, 61, 5)]  # one request per second
    points = series([history], "service", KEY, end=60, window=60, step=15)
    assert [p.at for p in points] == [15, 30, 45, 60]
    assert [p.golden.requests for p in points] == [15, 15, 15, 15]
    assert all(p.golden.rps == pytest.approx(1.0) for p in points)


def test_series_of_a_group_never_seen_is_empty_points() -> None:
    points = series([[scrape(0, 1), scrape(5, 2)]], "service", ("x", "y"), 10, 10, 5)
    assert [p.golden.requests for p in points] == [0, 0]
    assert all(p.golden.success_rate is None for p in points)


@pytest.mark.parametrize(
    ("times", "before", "kept"),
    [
        ([0, 10, 20, 30], 15, [10, 20, 30]),
        ([0, 10, 20, 30], 10, [0, 10, 20, 30]),
        ([0, 10, 20, 30], 100, [30]),
        ([], 100, []),
    ],
    ids=[
        "keeps the newest scrape before the horizon as a baseline",
        "keeps the scrape before one at the horizon",
        "keeps the last scrape even when all are old",
        "an empty history stays empty",
    ],
)
def test_prune_forgets_old_scrapes(times: list[float], before: float, kept: list[float]) -> None:
    history = [scrape(t, t) for t in times]
    prune(history, before)
    assert [s.at for s in history] == kept


@pytest.mark.parametrize(
    ("health", "now", "stale"),
    [
        (Health(), 100, False),
        (Health(last_attempt=99, last_success=99), 100, False),
        (Health(last_attempt=99, last_success=90, error="connection refused"), 100, True),
        (Health(last_attempt=99, error="line 1: not a Prometheus sample"), 100, True),
        (Health(last_attempt=70, last_success=70), 100, True),
        (Health(last_attempt=86, last_success=86), 100, False),
    ],
    ids=[
        "a proxy not scraped yet is not stale",
        "a proxy whose last scrape worked is fresh",
        "a proxy whose last scrape failed is stale",
        "a proxy that answered malformed text is stale",
        "a proxy not scraped for three intervals is stale",
        "a proxy scraped within three intervals is fresh",
    ],
)
def test_staleness(health: Health, now: float, stale: bool) -> None:
    assert is_stale(health, now, interval=5) is stale


def test_a_scrape_is_summarized_per_view() -> None:
    text = "\n".join(
        [
            'gossamer_requests_total{direction="inbound",src_namespace="shop",src_service="web",dst_namespace="shop",dst_service="api",code="200",tls="true"} 7',
            'gossamer_requests_total{direction="outbound",src_namespace="shop",src_service="api",dst_namespace="shop",dst_service="db",code="503",tls="true"} 2',
            'gossamer_requests_total{direction="outbound",src_namespace="shop",src_service="api",dst_namespace="shop",dst_service="db",code="200",tls="true",route_namespace="shop",route_name="db-reads"} 3',
            "process_start_time_seconds 1700000000.5",
        ]
    )
    s = summarize(parse_prometheus_text(text), at=1700000100.0)
    assert s.started_at == 1700000000.5
    assert s.views["service"][("shop", "api")].requests == 7
    edge = s.views["edge"][("shop", "api", "shop", "db")]
    assert (edge.requests, edge.failures) == (5, 2)
    assert s.views["route"][("shop", "db", "shop", "db-reads")].requests == 3
    assert ("shop", "db", "", "") not in s.views["route"]  # no route matched those two
