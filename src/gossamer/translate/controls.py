"""TrafficControls as one source proxy sees them (gossamer.resources.trafficcontrol).

A control reaches the proxies of the workloads in its `from` group, each with the
destination services it governs among those the proxy's snapshot holds: a Service is
in the `to` group when it selects a workload of that group. Matching is written once,
here: the snapshot (`controls_for`), `gossamer control explain` and the control
plane's status (`governs`) all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gossamer.resources import validate
from gossamer.resources.httproute import parse_duration
from gossamer.resources.trafficcontrol import (
    ALL_NAMESPACES,
    Group,
    TrafficControl,
    parse_rate,
)
from gossamer.translate.controltypes import (
    BreakerView,
    ConcurrencyView,
    ControlView,
    RateView,
    RetryBudgetView,
)

if TYPE_CHECKING:
    from gossamer.translate.build import MeshView, ServiceRecord, WorkloadRecord


def in_group(
    group: Group, control_namespace: str, namespace: str, labels: Mapping[str, str]
) -> bool:
    """Whether a workload (`namespace`, `labels`) is in `group` of a control in
    `control_namespace`."""
    namespaces = group.namespaces or [control_namespace]
    if ALL_NAMESPACES not in namespaces and namespace not in namespaces:
        return False
    return all(labels.get(k) == v for k, v in group.labels().items())


def service_in_group(
    mesh: MeshView, service: ServiceRecord, group: Group, control_namespace: str
) -> bool:
    """A Service is in a group when it selects one of the group's workloads (asked once
    per mesh, group and Service: the answer is kept in the mesh's memo)."""
    key = ("to", id(group), control_namespace, service.namespace, service.name)
    found = mesh.memo.get(key)
    if found is None:
        members = mesh.selected.get((service.namespace, service.name), ())
        found = mesh.memo[key] = any(
            in_group(group, control_namespace, wl.namespace, wl.labels) for wl in members
        )
    return found


def governs(
    mesh: MeshView, control: TrafficControl, source: WorkloadRecord, service: ServiceRecord
) -> bool:
    """Whether `control` applies to calls from `source` to `service`."""
    ns = control.metadata.namespace
    return in_group(control.spec.from_, ns, source.namespace, source.labels) and service_in_group(
        mesh, service, control.spec.to, ns
    )


def _expires_at(control: TrafficControl) -> float | None:
    ttl = control.spec.ttl
    created = control.metadata.creation_timestamp
    if ttl is None or created is None:
        return None
    try:
        start = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return start + parse_duration(ttl)


def _whole_side(control: TrafficControl) -> str | None:
    """The side ("from" or "to") of the mesh an enforced quarantine takes whole."""
    spec = control.spec
    if spec.mode != "Enforce" or spec.quarantine is None:
        return None
    return next((s for s, g in (("from", spec.from_), ("to", spec.to)) if g.everything()), None)


def asks_about_workloads(control: TrafficControl) -> bool:
    """Whether `refuses_a_whole_side` needs the mesh's workloads to answer for it (an
    enforced quarantine of a whole side, with an allow list): the apply lists the
    Workloads only then."""
    q = control.spec.quarantine
    return q is not None and bool(q.allow) and _whole_side(control) is not None


def refuses_a_whole_side(
    control: TrafficControl, workloads: Iterable[tuple[str, Mapping[str, str]]] | None = None
) -> str | None:
    """Why an enforced quarantine refuses every call from, or to, every workload of the
    mesh (applying it takes --force); None for any other.

    A quarantine whose `from` or `to` is the whole mesh does so when it has no allow
    list, and when its allow list lets none of the callers it governs through: none of
    `workloads` (namespace, labels: the mesh's workloads as the apply would leave them)
    that is in `from` is in an allow group (a mistyped namespace or label makes an
    allow list of nobody; an allow list only ever lets a caller in `from` through).
    Without `workloads` only the first is asked.
    """
    side = _whole_side(control)
    if side is None:
        return None
    whole = (
        f"this quarantine refuses every call {side} every workload of the mesh "
        f"({side}: all namespaces, no selector)"
    )
    spec = control.spec
    q = spec.quarantine
    assert q is not None
    if not q.allow:
        return whole
    if workloads is None:
        return None
    ns = control.metadata.namespace
    callers = [(wns, labels) for wns, labels in workloads if in_group(spec.from_, ns, wns, labels)]
    if any(in_group(g, ns, wns, labels) for wns, labels in callers for g in q.allow):
        return None
    return (
        f"{whole}, and its allow list lets none of the {len(callers)} workloads in `from` "
        "through (none of them is in any of its groups: a mistyped namespace or label?)"
    )


def expired(control: TrafficControl, now: float) -> bool:
    at = _expires_at(control)
    return at is not None and now >= at


