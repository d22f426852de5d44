"""TrafficControl in the proxy: limits on the calls from this workload to a group.

The control plane sends each source proxy the controls whose `from` group holds its
workload, each with the destination services of its `to` group that the proxy calls
(gossamer.translate.controls). Here each (control, destination service) pair is an
`EdgeControl` with its own state, kept across snapshots by the `ControlRegistry` (a new
snapshot changes a limit, not the count of calls in flight), and `Call.admit` asks
every EdgeControl on the call's destination, in order:

1. quarantine          refused, unless this source is in the control's allow list;
2. circuitBreaker      refused while the group's breaker is open (it counts every
                       governed call of the control, whatever its service);
3. rate                a token bucket per edge: refused when empty, with the seconds
                       until the next token as `retry-after`;
4. concurrency         a bulkhead: in if under its limit (fixed, or adaptive:
                       Netflix concurrency-limits' Gradient2 or AIMD), else held in
                       its queue for up to `queueTimeout` (backpressure), else refused.

A call must pass every control (so the tightest wins). In DryRun mode a control
counts what it would refuse and refuses nothing. Refusals are 503 with `retry-after`
(a gRPC call: RESOURCE_EXHAUSTED) and a `gossamer-error` naming the control.
Sans-IO like proxy.policy.call: `now` is passed in; a held call's wake-up and its
queue timeout are the side's (see `hold`).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from gossamer.proxy.policy.resilience import RetryBudget
from gossamer.translate.controltypes import ControlView

GRPC_RESOURCE_EXHAUSTED: Final = 8
# Gradient2's defaults (Netflix concurrency-limits Gradient2Limit): the weight of a new
# estimate, the long-term RTT's window (an exponential average over that many samples,
# a plain average for the first WARMUP), and the queue it allows for.
GRADIENT2_SMOOTHING: Final = 0.2
GRADIENT2_LONG_WINDOW: Final = 600
GRADIENT2_WARMUP: Final = 10
GRADIENT2_QUEUE: Final = 4
# AIMD's (AIMDLimit): the factor a drop or a timeout shrinks the limit by, and the RTT
# that counts as a timeout.
AIMD_BACKOFF: Final = 0.9
# The shortest latency a sample takes (uvloop's clock ticks in milliseconds).
RTT_FLOOR: Final = 0.0005
AIMD_TIMEOUT: Final = 5.0

REFUSED_REASONS: Final = ("quarantine", "circuit-breaker", "rate", "concurrency")


class Refusal:
    """A governed call refused by a control: why (`gossamer-error`), and the seconds to
    say in `retry-after`. `Call.admit` answers it 503 (gRPC: RESOURCE_EXHAUSTED)."""

    __slots__ = ("reason", "retry_after")

    def __init__(self, reason: str, retry_after: float) -> None:
        self.reason = reason
        self.retry_after = retry_after


# ---- limiters --------------------------------------------------------------------------


class TokenBucket:
    """`rate` tokens a second, at most `burst` kept; a call takes one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp: float | None = None

    def take(self, now: float) -> float:
        """0.0 when a token was taken; else the seconds until there is one."""
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def retune(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = min(self.tokens, self.burst)


class FixedLimit:
    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        self.limit = float(limit)

    def sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        return


class AIMDLimit:
    """Additive increase, multiplicative decrease (Netflix AIMDLimit): a drop (an
    overload answer) or an RTT over AIMD_TIMEOUT shrinks the limit by AIMD_BACKOFF; a
    success while at least half the limit is in use grows it by one."""

    __slots__ = ("limit", "max_limit", "min_limit")

    def __init__(self, initial: int, min_limit: int, max_limit: int) -> None:
        self.limit = float(initial)
        self.min_limit = min_limit
        self.max_limit = max_limit

    def sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        limit = self.limit
        if dropped or rtt > AIMD_TIMEOUT:
            limit = min(limit - 1, int(limit * AIMD_BACKOFF))
        elif inflight * 2 >= limit:
            limit += 1
        else:
            return
        self.limit = float(max(self.min_limit, min(self.max_limit, limit)))


class Gradient2Limit:
    """Netflix concurrency-limits' Gradient2: the gradient of the long-term RTT (an
    exponential average) to the last one; below 1 when latency rises, which shrinks
    the limit; the limit grows by a small queue allowance otherwise. Smoothed, bounded
    by min and max, never grown while under half used (app-limited). A drop counts as
    a sample like any other, as in the original."""

    __slots__ = ("count", "limit", "long_rtt", "max_limit", "min_limit")

    def __init__(self, initial: int, min_limit: int, max_limit: int) -> None:
        self.limit = float(initial)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.long_rtt = 0.0
        self.count = 0

    def sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        if rtt <= 0.0:
            return
        self.count += 1
        if self.count <= GRADIENT2_WARMUP:
            self.long_rtt += (rtt - self.long_rtt) / self.count
        else:
            factor = 2.0 / (GRADIENT2_LONG_WINDOW + 1)
            self.long_rtt = self.long_rtt * (1 - factor) + rtt * factor
        long_rtt = self.long_rtt
        if long_rtt / rtt > 2.0:
            # Latency is back to normal after a long overload: let the baseline follow.
            self.long_rtt = long_rtt = long_rtt * 0.9
        limit = self.limit
        if inflight < limit / 2:
            return
        gradient = max(0.5, min(1.0, long_rtt / rtt))
        estimate = limit * gradient + GRADIENT2_QUEUE
        estimate = limit * (1 - GRADIENT2_SMOOTHING) + estimate * GRADIENT2_SMOOTHING
        self.limit = max(float(self.min_limit), min(float(self.max_limit), estimate))


Limiter = FixedLimit | AIMDLimit | Gradient2Limit


class Waiter:
    """A call held in a bulkhead's queue: `admitted` runs once a slot is its."""

    __slots__ = ("admitted", "bulkhead", "gone", "timer")

    def __init__(self, admitted: Callable[[], None]) -> None:
        self.admitted = admitted
        self.gone = False  # timed out or its client left: skipped when a slot frees
        self.bulkhead: Bulkhead | None = None  # the queue it is in
        self.timer: Any = None  # its queue timeout

    def leave(self) -> None:
        """Its call ended while it waited (the client went away, a route timeout): out
        of the queue now, its timer stopped, so callers that leave cannot grow the
        queue past maxPending or leave timers behind."""
        self.gone = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        bulkhead = self.bulkhead
        if bulkhead is not None:
            self.bulkhead = None
            with contextlib.suppress(ValueError):
                bulkhead.waiting.remove(self)


class Bulkhead:
    """At most `limit` calls in flight; up to `max_pending` more wait in order."""

    __slots__ = ("active", "limiter", "max_pending", "queue_timeout", "waiting")

    def __init__(self, limiter: Limiter, max_pending: int, queue_timeout: float) -> None:
        self.limiter = limiter
        self.max_pending = max_pending
        self.queue_timeout = queue_timeout
        self.active = 0
        self.waiting: deque[Waiter] = deque()

    @property
    def limit(self) -> int:
        return max(1, int(self.limiter.limit))

    def enter(self) -> bool:
        """Take a slot if one is free and nobody waits for it (first come, first in)."""
        waiting = self.waiting
        while waiting and waiting[0].gone:
            waiting.popleft()
        if waiting:
            self.wake()  # a limit that grew since: those waiting go first
        if self.active < self.limit and not waiting:
            self.active += 1
            return True
        return False

    def queued(self) -> int:
        return sum(1 for w in self.waiting if not w.gone)

    def leave(self, rtt: float | None, dropped: bool) -> None:
        """A call is done: its slot freed; `rtt` (None: no sample, the client left)
        and `dropped` (answered with an overload status) teach an adaptive limit."""
        inflight = self.active
        self.active -= 1
        if rtt is not None:
            # The loop's clock ticks in milliseconds: a faster call is half a tick.
            self.limiter.sample(max(rtt, RTT_FLOOR), inflight, dropped)
        self.wake()

    def release_all(self) -> None:
        """Let every call waiting go on at once, whatever the limit (the control stops
        holding calls back: removed, past its ttl, or in DryRun now)."""
        waiting = self.waiting
        while waiting:
            waiter = waiting.popleft()
            if not waiter.gone:
                self.active += 1
                waiter.admitted()

    def wake(self) -> None:
        waiting = self.waiting
        while waiting and self.active < self.limit:
            waiter = waiting.popleft()
            if waiter.gone:
                continue
            self.active += 1
            waiter.admitted()


class GroupBreaker:
    """A circuit breaker for every governed call of one control: open for
    `ejection` seconds after `consecutive` failures in a row, or a failure share of
    at least `percent` over an `interval` with `min_requests` calls."""

    __slots__ = (
        "calls",
        "consecutive",
        "ejection",
        "failures",
        "in_a_row",
        "interval",
        "min_requests",
        "open_until",
        "percent",
        "window_start",
    )

    def __init__(self, view: ControlView) -> None:
        self.open_until = 0.0
        self.in_a_row = 0
        self.calls = 0
        self.failures = 0
        self.window_start: float | None = None
        self.retune(view)

    def retune(self, view: ControlView) -> None:
        b = view.breaker
        assert b is not None
        self.consecutive = b.consecutive_failures
        self.percent = b.failure_percent
        self.min_requests = b.min_requests
        self.interval = b.interval
        self.ejection = b.ejection_time

    def allows(self, now: float) -> bool:
        return now >= self.open_until

    def record(self, failed: bool, now: float) -> None:
        if self.window_start is None or now - self.window_start >= self.interval:
            self.window_start, self.calls, self.failures = now, 0, 0
        self.calls += 1
        if failed:
            self.failures += 1
            self.in_a_row += 1
        else:
            self.in_a_row = 0
        tripped = self.consecutive is not None and self.in_a_row >= self.consecutive
        if (
            self.percent is not None
            and self.calls >= self.min_requests
            and self.failures * 100 >= self.percent * self.calls
        ):
            tripped = True
        if tripped and now >= self.open_until:
            self.open_until = now + self.ejection
            self.in_a_row = 0
            self.window_start, self.calls, self.failures = now, 0, 0


# ---- one control on one destination ------------------------------------------------------


class EdgeControl:
    """One TrafficControl on the calls from this proxy to one destination service."""

    __slots__ = (
        "aggregate",
        "breaker",
        "bucket",
        "budget",
        "bulkhead",
        "enforce",
        "expires_at",
        "label",
        "live",
        "offered",
        "quarantined",
        "refused",
        "retry_budget",
        "service",
        "share",
        "would_refuse",
    )

    def __init__(self, view: ControlView, service: str, breaker: GroupBreaker | None) -> None:
        self.label = f"TrafficControl {view.namespace}/{view.name}"
        self.live = True  # False once its ttl has passed (ControlRegistry.sweep)
        self.service = service
        self.bucket: TokenBucket | None = None
        self.bulkhead: Bulkhead | None = None
        # A rate: (per second, burst) as the control says; for an Aggregate rate, the
        # share of it this proxy may use (None until the control plane says), and the
        # calls that met the bucket (what this proxy wants: its demand).
        self.aggregate = False
        self.budget: tuple[float, int] | None = None
        self.share: float | None = None
        self.offered = 0
        self.retry_budget: RetryBudget | None = None
        # Refusals (or, in DryRun, would-be refusals) by reason.
        self.refused = dict.fromkeys(REFUSED_REASONS, 0)
        self.would_refuse = dict.fromkeys(REFUSED_REASONS, 0)
        self.retune(view, breaker)

    def retune(self, view: ControlView, breaker: GroupBreaker | None) -> None:
        """Take a new snapshot's settings, keeping what is counted and in flight."""
        self.enforce = view.mode == "Enforce"
        self.live = True
        self.quarantined = view.quarantined
        self.expires_at = view.expires_at
        self.breaker = breaker
        rate = view.rate
        self.aggregate = rate is not None and rate.aggregate
        if rate is None:
            self.bucket = None
            self.budget, self.share = None, None
        else:
            if self.budget is None or self.budget[0] != rate.per_second:
                self.share = None  # a new rate: the control plane splits it again
            self.budget = (rate.per_second, rate.burst)
            per_second, burst = self._rate()
            if self.bucket is None:
                self.bucket = TokenBucket(per_second, burst)
            else:
                self.bucket.retune(per_second, burst)
        c = view.concurrency
        old = self.bulkhead
        if c is None:
            # No bulkhead any more: those it holds go on; calls in flight give their
            # slots back to it (each call keeps the bulkhead it entered).
            self.bulkhead = None
            if old is not None:
                old.release_all()
        elif old is None:
            self.bulkhead = Bulkhead(_limiter(view), c.max_pending, c.queue_timeout)
        else:
            # The same bulkhead, retuned: its calls in flight and its queue stay.
            limiter = _limiter(view)
            current = old.limiter
            if isinstance(current, FixedLimit) or type(current) is not type(limiter):
                old.limiter = limiter
            else:
                current.min_limit, current.max_limit = limiter.min_limit, limiter.max_limit
                current.limit = float(max(current.min_limit, min(current.max_limit, current.limit)))
            old.max_pending, old.queue_timeout = c.max_pending, c.queue_timeout
            if self.enforce:
                old.wake()
            else:
                old.release_all()  # DryRun holds nobody back
        b = view.retry_budget
        if b is None:
            self.retry_budget = None
        else:
            old_budget = self.retry_budget
            wanted = (b.percent / 100, float(b.min_retries_per_second))
            if old_budget is None or (old_budget.ratio, old_budget.min_per_second) != wanted:
                self.retry_budget = RetryBudget(wanted[0], wanted[1], 10.0)

    def expired(self, wall: float) -> bool:
        return self.expires_at is not None and wall >= self.expires_at

    def check(self, now: float) -> Refusal | None:
        """Quarantine, the group's breaker, the rate: a refusal, or None to go on."""
        if self.quarantined:
            return self._refuse(
                "quarantine", f"{self.label}: calls to {self.service} are quarantined", 1.0
            )
        breaker = self.breaker
        if breaker is not None and not breaker.allows(now):
            return self._refuse(
                "circuit-breaker",
                f"{self.label}: the group's circuit breaker is open",
                breaker.open_until - now,
            )
        bucket = self.bucket
        if bucket is not None:
            self.offered += 1
            wait = bucket.take(now)
            if wait > 0.0:
                return self._refuse(
                    "rate",
                    f"{self.label}: over {bucket.rate:g} requests/s to {self.service}",
                    wait,
                )
        return None

    def _rate(self) -> tuple[float, int]:
        """The bucket's rate and burst: the control's, or for an Aggregate rate this
        proxy's share of them (the whole budget until the control plane gives one)."""
        assert self.budget is not None
        per_second, burst = self.budget
        share = self.share
        if share is None or not self.aggregate:
            return per_second, burst
        # At least 2: a bucket of 1 loses the fraction of a token that arrives
        # between calls each time it fills (a 10/s share met 25 calls a second would
        # let 8.3 through).
        return share, max(2, round(burst * share / per_second))

    def set_share(self, share: float) -> None:
        """The control plane's split of an Aggregate rate: this proxy's part."""
        if not self.aggregate or self.bucket is None:
            return
        self.share = max(0.0, share)
        per_second, burst = self._rate()
        self.bucket.retune(max(per_second, 1e-9), burst)

    def refuse_concurrency(self, bulkhead: Bulkhead) -> Refusal | None:
        return self._refuse(
            "concurrency",
            f"{self.label}: {bulkhead.active} calls to {self.service} in flight "
            f"(limit {bulkhead.limit}) and {bulkhead.queued()} waiting",
            1.0,
        )

    def _refuse(self, reason: str, text: str, retry_after: float) -> Refusal | None:
        if not self.enforce:
            self.would_refuse[reason] += 1
            return None
        self.refused[reason] += 1
        return Refusal(text, retry_after)

    def done(self, now: float, rtt: float | None, status: int, slot: Bulkhead | None) -> None:
        """A call this control let through ended (`status` 0: its client went away);
        `slot`: the bulkhead it held a place in (the one it entered, even if the control
        has another now)."""
        failed = status >= 500 or status == 0
        dropped = status in (429, 503)
        breaker = self.breaker
        if breaker is not None and status:
            breaker.record(failed, now)
        if slot is not None:
            slot.leave(rtt if status else None, dropped)


def _limiter(view: ControlView) -> Limiter:
    c = view.concurrency
    assert c is not None
    if c.max_in_flight is not None:
        return FixedLimit(c.max_in_flight)
    if c.algorithm == "AIMD":
        return AIMDLimit(c.initial_limit, c.min_limit, c.max_limit)
    return Gradient2Limit(c.initial_limit, c.min_limit, c.max_limit)


class ControlRegistry:
    """Every EdgeControl of this proxy, kept across snapshots by (control, service)."""

    def __init__(self) -> None:
        self.edges: dict[tuple[str, str, str], EdgeControl] = {}
        self.breakers: dict[tuple[str, str], GroupBreaker] = {}
        self.wall = 0.0  # Unix time at the last sweep: a new snapshot revives no expired control

    def update(self, views: Iterable[ControlView]) -> dict[str, tuple[EdgeControl, ...]]:
        """Take a snapshot's controls: the EdgeControls per destination service
        ("name.namespace"), in the snapshot's order. Calls in flight keep those a new
        snapshot drops, and give their slots back to them."""
        edges: dict[tuple[str, str, str], EdgeControl] = {}
        breakers: dict[tuple[str, str], GroupBreaker] = {}
        by_service: dict[str, list[EdgeControl]] = {}
        for view in views:
            ckey = (view.namespace, view.name)
            breaker = None
            if view.breaker is not None:
                breaker = self.breakers.get(ckey)
                if breaker is None:
                    breaker = GroupBreaker(view)
                else:
                    breaker.retune(view)
                breakers[ckey] = breaker
            for service in view.services:
                key = (view.namespace, view.name, service)
                edge = self.edges.get(key)
                if edge is None:
                    edge = EdgeControl(view, service, breaker)
                else:
                    edge.retune(view, breaker)
                if edge.expired(self.wall):
                    _let_go(edge)  # past its ttl: a new snapshot does not bring it back
                edges[key] = edge
                by_service.setdefault(service, []).append(edge)
        for key, edge in self.edges.items():
            if key not in edges:
                _let_go(edge)
        self.edges, self.breakers = edges, breakers
        return {service: tuple(found) for service, found in by_service.items()}

    def sweep(self, wall: float) -> None:
        """About once a second, with Unix time: controls whose ttl has passed stop
        acting, and stay stopped whatever snapshot comes."""
        self.wall = wall
        for edge in self.edges.values():
            if edge.live and edge.expired(wall):
                _let_go(edge)

    def demand(self) -> dict[str, int]:
        """Calls that met each Aggregate rate since the last time asked (the control
        plane splits the rate by them), by "namespace/name/service"."""
        out: dict[str, int] = {}
        for (ns, name, service), edge in self.edges.items():
            if edge.aggregate and edge.live:
                out[f"{ns}/{name}/{service}"] = edge.offered
                edge.offered = 0
        return out

    def set_shares(self, shares: Mapping[str, float]) -> None:
        """The control plane's split of the Aggregate rates: this proxy's part of each."""
        for key, share in shares.items():
            ns, _, rest = key.partition("/")
            name, _, service = rest.partition("/")
            edge = self.edges.get((ns, name, service))
            if edge is not None and isinstance(share, int | float):
                edge.set_share(float(share))

    def render(self) -> str:
        """The controls' Prometheus series (appended to the proxy's /metrics)."""
        out = [
            "# HELP gossamer_control_refused_total Calls a TrafficControl refused "
            '(mode="Enforce") or would have refused (mode="DryRun"), by reason.',
            "# TYPE gossamer_control_refused_total counter",
        ]
        edges = sorted(self.edges.items())
        for (ns, name, service), edge in edges:
            counts, mode = (
                (edge.refused, "Enforce") if edge.enforce else (edge.would_refuse, "DryRun")
            )
            dst_name, _, dst_ns = service.partition(".")
            for reason, n in counts.items():
                out.append(
                    f'gossamer_control_refused_total{{control_namespace="{ns}",'
                    f'control_name="{name}",dst_namespace="{dst_ns}",dst_service="{dst_name}",'
                    f'mode="{mode}",reason="{reason}"}} {n}'
                )
        out.append(
            "# HELP gossamer_control_limit A TrafficControl's concurrency limit now "
            "(adaptive ones move), and the calls in flight and waiting under it."
        )
        out.append("# TYPE gossamer_control_limit gauge")
        for (ns, name, service), edge in edges:
            dst_name, _, dst_ns = service.partition(".")
            labels = (
                f'control_namespace="{ns}",control_name="{name}",'
                f'dst_namespace="{dst_ns}",dst_service="{dst_name}"'
            )
            if edge.bucket is not None:
                # The rate this proxy enforces: an Aggregate rate's share of it.
                out.append(f'gossamer_control_limit{{{labels},value="rate"}} {edge.bucket.rate:g}')
            bulkhead = edge.bulkhead
            if bulkhead is None:
                continue
            out.append(f'gossamer_control_limit{{{labels},value="limit"}} {bulkhead.limit}')
            out.append(f'gossamer_control_limit{{{labels},value="in_flight"}} {bulkhead.active}')
            out.append(f'gossamer_control_limit{{{labels},value="waiting"}} {bulkhead.queued()}')
        return "\n".join(out) + "\n"

    def dump(self) -> list[dict[str, Any]]:
        """What the admin's config dump shows of the controls."""
        rows: list[dict[str, Any]] = []
        for (ns, name, service), edge in sorted(self.edges.items()):
            bulkhead = edge.bulkhead
            rows.append(
                {
                    "control": f"{ns}/{name}",
                    "service": service,
                    "mode": "Enforce" if edge.enforce else "DryRun",
                    "limit": bulkhead.limit if bulkhead is not None else None,
                    "rate": edge.bucket.rate if edge.bucket is not None else None,
                    "share": edge.share if edge.aggregate else None,
                    "inFlight": bulkhead.active if bulkhead is not None else None,
                    "refused": dict(edge.refused),
                    "wouldRefuse": dict(edge.would_refuse),
                }
            )
        return rows


def _let_go(edge: EdgeControl) -> None:
    """A control that stops acting (removed, or past its ttl): the calls it holds back
    go on at once."""
    edge.live = False
    bulkhead = edge.bulkhead
    if bulkhead is not None:
        bulkhead.release_all()


def hold(
    bulkhead: Bulkhead,
    call_later: Callable[[float, Callable[[], None]], Any],
    admitted: Callable[[], None],
    timed_out: Callable[[], None],
) -> Waiter:
    """Queue a call in `bulkhead`: `admitted` once a slot is its, `timed_out` after the
    queue timeout. The side marks the waiter `gone` if its client leaves first."""

    def in_() -> None:
        waiter.bulkhead = None
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        admitted()

    waiter = Waiter(in_)

    def expire() -> None:
        waiter.timer = None
        if not waiter.gone:
            waiter.leave()
            timed_out()

    bulkhead.waiting.append(waiter)
    waiter.bulkhead = bulkhead
    waiter.timer = call_later(bulkhead.queue_timeout, expire)
    return waiter
