"""`gossamer describe service|workload NAME` and `gossamer proxy-config WORKLOAD`:
everything about one service or workload in one view, as `istioctl x describe` and
`kubectl describe` give it, and the configuration a proxy runs.

Everything here is read from the API; nothing is computed that the control plane or
the proxy does not already say (a route's status, a proxy's snapshot state, golden
metrics), except which objects point at which: that is what describe adds.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from gossamer.cli.client import ApiError, Client
from gossamer.cli.common import add_output_flag, add_server_flags, client_from, emit, fail
from gossamer.cli.output import duration, table
from gossamer.cli.resources import POLICY_KINDS, _flat, _selector, _targets
from gossamer.cli.stat import METRIC_HEADERS, RETRY_HEADERS, metric_cells, retry_cells

ROUTE_PLURALS = ("httproutes", "grpcroutes", "tcproutes")
POLICY_PLURALS = {
    "AuthorizationPolicy": "authorizationpolicies",
    "MeshPolicy": "meshpolicies",
    "RetryPolicy": "retrypolicies",
    "OutlierPolicy": "outlierpolicies",
    "CircuitBreakerPolicy": "circuitbreakerpolicies",
    "FaultPolicy": "faultpolicies",
}
assert set(POLICY_PLURALS) == set(POLICY_KINDS)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "describe",
        help="one service or workload: routes, policies, workloads, proxies, metrics",
        description="Everything about one service (its ports, the workloads it selects "
        "and their proxies' snapshot and certificate state, the routes that send to it, "
        "the policies attached with their settings, and its golden metrics with retries) "
        "or one workload (its services, conditions, proxy, policies). Exits 1 if it does "
        "not exist.",
    )
    p.add_argument("what", choices=("service", "svc", "workload", "wl"), help="what to describe")
    p.add_argument("name", help="its name")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument(
        "-w", "--window", default="1m", help="golden metrics over this window (default: 1m)"
    )
    add_output_flag(p)
    add_server_flags(p)
    p.set_defaults(func=describe)

    c = sub.add_parser(
        "proxy-config",
        help="the configuration one proxy runs: its snapshot, listeners, certificate",
        description="Print what the proxy of WORKLOAD runs, as its admin /config says it "
        "(fetched through the control plane): listener addresses, readiness, certificate "
        "expiry and the snapshot (services, endpoints, routes, policies). Default "
        "output is YAML; -o table prints a summary.",
    )
    c.add_argument("workload", help="the workload, NAME or NAME.NAMESPACE")
    c.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    c.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="yaml",
        help="output format: table (a summary), json, yaml (default: yaml)",
    )
    add_server_flags(c)
    c.set_defaults(func=proxy_config)


def _get(client: Client, path: str, **query: str) -> Any:
    try:
        return client.get(path, **query)
    except ApiError as err:
        fail(err.message)


def _items(client: Client, plural: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = _get(client, f"/v1/resources/{plural}")["items"]
    return items


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _key(obj: dict[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _accepted(route: dict[str, Any]) -> str:
    """The route's own status: Accepted and ResolvedRefs, as the control plane set them."""
    notes = []
    for parent in (route.get("status") or {}).get("parents") or ():
        for cond in parent.get("conditions") or ():
            if cond.get("status") != "True":
                notes.append(f"{cond.get('type')}: {cond.get('reason')}")
    return "; ".join(notes) or "accepted"


def _routes_to(client: Client, name: str, namespace: str) -> list[dict[str, Any]]:
    out = []
    for plural in ROUTE_PLURALS:
        for route in _items(client, plural):
            rns = route["metadata"]["namespace"]
            for ref in route["spec"].get("parentRefs") or ():
                if (
                    ref.get("kind") == "Service"
                    and ref.get("name") == name
                    and ref.get("namespace", rns) == namespace
                ):
                    out.append(
                        {
                            "kind": route["kind"],
                            "name": _key(route),
                            "role": "producer" if rns == namespace else "consumer",
                            "port": ref.get("port"),
                            "rules": len(route["spec"].get("rules") or ()),
                            "status": _accepted(route),
                        }
                    )
                    break
    return out


