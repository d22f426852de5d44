"""A window of golden metrics kept from repeated scrapes of many proxies.

Pure: the caller scrapes and passes the clock in. Each proxy has a history of
`Scrape`s, each already summarized into the views the mesh reports (per service, per
edge, per route). A window's numbers are the increase of the counters between the
newest scrape at or before the window's start and the newest at or before its end,
summed over consecutive pairs so that a proxy restart (its counters begin again) is a
reset, not a negative count — what Prometheus' `increase()` does, without its
extrapolation, so that a known number of requests reads back exactly.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from gossamer.telemetry.golden import (
    Golden,
    Key,
    Sample,
    Totals,
    aggregate,
    histogram_quantile,
    retries_by_edge,
    retries_by_route,
)


@dataclass(frozen=True)
class View:
    """Which requests a view counts (`direction`, and only those with the label
    `labelled` when it is set) and how it groups them (`by`)."""

    direction: str
    by: tuple[str, ...]
    labelled: str | None = None


# Services are seen from their own proxies (inbound): every call that reached the
# service, whoever made it. Edges and routes are seen from the caller (outbound),
# which also counts the calls that failed before they left (no endpoints, timeouts).
# A request no route matched has no route labels (decision 0031): no route's row.
VIEWS: Final[Mapping[str, View]] = {
    "service": View("inbound", ("dst_namespace", "dst_service")),
    "edge": View("outbound", ("src_namespace", "src_service", "dst_namespace", "dst_service")),
    # What the callers got from a service (one count per call, after any retries): its
    # effective success, beside the "service" view's actual (every try that reached it).
    "service_out": View("outbound", ("dst_namespace", "dst_service")),
    "route": View(
        "outbound",
        ("dst_namespace", "dst_service", "route_namespace", "route_name"),
        labelled="route_name",
    ),
}

START_TIME: Final = "process_start_time_seconds"
RETRY_VIEW: Final = "edge_retries"
ROUTE_RETRY_VIEW: Final = "route_retries"


@dataclass(frozen=True)
class Scrape:
    """One successful scrape of one proxy, summarized per view."""

    at: float
    started_at: float | None
    views: Mapping[str, Mapping[Key, Totals]]


def summarize(samples: Iterable[Sample], at: float, views: Mapping[str, View] = VIEWS) -> Scrape:
    samples = list(samples)
    started_at = next((s.value for s in samples if s.name == START_TIME and not s.labels), None)
    return Scrape(
        at=at,
        started_at=started_at,
        views={
            **{
                name: aggregate(
                    samples, direction=view.direction, by=view.by, labelled=view.labelled
                )
                for name, view in views.items()
            },
            # Retries per edge, and per route, in `Totals.requests`: counted in windows
            # like the rest.
            RETRY_VIEW: retries_by_edge(samples),
            ROUTE_RETRY_VIEW: retries_by_route(samples),
        },
    )


def _add(into: Totals, more: Totals) -> None:
    into.requests += more.requests
    into.failures += more.failures
    for le, count in more.buckets.items():
        into.buckets[le] = into.buckets.get(le, 0.0) + count


def _delta(earlier: Scrape, later: Scrape, view: str, only: Key | None = None) -> dict[Key, Totals]:
    before = earlier.views.get(view, {})
    restarted = (
        earlier.started_at is not None
        and later.started_at is not None
        and later.started_at != earlier.started_at
    )
    out: dict[Key, Totals] = {}
    groups = later.views.get(view, {})
    if only is not None:
        groups = {only: groups[only]} if only in groups else {}
    for key, now in groups.items():
        then = before.get(key)
        if restarted or then is None or now.requests < then.requests:
            # Counters that began again (or a series that is new) count from zero.
            out[key] = Totals(now.requests, now.failures, dict(now.buckets))
        else:
            out[key] = now.minus(then)
    return out


@dataclass(frozen=True)
class Increase:
    """What one proxy counted in a span, and how many seconds of it the scrapes cover."""

    totals: Mapping[Key, Totals]
    seconds: float


def increase(
    history: Sequence[Scrape],
    view: str,
    start: float,
    end: float,
    times: Sequence[float] | None = None,
    only: Key | None = None,
) -> Increase:
    """The counts a proxy added in (start, end], from its scrapes (oldest first).

    When the history begins inside the span, counts before the first scrape belong to
    the span only if the proxy started inside it too (its counters began at zero
    then); otherwise the first scrape is where counting begins. `times` (each
    scrape's `at`) saves the caller of many spans from rebuilding it each time;
    `only` counts one group instead of all.
    """
    if times is None:
        times = [s.at for s in history]
    last = bisect.bisect_right(times, end) - 1
    if last < 0:
        return Increase({}, 0.0)
    base = bisect.bisect_right(times, start) - 1
    totals: dict[Key, Totals] = {}
    if base < 0:
        first = history[0]
        if first.started_at is not None and start <= first.started_at <= first.at:
            for key, t in first.views.get(view, {}).items():
                if only is None or key == only:
                    totals[key] = Totals(t.requests, t.failures, dict(t.buckets))
            began = first.started_at
        else:
            began = first.at
        base = 0
    else:
        began = history[base].at
    base_scrape, last_scrape = history[base], history[last]
    if base_scrape.started_at is not None and base_scrape.started_at == last_scrape.started_at:
        # One process throughout: its counters only grew, so one subtraction will do.
        steps = [(base_scrape, last_scrape)] if base < last else []
    else:
        steps = [(history[i], history[i + 1]) for i in range(base, last)]
    for earlier, later in steps:
        for key, d in _delta(earlier, later, view, only).items():
            _add(totals.setdefault(key, Totals()), d)
    return Increase(totals, max(history[last].at - began, 0.0))


@dataclass
class Combined:
    """One group's counts summed over proxies, with the request rate summed too."""

    totals: Totals = field(default_factory=Totals)
    rps: float = 0.0


def combine(increases: Iterable[Increase]) -> dict[Key, Combined]:
    """Sum over proxies. Each proxy's rate is its count over the seconds its own scrapes
    cover, so a proxy that joined late does not dilute the rate of the others."""
    out: dict[Key, Combined] = {}
    for inc in increases:
        for key, t in inc.totals.items():
            c = out.setdefault(key, Combined())
            _add(c.totals, t)
            if inc.seconds > 0:
                c.rps += t.requests / inc.seconds
    return out


def golden_of(key: Key, c: Combined) -> Golden:
    t = c.totals

    def ms(q: float) -> float | None:
        v = histogram_quantile(q, t.buckets)
        return None if v is None or math.isnan(v) else v * 1000

    return Golden(
        key=key,
        requests=t.requests,
        success_rate=(1 - t.failures / t.requests) if t.requests else None,
        rps=c.rps,
        p50_ms=ms(0.5),
        p95_ms=ms(0.95),
        p99_ms=ms(0.99),
    )


def window_golden(
    histories: Iterable[Sequence[Scrape]], view: str, start: float, end: float
) -> dict[Key, Golden]:
    combined = combine(increase(h, view, start, end) for h in histories)
    return {key: golden_of(key, c) for key, c in combined.items() if c.totals.requests > 0}


@dataclass(frozen=True)
class Point:
    at: float  # the end of the step it describes
    golden: Golden
    # Whether any proxy of the group had been scraped over this step: a step before the
    # group existed is no data (a gap in a chart), not zero requests.
    covered: bool = True


def series(
    histories: Sequence[Sequence[Scrape]],
    view: str,
    key: Key,
    end: float,
    window: float,
    step: float,
) -> list[Point]:
    """Golden metrics of one group for each `step` of the last `window` seconds."""
    steps = max(int(window // step), 1)
    # Only the proxies that ever reported the group, each with its scrape times once.
    reporting = [
        (h, [s.at for s in h]) for h in histories if any(key in s.views.get(view, {}) for s in h)
    ]
    points = []
    for i in range(steps):
        at = end - (steps - 1 - i) * step
        increases = [increase(h, view, at - step, at, times, key) for h, times in reporting]
        combined = combine(
            Increase({key: inc.totals[key]}, inc.seconds) for inc in increases if key in inc.totals
        )
        c = combined.get(key, Combined())
        covered = any(inc.seconds > 0 or key in inc.totals for inc in increases)
        points.append(Point(at, golden_of(key, c), covered))
    return points


def prune(history: list[Scrape], before: float) -> None:
    """Forget scrapes older than `before`, keeping the newest of them as a baseline."""
    keep_from = bisect.bisect_left([s.at for s in history], before) - 1
    if keep_from > 0:
        del history[:keep_from]


@dataclass(frozen=True)
class Health:
    """How the scrapes of one proxy are going."""

    last_attempt: float | None = None
    last_success: float | None = None
    error: str | None = None


def is_stale(health: Health, now: float, interval: float) -> bool:
    """Stale: the last scrape failed, or none succeeded for three intervals."""
    if health.error is not None:
        return True
    if health.last_success is None:
        return False  # not scraped yet
    return now - health.last_success > 3 * interval
