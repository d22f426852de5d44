"""`gossamer control get|explain`: the TrafficControls, their groups and limits, and which
of them govern a call and which limit is the tightest (docs/traffic-control.md)."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gossamer.cli.client import ApiError
from gossamer.cli.common import add_output_flag, add_server_flags, client_from, emit, fail
from gossamer.cli.output import age, table

if TYPE_CHECKING:
    from gossamer.resources.trafficcontrol import Group, TrafficControl
    from gossamer.translate.build import MeshView, ServiceRecord, WorkloadRecord

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    control = sub.add_parser(
        "control",
        help="TrafficControls: limits on the calls between groups of workloads",
        description="Show TrafficControls with their groups and limits (get), and which "
        "of them govern the calls from a workload to a service (explain). Apply them "
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

    p = verbs.add_parser(
        "status",
        help="TrafficControls at work: the edges they govern, limits in force, refusals",
        description="What each TrafficControl does now, as its source proxies report it "
        "(their last scrape): every edge it governs (source workload, destination "
        "service), the rate and concurrency limit in force there (an Aggregate rate's "
        "part, an adaptive limit as it moved), calls in flight and waiting, and the calls "
        "it refused, or in DryRun would have refused. Exit 0.",
    )
    p.add_argument("name", nargs="?", help="one TrafficControl")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    add_output_flag(p)
    add_server_flags(p)
    p.set_defaults(func=status)

    p = verbs.add_parser(
        "explain",
        help="which TrafficControls govern calls from a workload to a service, and why",
        description="Every TrafficControl whose from group holds the workload and whose to "
        "group holds a workload the service selects, with what it does for this caller, "
        "and the tightest limit of each kind (the lowest wins when several match). "
        "Controls that match on one side only are listed with the side that misses. "
        "Exit 0 whatever it finds.",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="WORKLOAD[.NS]",
        help="the calling workload (namespace default: default)",
    )
    p.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="SERVICE[.NS]",
        help="the called service (namespace default: default)",
    )
    add_output_flag(p)
    add_server_flags(p)
    p.set_defaults(func=explain)


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
        burst = f" burst {r.burst}" if r.burst else ""
        # Edge: each source proxy's own; otherwise shared by the source group.
        scope = f" {r.scope.lower()}" if r.scope != "Edge" else ""
        out.append(f"rate {r.limit}{burst}{scope}")
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


def _count(value: object) -> str:
    return "-" if value is None else f"{float(value):g}"  # type: ignore[arg-type]


def status(args: argparse.Namespace) -> int:
    client = client_from(args)
    try:
        items: dict[str, Any] = client.get("/v1/controls/status")["items"]
    except ApiError as err:
        fail(err.message)
    wanted = {
        key: value
        for key, value in items.items()
        if (args.all_namespaces or key.split("/", 1)[0] == args.namespace)
        and (not args.name or key.split("/", 1)[1] == args.name)
    }
    if emit(args, wanted):
        return 0
    if not wanted:
        print(
            "no TrafficControl at work on any proxy: none governs a call a proxy has made "
            "(or the proxies have not been scraped since)"
        )
        return 0
    rows = []
    for key, entry in sorted(wanted.items()):
        for e in entry["edges"]:
            refused = e["refused"] or e["wouldRefuse"]
            shown = ", ".join(f"{r} {n:g}" for r, n in sorted(refused.items()) if n) or "0"
            rows.append(
                [
                    key,
                    e["source"],
                    e["service"],
                    _count(e.get("rate")),
                    _count(e.get("limit")),
                    _count(e.get("inFlight")),
                    _count(e.get("waiting")),
                    ("would refuse " if e["wouldRefuse"] and not e["refused"] else "") + shown,
                ]
            )
    table(
        ["CONTROL", "SOURCE", "SERVICE", "RATE/S", "LIMIT", "IN FLIGHT", "WAITING", "REFUSED"],
        rows,
    )
    return 0


def _name_ns(text: str, flag: str, what: str) -> tuple[str, str]:
    name, _, namespace = text.partition(".")
    if not name or "." in namespace:
        fail(f"{flag} {text!r}: expected {what}[.NAMESPACE]")
    return namespace or "default", name


def explain(args: argparse.Namespace) -> int:
    import time

    from gossamer.translate.build import MeshView

    source_key = _name_ns(args.source, "--from", "WORKLOAD")
    service_key = _name_ns(args.target, "--to", "SERVICE")
    client = client_from(args)
    try:
        objects: list[dict[str, Any]] = [
            o
            for plural in ("services", "workloads", "trafficcontrols")
            for o in client.get(f"/v1/resources/{plural}")["items"]
        ]
    except ApiError as err:
        fail(err.message)
    mesh = MeshView.from_objects(objects, trust_domain="", trust_bundle="")
    source = mesh.workloads.get(source_key)
    if source is None:
        fail(
            f"--from: no workload {source_key[1]} in namespace {source_key[0]}",
            hint=f"`gossamer get workloads -n {source_key[0]}` lists them",
        )
    service = mesh.services.get(service_key)
    if service is None:
        fail(
            f"--to: no service {service_key[1]} in namespace {service_key[0]}",
            hint=f"`gossamer get services -n {service_key[0]}` lists them",
        )
    report = explain_report(mesh, source, service, time.time())
    if not emit(args, report):
        _print_explain(report)
    return 0


def explain_report(
    mesh: MeshView, source: WorkloadRecord, service: ServiceRecord, now: float
) -> dict[str, Any]:
    """What `explain` shows, from the one matcher the proxies' snapshots use."""
    from gossamer.translate.controls import (
        controls_between,
        expired,
        in_group,
        service_in_group,
        tightest,
    )

    found = controls_between(mesh, source, service)
    live = [a for a in found if not expired(a.control, now)]
    applied = []
    for a in found:
        control = a.control
        if expired(control, now):
            effect = "expired (ttl): applies to nothing"
        elif not a.acts:
            effect = "the source is allowed by its quarantine, and it sets nothing else"
        elif control.spec.mode == "DryRun":
            effect = "counts what it would refuse (DryRun), refuses nothing"
        elif a.view.quarantined:
            effect = "quarantine: refuses every call"
        else:
            effect = "applies"
        applied.append(
            {
                "control": f"{control.metadata.namespace}/{control.metadata.name}",
                "mode": control.spec.mode,
                "limits": limits_text(control),
                "effect": effect,
            }
        )
    governing = {id(a.control) for a in found}
    near = []
    for control in sorted(mesh.controls, key=lambda c: (c.metadata.namespace, c.metadata.name)):
        if id(control) in governing:
            continue
        ns = control.metadata.namespace
        holds_source = in_group(control.spec.from_, ns, source.namespace, source.labels)
        holds_service = service_in_group(mesh, service, control.spec.to, ns)
        if holds_source == holds_service:
            continue  # both sides miss: nothing to explain about this call
        if holds_source:
            why = f"to ({group_text(control.spec.to, ns)}) holds no workload {service.name} selects"
        else:
            why = f"from ({group_text(control.spec.from_, ns)}) does not hold {source.name}"
        near.append({"control": f"{ns}/{control.metadata.name}", "notApplied": why})
    quarantined_by = [
        f"{a.control.metadata.namespace}/{a.control.metadata.name}"
        for a in live
        if a.acts and a.view.quarantined and a.control.spec.mode == "Enforce"
    ]
    return {
        "from": f"{source.name}.{source.namespace}",
        "to": f"{service.name}.{service.namespace}",
        "controls": applied,
        # The lowest enforced limit binds; a DryRun one only counts what it would refuse.
        "tightest": tightest(a for a in live if a.control.spec.mode == "Enforce"),
        "tightestDryRun": tightest(a for a in live if a.control.spec.mode == "DryRun"),
        "quarantinedBy": quarantined_by,
        "nearMisses": near,
    }


def _print_explain(report: dict[str, Any]) -> None:
    calls = f"calls from workload {report['from']} to service {report['to']}"
    controls = report["controls"]
    if not controls:
        print(f"no TrafficControl governs {calls}")
    else:
        print(f"{calls}: {len(controls)} TrafficControl(s) govern them")
        for c in controls:
            print(f"  {c['control']} ({c['mode']}): {c['effect']}")
            for limit in c["limits"]:
                print(f"    {limit}")
    for control in report["quarantinedBy"]:
        print(f"quarantined by {control}: every call is refused, whatever the limits")
    for key, title in (
        ("tightest", "tightest (the lowest of each kind binds)"),
        ("tightestDryRun", "tightest in DryRun (counts what it would refuse, refuses nothing)"),
    ):
        if report[key]:
            print(f"{title}:")
            for kind, control in report[key].items():
                print(f"  {kind}: {control}")
    for miss in report["nearMisses"]:
        print(f"not applied: {miss['control']}: {miss['notApplied']}")