def _policies_for(
    client: Client, namespace: str, services: set[str], labels: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """Policies in the namespace that target one of `services` or select a workload
    with one of `labels` (and MeshPolicies, which apply to the namespace or mesh)."""
    out = []
    for kind, plural in POLICY_PLURALS.items():
        for policy in _items(client, plural):
            pns = policy["metadata"]["namespace"]
            spec = policy.get("spec") or {}
            refs = spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            if refs:
                applies = pns == namespace and any(
                    r.get("kind", "Service") == "Service" and r.get("name") in services
                    for r in refs
                )
            elif selector:
                applies = pns == namespace and any(_selects(selector, lab) for lab in labels)
            else:
                # No target: the namespace's (MeshPolicy: the mesh's, from its root).
                applies = pns == namespace or kind == "MeshPolicy"
            if applies:
                settings = {
                    k: v
                    for k, v in spec.items()
                    if k not in ("targetRefs", "targetRef", "selector")
                }
                out.append(
                    {
                        "kind": kind,
                        "name": _key(policy),
                        "targets": _targets(policy),
                        "settings": ",".join(_flat(settings)),
                    }
                )
    return out


def _proxy_rows(
    workloads: list[dict[str, Any]], proxies: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    by_key = {(p["namespace"], p["workload"]): p for p in proxies}
    rows = []
    for wl in workloads:
        p = by_key.get((wl["metadata"]["namespace"], wl["metadata"]["name"]))
        ready = next(
            (
                c.get("status") == "True"
                for c in (wl.get("status") or {}).get("conditions") or ()
                if c.get("type") == "Ready"
            ),
            True,
        )
        left = None
        if p and p.get("certificateNotAfter"):
            left = (datetime.fromisoformat(p["certificateNotAfter"]) - now).total_seconds()
        rows.append(
            {
                "workload": wl["metadata"]["name"],
                "address": f"{wl['spec']['address']}:{wl['spec']['inboundPort']}",
                "ready": ready,
                "connected": p is not None,
                "snapshot": (p or {}).get("ackedVersion") or None,
                "upToDate": bool(p and p.get("upToDate")),
                "identity": (p or {}).get("identity"),
                "certificateLeftSeconds": left,
            }
        )
    return rows


def describe(args: argparse.Namespace) -> int:
    client = client_from(args)
    now = datetime.now(UTC)
    ns = args.namespace
    proxies = _get(client, "/v1/proxies")["items"]
    window = args.window
    if args.what in ("service", "svc"):
        service = _get(client, f"/v1/resources/services/{ns}/{args.name}")
        selector = service["spec"].get("selector") or {}
        workloads = [
            w
            for w in _get(client, "/v1/resources/workloads", namespace=ns)["items"]
            if _selects(selector, w["metadata"].get("labels") or {})
        ]
        stats = _get(client, "/v1/stats/services", namespace=ns, name=args.name, window=window)
        edges = _get(client, "/v1/stats/edges", name=args.name, window=window)["items"]
        report: dict[str, Any] = {
            "kind": "Service",
            "name": f"{ns}/{args.name}",
            "selector": selector,
            "ports": service["spec"].get("ports") or [],
            "workloads": _proxy_rows(workloads, proxies, now),
            "routes": _routes_to(client, args.name, ns),
            "policies": _policies_for(
                client, ns, {args.name}, [w["metadata"].get("labels") or {} for w in workloads]
            ),
            "window": window,
            "metrics": (stats["items"] or [None])[0],
            "edges": edges,
        }
    else:
        workload = _get(client, f"/v1/resources/workloads/{ns}/{args.name}")
        labels = workload["metadata"].get("labels") or {}
        services = [
            s
            for s in _get(client, "/v1/resources/services", namespace=ns)["items"]
            if _selects(s["spec"].get("selector") or {}, labels)
        ]
        names = {s["metadata"]["name"] for s in services}
        report = {
            "kind": "Workload",
            "name": f"{ns}/{args.name}",
            "labels": labels,
            "serviceAccount": workload["spec"].get("serviceAccount", "default"),
            "services": sorted(names),
            "conditions": (workload.get("status") or {}).get("conditions") or [],
            "proxy": _proxy_rows([workload], proxies, now)[0],
            "policies": _policies_for(client, ns, names, [labels]),
        }
    if emit(args, report):
        return 0
    print_report(report)
    return 0


def print_report(report: dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    w = out.write
    w(f"{report['kind']} {report['name']}\n")
    if report["kind"] == "Service":
        w(f"  selector: {_selector({'spec': {'selector': report['selector']}})}\n")
        ports = ", ".join(
            f"{p.get('name', '-')} {p['port']}→{p.get('targetPort', p['port'])}"
            + (f" ({p['appProtocol']})" if p.get("appProtocol") else "")
            for p in report["ports"]
        )
        w(f"  ports: {ports or '<none>'}\n")
        w(f"\nWorkloads ({len(report['workloads'])}):\n")
        if report["workloads"]:
            _proxy_table(report["workloads"], out)
        else:
            w("  none selected: calls to it get 503 no endpoints\n")
    else:
        labels = ",".join(f"{k}={v}" for k, v in sorted(report["labels"].items()))
        w(f"  labels: {labels or '<none>'}\n")
        w(f"  service account: {report['serviceAccount']}\n")
        w(f"  services: {', '.join(report['services']) or '<none>'}\n")
        for cond in report["conditions"]:
            w(
                f"  condition {cond.get('type')}={cond.get('status')}"
                + (f": {cond['message']}" if cond.get("message") else "")
                + "\n"
            )
        w("\nProxy:\n")
        _proxy_table([report["proxy"]], out)
        if report["proxy"].get("identity"):
            w(f"  identity: {report['proxy']['identity']}\n")
    if report["kind"] == "Service":
        w("\nRoutes to it:\n")
        if not report["routes"]:
            w("  none: calls go to its workloads, balanced\n")
        for r in report["routes"]:
            port = f" port {r['port']}" if r.get("port") else ""
            w(f"  {r['kind']} {r['name']} ({r['role']}{port}): {r['rules']} rules, {r['status']}\n")
    w("\nPolicies:\n")
    if not report["policies"]:
        w("  none\n")
    for pol in report["policies"]:
        w(f"  {pol['kind']} {pol['name']} → {pol['targets']}: {pol['settings'] or '-'}\n")
    if report["kind"] == "Service":
        w(f"\nGolden metrics, last {report['window']} (`gossamer stat -o wide`):\n")
        m = report["metrics"]
        if m is None or not m.get("requests"):
            w("  no requests in the window\n")
        else:
            table(
                ["", *METRIC_HEADERS, *RETRY_HEADERS],
                [["", *metric_cells(m), *retry_cells(m)]],
                out,
            )
        if report["edges"]:
            w("\nCalls (`gossamer edges -o wide`):\n")
            table(
                ["", "SRC", "DST", *METRIC_HEADERS, *RETRY_HEADERS],
                [
                    [
                        "",
                        f"{e['src_name']}.{e['src_namespace']}",
                        f"{e['name']}.{e['namespace']}",
                        *metric_cells(e),
                        *retry_cells(e),
                    ]
                    for e in report["edges"]
                ],
                out,
            )


def _proxy_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    table(
        ["", "WORKLOAD", "ADDRESS", "READY", "PROXY", "SNAPSHOT", "CERT-LEFT"],
        [
            [
                "",
                r["workload"],
                r["address"],
                "yes" if r["ready"] else "no",
                "connected" if r["connected"] else "disconnected",
                ("up to date " if r["upToDate"] else "behind ") + (r["snapshot"] or "-")
                if r["connected"]
                else "-",
                duration(r["certificateLeftSeconds"])
                if r["certificateLeftSeconds"] is not None
                else "-",
            ]
            for r in rows
        ],
        out,
    )


def proxy_config(args: argparse.Namespace) -> int:
    name, _, namespace = args.workload.partition(".")
    namespace = namespace or args.namespace
    client = client_from(args)
    config = _get(client, f"/v1/proxies/{namespace}/{name}/config")
    if emit(args, config):
        return 0
    snapshot = config.get("snapshot") or {}
    w = sys.stdout.write
    w(f"proxy of {namespace}/{name}\n")
    for listener, address in (config.get("addresses") or {}).items():
        if isinstance(address, list) and len(address) == 2:  # [host, port]
            address = f"{address[0]}:{address[1]}"
        if address and not isinstance(address, dict):
            w(f"  {listener}: {address}\n")
    w(f"  ready: {'yes' if config.get('ready') else 'no'}")
    reasons = config.get("not_ready_reasons") or []
    w(f" ({'; '.join(reasons)})\n" if reasons else "\n")
    cert = config.get("certificate") or {}
    w(f"  certificate until: {cert.get('not_after', '-')}\n")
    w(f"  snapshot: {snapshot.get('version', '-')}\n")
    services = snapshot.get("services") or []
    if services:
        w("\n")
        table(
            ["SERVICE", "PORT", "ENDPOINTS"],
            [
                [
                    f"{s.get('name')}.{s.get('namespace')}",
                    p.get("port"),
                    len(p.get("endpoints") or ()),
                ]
                for s in services
                for p in s.get("ports") or ()
            ],
        )
    return 0
