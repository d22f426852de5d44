"""One outbound call through the mesh's policies, protocol-neutral and sans-IO.

An HTTP/1.1 exchange, an HTTP/2 stream and a gRPC call to a service port all take
their policy decisions from a `Call`, in this order:

1. `fault()`       FaultPolicy: abort (an `Answer`), delay (seconds), or go on;
2. `apply_routes()` the service port's HTTPRoutes or GRPCRoutes: a rule (a `Routed`),
                   or an `Answer` (no rule matches, the rule is broken, weight 0);
3. `admit()`       the TrafficControls on the backend (proxy.policy.control: a refusal,
                   or a `Held` call waiting in a bulkhead's queue), the backend's
                   CircuitBreakerPolicy `maxRequests`; the retry policy
                   (the rule's `retry`, else the backend's RetryPolicy) is adopted and
                   paid into its budget, and the per-try timeout chosen;
4. per try:        `connect_failed()`, `retries_status()`/`retries_reset()` and
                   `try_again()` (attempts, the request kept whole, the budget, backoff);
5. `outcome()`     outlier detection hears how each try went;
6. `finish()`      the limits are given back, the controls told how the call went;
                   `stats()` is the cell the call is counted in.

The protocol sides keep only what is theirs: parsing, framing, header edits on their
own header representation, timers and sockets. Nothing here reads a clock (`now` is
passed in) or touches I/O, so each decision is tested by calling it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from gossamer.proxy.policy.control import (
    GRPC_RESOURCE_EXHAUSTED,
    Bulkhead,
    EdgeControl,
    Waiter,
    hold,
)
from gossamer.proxy.policy.resilience import IDEMPOTENT

if TYPE_CHECKING:
    from gossamer.proxy.observe.metrics import RequestStats
    from gossamer.proxy.policy.balancer import EndpointLoad
    from gossamer.proxy.policy.resilience import Limits, RetryPolicy
    from gossamer.proxy.policy.routematch import CompiledBackend, CompiledRule
    from gossamer.proxy.policy.routing import Route

log = logging.getLogger("gossamer.proxy")

P = TypeVar("P")

# Tries of one request to different endpoints when a connection cannot be opened and
# no retry policy says otherwise (nothing was sent, so it is always safe).
MAX_CONNECT_TRIES: Final = 3
GRPC_UNAVAILABLE: Final = b"14"


@dataclass(frozen=True, slots=True)
class Answer:
    """The proxy answers the call itself: `status` and the `gossamer-error` reason; a
    gRPC call gets `grpc_code` if set, else the code gRPC maps `status` to."""

    status: int
    reason: str
    grpc_code: int | None = None
    retry_after: float | None = None  # seconds, for a `retry-after` (a control's refusal)

    def retry_after_value(self) -> bytes | None:
        """`retry-after` in whole seconds (RFC 9110 10.2.3), at least 1; or None."""
        if self.retry_after is None:
            return None
        return b"%d" % max(1, int(self.retry_after + 0.999))


@dataclass(frozen=True, slots=True)
class Routed(Generic[P]):
    """The rule a request matched and the backend drawn for it: the side applies the
    header edits, rewrite and mirrors to its own representation of the request. A
    redirect rule has no backend (None): the side answers it."""

    rule: CompiledRule[Route[P]]
    backend: CompiledBackend[Route[P]] | None
    target: Route[P] | None


class Call(Generic[P]):
    """The policies of one request to one service port (see the module's docstring)."""

    __slots__ = (
        "admitted_at",
        "connects",
        "entered",
        "held",
        "limits",
        "per_try",
        "replayable",
        "retries",
        "retry",
        "route",
        "rule_retry",
        "timeout",
        "via",
    )

    def __init__(self, route: Route[P], method: bytes, grpc: bool = False) -> None:
        self.route = route  # the service port, then the backend a rule picked
        self.via: str | None = None  # "namespace/name" of the route whose rule matched
        self.retry: RetryPolicy | None = None
        self.limits: Limits | None = None
        self.timeout: float | None = None  # timeouts.request, for the whole call
        self.per_try: float | None = None  # timeouts.backendRequest, else perTryTimeout
        self.retries = 0
        self.connects = 0  # endpoints tried for the current try
        # May the request be sent again whole (RFC 9110 9.2.2; a gRPC call is replayed
        # only when its client may see it twice, which a retry policy on it says)?
        self.replayable = grpc or method in IDEMPOTENT
        self.rule_retry: RetryPolicy | None = None
        # TrafficControls: those whose bulkhead let the call in (given back at the
        # end), the queue it waits in, and when it was let through.
        self.entered: list[tuple[EdgeControl, Bulkhead | None]] | None = None
        self.held: Held[P] | None = None
        self.admitted_at = 0.0

    # ---- 1. fault injection -----------------------------------------------------------

    def fault(self, rng: Any = random.random) -> Answer | float | None:
        """FaultPolicy: an abort to answer with, a delay in seconds, or None."""
        fault = self.route.fault
        if fault is None:
            return None
        if fault.abort_status is not None and rng() * 100 < fault.abort_percent:
            return Answer(
                fault.abort_status,
                f"fault injected: abort with {fault.abort_status} for {self.route.label} "
                "(FaultPolicy)",
            )
        if fault.delay is not None and rng() * 100 < fault.delay_percent:
            return fault.delay
        return None

    # ---- 2. routes ---------------------------------------------------------------------

    def apply_routes(
        self,
        method: bytes,
        target: bytes,
        authority: bytes | None,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Routed[P] | Answer | None:
        """The service port's routes: the matched rule and its backend, an `Answer`
        (404 when no rule matches; 500 for a rule that cannot be served), or None when
        the port has no routes. From a match on, the call counts as the route's."""
        route = self.route
        router = route.router
        if router is None:
            return None
        match = router.match(method, target, authority, headers)
        if match is None:
            return Answer(
                404,
                f"no rule of the HTTPRoutes of {route.label} ({', '.join(router.routes)}) "
                f"matches {method.decode('latin-1')} {target.decode('latin-1')}",
            )
        rule = match.rule
        spec = rule.spec
        self.via = spec.route
        if spec.error is not None:
            return Answer(500, f"{rule.label}: {spec.error}")
        if spec.redirect is not None:
            return Routed(rule, None, None)
        self.timeout = spec.timeout
        self.per_try = spec.backend_timeout
        backend = rule.pick()
        if backend is None:
            return Answer(500, f"{rule.label}: every backendRef has weight 0")
        if backend.error is not None or backend.target is None:
            return Answer(500, f"{rule.label}: {backend.error}")
        return Routed(rule, backend, backend.target)

    # ---- 3. admission -------------------------------------------------------------------

    def admit(
        self, target: Route[P], rule_retry: RetryPolicy | None, now: float
    ) -> Answer | Held[P] | None:
        """Send to `target`, if its TrafficControls let the call through (an `Answer`
        when one refuses it; a `Held` call when a bulkhead queues it: see `proceed`),
        then its circuit breaker's maxRequests (an `Answer` when over it), and the retry
        policy, paid into its budget (every call under a policy deposits, so a
        percentage budget allows that share of retries)."""
        self.route = target
        self.rule_retry = rule_retry
        return self._admit_from(0, now)

    def _admit_from(self, i: int, now: float) -> Answer | Held[P] | None:
        target = self.route
        controls = target.controls
        while i < len(controls):
            edge = controls[i]
            i += 1
            if not edge.live:
                continue
            refusal = edge.check(now)
            if refusal is not None:
                return self._refused(
                    Answer(503, refusal.reason, GRPC_RESOURCE_EXHAUSTED, refusal.retry_after)
                )
            bulkhead = edge.bulkhead
            if bulkhead is None:
                if edge.breaker is not None:
                    self._entered(edge, None)  # the breaker hears how it went
                continue
            if bulkhead.enter():
                self._entered(edge, bulkhead)
            elif edge.enforce and bulkhead.queued() < bulkhead.max_pending:
                held = self.held = Held(self, edge, i)
                return held
            else:
                refusal = edge.refuse_concurrency(bulkhead)
                if refusal is not None:
                    return self._refused(Answer(503, refusal.reason, GRPC_RESOURCE_EXHAUSTED, 1.0))
                self._entered(edge, None)
        self.admitted_at = now
        limits = target.limits
        if limits is not None:
            if limits.max_requests is not None and limits.active >= limits.max_requests:
                return self._refused(
                    Answer(
                        503,
                        f"circuit breaker: {target.label} has {limits.active} requests in "
                        f"flight (maxRequests {limits.max_requests})",
                    )
                )
            limits.active += 1
            self.limits = limits
        retry = self.rule_retry or target.retry
        if retry is not None:
            retry.budget.deposit(now)
            self.retry = retry
            if self.per_try is None:
                self.per_try = retry.per_try
        return None

    def _refused(self, answer: Answer) -> Answer:
        """The proxy answers the call itself before it is sent: the controls that let it
        through so far give their slots back and learn nothing from it (the
        destination never saw it: not a failure, not a latency)."""
        entered = self.entered
        if entered is not None:
            self.entered = None
            for edge, slot in entered:
                edge.done(self.admitted_at, None, 0, slot)
        return answer

    def _entered(self, edge: EdgeControl, slot: Bulkhead | None) -> None:
        """`edge` let the call through (`slot`: into this bulkhead of it); told at the
        end, and the slot given back to that bulkhead whatever the edge has then."""
        if self.entered is None:
            self.entered = [(edge, slot)]
        else:
            self.entered.append((edge, slot))

    # ---- 4. tries ------------------------------------------------------------------------

    def connect_failed(self, endpoints: int, now: float) -> bool:
        """A connection to the chosen endpoint could not be opened (nothing was sent):
        whether to try another endpoint now. Without a retry policy the proxy does so,
        up to MAX_CONNECT_TRIES endpoints; with one, its `retryOn` decides
        (connect-failure or 5xx), within its attempts and budget, counted as a retry."""
        retry = self.retry
        if retry is None:
            return self.connects < min(MAX_CONNECT_TRIES, endpoints)
        if not retry.on_connect or self.retries >= retry.attempts:
            return False
        if not retry.withdraw(now):
            return False
        self.retries += 1
        retry.count(self.via)  # the next endpoint is tried at once: no backoff
        return True

    def refused(self) -> None:
        """The endpoint just tried refused the request unprocessed (an HTTP/2
        REFUSED_STREAM or GOAWAY): it is sent again, as a new try, for which no
        endpoint has been tried yet (`connect_failed`)."""
        self.connects = 0

    def retries_status(self, status: int, grpc_status: bytes | None = None) -> bool:
        """Whether the policy retries this answer (gRPC's UNAVAILABLE counts as 503)."""
        retry = self.retry
        if retry is None:
            return False
        codes = retry.codes
        return status in codes or (grpc_status == GRPC_UNAVAILABLE and 503 in codes)

    def retries_reset(self) -> bool:
        """Whether the policy retries a try whose stream or connection was reset
        before any of its answer arrived (retryOn `reset` or `5xx`)."""
        return self.retry is not None and self.retry.on_reset

    def try_again(self, whole: bool, now: float) -> float | None:
        """One more try, if the policy allows it: its attempts, a request the side
        holds whole (`whole`: read to the end and its body kept), a replayable method,
        and the budget. The backoff to wait before it, or None for no retry."""
        retry = self.retry
        if retry is None or not whole or not self.replayable:
            return None
        if self.retries >= retry.attempts or not retry.withdraw(now):
            return None
        self.retries += 1
        self.connects = 0
        return retry.counted_backoff(self.retries, self.via)

    # ---- 5. outlier detection ----------------------------------------------------------

    def outcome(self, load: EndpointLoad, failed: bool, now: float, peer: str = "") -> None:
        """Outlier detection hears how a try to `load`'s endpoint went."""
        outlier = self.route.outlier
        if outlier is None:
            return
        if not failed:
            outlier.success(load, now)
        elif outlier.failure(load, now):
            log.warning(
                "%s: ejected %s (outlier detection)", self.route.label, peer or "an endpoint"
            )

    # ---- 6. the end ------------------------------------------------------------------------

    def finish(self, status: int = 0, now: float | None = None, rtt: float | None = None) -> None:
        """The call is over with `status` (0: no answer, its client went away): give
        back its circuit-breaker slot and its bulkhead slots, and tell the controls how
        it went (latency since admission, or `rtt` when given, and failure teach
        adaptive limits and the group breakers). Idempotent."""
        limits = self.limits
        if limits is not None:
            limits.active -= 1
            self.limits = None
        held = self.held
        if held is not None:
            held.cancel()
        entered = self.entered
        if entered is not None:
            self.entered = None
            when = self.admitted_at if now is None else now
            if rtt is None:
                rtt = when - self.admitted_at
            for edge, slot in entered:
                edge.done(when, rtt, status, slot)

    def stats(self, status: int, grpc_status: bytes | None = None) -> RequestStats:
        """The metrics cell the call is counted in, by its status (and grpc-status)."""
        if grpc_status is None:
            return self.route.stats_for(status, self.via)
        return self.route.grpc_stats_for(status, grpc_status, self.via)


def failed(status: int, grpc_status: bytes | None = None) -> bool:
    """Whether an answer counts as a failure for outlier detection."""
    return status >= 500 or grpc_status == GRPC_UNAVAILABLE


class Held(Generic[P]):
    """A call waiting in a TrafficControl bulkhead's queue (backpressure): `proceed`
    parks it; once a slot is its, the rest of `admit` runs; at the queue timeout it is
    refused."""

    __slots__ = ("call", "edge", "index", "waiter")

    def __init__(self, call: Call[P], edge: EdgeControl, index: int) -> None:
        self.call = call
        self.edge = edge
        self.index = index  # the next control to ask once in
        self.waiter: Waiter | None = None

    def cancel(self) -> None:
        """The call ended while waiting: it leaves the queue."""
        if self.waiter is not None:
            self.waiter.leave()
        self.call.held = None


Later = Callable[[float, Callable[[], None]], Any]


def proceed(
    verdict: Answer | Held[P] | None,
    call_later: Later,
    clock: Callable[[], float],
    go: Callable[[], None],
    refuse: Callable[[Answer], None],
) -> None:
    """What a side does with `Call.admit`'s verdict: `go` (send the call), `refuse`
    (answer it), or park it in a bulkhead's queue until it is let in (then go on
    with the controls after that one) or its queue timeout refuses it."""
    if verdict is None:
        go()
        return
    if isinstance(verdict, Answer):
        refuse(verdict)
        return
    held = verdict
    edge = held.edge
    bulkhead = edge.bulkhead
    assert bulkhead is not None

    def admitted() -> None:
        call = held.call
        call.held = None
        call._entered(edge, bulkhead)
        proceed(call._admit_from(held.index, clock()), call_later, clock, go, refuse)

    def timed_out() -> None:
        call = held.call
        call.held = None
        refusal = edge.refuse_concurrency(bulkhead)
        reason = refusal.reason if refusal is not None else f"{edge.label}: queue timeout"
        refuse(
            call._refused(
                Answer(
                    503,
                    f"{reason} (waited {bulkhead.queue_timeout:g}s in its queue)",
                    GRPC_RESOURCE_EXHAUSTED,
                    1.0,
                )
            )
        )

    held.waiter = hold(bulkhead, call_later, admitted, timed_out)
