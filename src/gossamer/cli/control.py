"""`gossamer control get`: the TrafficControls, their groups and limits
(docs/traffic-control.md)."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gossamer.cli.client import ApiError
from gossamer.cli.common import add_output_flag, add_server_flags, client_from, emit, fail
from gossamer.cli.output import age, table

if TYPE_CHECKING:
    from gossamer.resources.trafficcontrol import Group, TrafficControl

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    control = sub.add_parser(
        "control",
        help="TrafficControls: limits on the calls between groups of workloads",
        description="Show TrafficControls with their groups and limits (get). Apply them "
        "with `gossamer apply -f`; `gossamer findings` suggests some.",
    )
    verbs = control.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser(
        "get",
        help="list TrafficControls with their groups, limits and mode",
        description="Each TrafficControl: its FROM and TO groups (labels, and the "
        "namespaces they are taken from), what it applies (rate, concurrency, circuit "
        "breaker, quarantine, retry budget), its mode and its time to live.",
    )
    p.add_argument("name", nargs="?", help="one TrafficControl")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    add_output_flag(p)
    add_server_flags(p)
    p.set_defaults(func=get)


def _typed(obj: dict[str, Any]) -> TrafficControl:
    from gossamer.resources import validate
    from gossamer.resources.trafficcontrol import TrafficControl

    control = validate(obj)
    assert isinstance(control, TrafficControl)  # the API lists only its own kind
    return control


def group_text(group: Group, namespace: str) -> str:
    """`tier=web in shop`, `all in *`: the labels a workload must have, and where."""
    labels = ",".join(f"{k}={v}" for k, v in sorted(group.labels().items())) or "all"
    return f"{labels} in {','.join(group.namespaces or [namespace])}"


def limits_text(control: TrafficControl) -> list[str]:
    """What the control applies, one short phrase each, in the order of the spec."""
    spec, ns = control.spec, control.metadata.namespace
    out = []
    if (r := spec.rate) is not None:
        out.append(f"rate {r.limit}" + (f" burst {r.burst}" if r.burst else ""))
    if (c := spec.concurrency) is not None:
        if c.adaptive is not None:
            a = c.adaptive
            limit = f"{a.algorithm} {a.min_limit}..{a.max_limit} from {a.initial_limit}"
        else:
            limit = str(c.max_in_flight)
        queue = f" +{c.max_pending} pending {c.queue_timeout}" if c.max_pending else ""
        out.append(f"concurrency {limit}{queue}")
    if (b := spec.circuit_breaker) is not None:
        trips = []
        if b.consecutive_failures is not None:
            trips.append(f"{b.consecutive_failures} failures in a row")
        if b.failure_percent is not None:
            trips.append(f"{b.failure_percent:g}% of {b.min_requests}+ in {b.interval}")
        out.append(f"breaker {' or '.join(trips)}, open {b.ejection_time}")
    if (q := spec.quarantine) is not None:
        allowed = "; ".join(group_text(g, ns) for g in q.allow) or "none"
        out.append(f"quarantine (allowed: {allowed})")
    if (rb := spec.retry_budget) is not None:
        out.append(f"retry budget {rb.percent:g}% min {rb.min_retries_per_second}/s")
    return out


def control_row(obj: dict[str, Any], now: datetime | None = None) -> list[object]:
    control = _typed(obj)
    ns = control.metadata.namespace
    return [
        control.metadata.name,
        group_text(control.spec.from_, ns),
        group_text(control.spec.to, ns),
        "; ".join(limits_text(control)),
        control.spec.mode,
        control.spec.ttl or "-",
        age(obj["metadata"].get("creationTimestamp"), now),
    ]


def get(args: argparse.Namespace) -> int:
    client = client_from(args)
    try:
        if args.name:
            items = [client.get(f"/v1/resources/trafficcontrols/{args.namespace}/{args.name}")]
        else:
            query = {} if args.all_namespaces else {"namespace": args.namespace}
            items = client.get("/v1/resources/trafficcontrols", **query)["items"]
    except ApiError as err:
        fail(err.message)
    if emit(args, items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}):
        return 0
    if not items:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"no TrafficControls in {where}")
        return 0
    headers = ["NAME", "FROM", "TO", "LIMITS", "MODE", "TTL", "AGE"]
    rows = [control_row(o) for o in items]
    if args.all_namespaces:
        headers = ["NAMESPACE", *headers]
        rows = [[o["metadata"]["namespace"], *r] for o, r in zip(items, rows, strict=True)]
    table(headers, rows)
    return 0