def view_of(
    control: TrafficControl, services: tuple[str, ...], source: WorkloadRecord
) -> ControlView:
    spec = control.spec
    ns = control.metadata.namespace
    quarantined = spec.quarantine is not None and not any(
        in_group(g, ns, source.namespace, source.labels) for g in spec.quarantine.allow
    )
    rate = None
    if spec.rate is not None:
        per_second = parse_rate(spec.rate.limit)
        rate = RateView(
            per_second,
            spec.rate.burst or max(1, int(per_second)),
            aggregate=spec.rate.scope == "Aggregate",
        )
    concurrency = None
    if (c := spec.concurrency) is not None:
        a = c.adaptive
        concurrency = ConcurrencyView(
            max_in_flight=c.max_in_flight,
            algorithm=a.algorithm if a else "Gradient2",
            initial_limit=a.initial_limit if a else 20,
            min_limit=a.min_limit if a else 1,
            max_limit=a.max_limit if a else 1000,
            max_pending=c.max_pending,
            queue_timeout=parse_duration(c.queue_timeout),
        )
    breaker = None
    if (b := spec.circuit_breaker) is not None:
        breaker = BreakerView(
            b.consecutive_failures,
            b.failure_percent,
            b.min_requests,
            parse_duration(b.interval),
            parse_duration(b.ejection_time),
        )
    budget = None
    if (r := spec.retry_budget) is not None:
        budget = RetryBudgetView(r.percent, r.min_retries_per_second)
    return ControlView(
        name=control.metadata.name,
        namespace=ns,
        services=services,
        mode=spec.mode,
        quarantined=quarantined,
        expires_at=_expires_at(control),
        rate=rate,
        concurrency=concurrency,
        breaker=breaker,
        retry_budget=budget,
    )


def validate_control(obj: Mapping[str, Any]) -> TrafficControl:
    """A stored TrafficControl (validated when applied), typed."""
    control = validate(obj)
    assert isinstance(control, TrafficControl)
    return control


def _acts(view: ControlView) -> bool:
    """Whether the control does anything for this source (an allowed source of a
    quarantine-only control does not)."""
    return view.quarantined or any(
        x is not None for x in (view.rate, view.concurrency, view.breaker, view.retry_budget)
    )


def controls_for(
    mesh: MeshView, source: WorkloadRecord, services: Iterable[ServiceRecord]
) -> tuple[ControlView, ...]:
    """The controls of one source proxy, over the services its snapshot holds."""
    held = sorted(
        {(s.namespace, s.name): s for s in services}.values(), key=lambda s: (s.namespace, s.name)
    )
    out = []
    for control in sorted(mesh.controls, key=lambda c: (c.metadata.namespace, c.metadata.name)):
        ns = control.metadata.namespace
        if not in_group(control.spec.from_, ns, source.namespace, source.labels):
            continue
        governed = tuple(
            f"{s.name}.{s.namespace}"
            for s in held
            if service_in_group(mesh, s, control.spec.to, ns)
        )
        if not governed:
            continue
        view = view_of(control, governed, source)
        if _acts(view):
            out.append(view)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Applies:
    """One control on one call, as `gossamer control explain` shows it."""

    control: TrafficControl
    view: ControlView  # what the source proxy enforces for it
    acts: bool  # False: it matches, but does nothing for this source (an allowed one)


def controls_between(
    mesh: MeshView, source: WorkloadRecord, service: ServiceRecord
) -> list[Applies]:
    """Every control that governs calls from `source` to `service`, in the order the
    proxy asks them (name order). The tightest of each kind is what a call meets
    first: `tightest` says which."""
    found = []
    key = f"{service.name}.{service.namespace}"
    for control in sorted(mesh.controls, key=lambda c: (c.metadata.namespace, c.metadata.name)):
        if governs(mesh, control, source, service):
            view = view_of(control, (key,), source)
            found.append(Applies(control, view, _acts(view)))
    return found


def tightest(found: Iterable[Applies]) -> dict[str, str]:
    """Per kind of limit, the control ("namespace/name") whose limit is the lowest:
    `rate` (requests a second), `concurrency` (fixed maxInFlight, else an adaptive
    maxLimit), `retryBudget` (percent)."""
    best: dict[str, tuple[float, str]] = {}

    def offer(kind: str, value: float, name: str) -> None:
        if kind not in best or value < best[kind][0]:
            best[kind] = (value, name)

    for a in found:
        if not a.acts:
            continue
        v, name = a.view, f"{a.view.namespace}/{a.view.name}"
        if v.rate is not None:
            offer("rate", v.rate.per_second, name)
        if v.concurrency is not None:
            c = v.concurrency
            offer("concurrency", float(c.max_in_flight or c.max_limit), name)
        if v.retry_budget is not None:
            offer("retryBudget", v.retry_budget.percent, name)
    return {kind: name for kind, (_, name) in best.items()}
