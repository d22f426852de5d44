"""`gossamer routes SERVICE`: which HTTPRoute rule a request would take, and why;
`gossamer routes --stats`: each route's golden metrics (the rows of `stat --routes`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from gossamer.cli.client import ApiError
from gossamer.cli.common import add_output_flag, add_server_flags, client_from, fail
from gossamer.cli.output import rule_ref, table
from gossamer.cli.stat import add_window_flag, show_route_stats
from gossamer.proxy.policy.routematch import Router, describe_match, why_not
from gossamer.resources import KINDS
from gossamer.translate.build import MeshView
from gossamer.translate.routes import service_routes
from gossamer.translate.routetypes import RuleSpec

_KINDS = ("Service", "HTTPRoute", "RetryPolicy")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "routes",
        help="show how requests to a service are routed, and which rule a request takes",
        description="Show the HTTPRoute rules that apply to calls to SERVICE from clients in "
        "a namespace, in the order they are tried, and which one a request with the given "
        "method, path and headers takes, and why the ones before it do not fit. "
        "Example: gossamer routes echo -n shop --path /v1 -H x-canary:1. "
        "With --stats, each route's golden metrics instead: one row per route and "
        "service its calls went to, as the callers' proxies counted the requests the "
        "route's rules matched. Example: gossamer routes --stats -n shop --window 5m",
    )
    p.add_argument(
        "service",
        nargs="?",
        help="the service, NAME or NAME.NAMESPACE (with --stats: only the calls routes "
        "sent to it; optional there)",
    )
    p.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="the service's namespace (with --stats and no SERVICE: the routes' namespace)",
    )
    p.add_argument(
        "--stats",
        action="store_true",
        help="golden metrics per route instead: success rate, RPS, p50/p95/p99 latency "
        "and requests over --window",
    )
    p.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="with --stats: routes of every namespace",
    )
    add_window_flag(p)
    add_output_flag(p, wide=True)
    p.add_argument(
        "--from",
        dest="client_namespace",
        help="the calling client's namespace (default: the service's)",
    )
    p.add_argument("--port", type=int, help="the service port (default: 80, or its only one)")
    p.add_argument("-X", "--method", default="GET", help="request method (default: GET)")
    p.add_argument("--path", default="/", help="request path and query (default: /)")
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a request header (repeatable)",
    )
    add_server_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.stats:
        service = None
        if args.service:
            name, _, namespace = args.service.partition(".")
            service = (name, namespace or args.namespace)
        return show_route_stats(args, service=service)
    if not args.service:
        fail("which SERVICE? (or --stats for golden metrics per route)")
    if args.output != "table":
        fail(
            f"-o {args.output} goes with --stats; without it the answer is a table and an "
            "explanation"
        )
    name, _, namespace = args.service.partition(".")
    namespace = namespace or args.namespace
    headers = []
    for h in args.header:
        key, sep, value = h.partition(":")
        if not sep or not key.strip():
            fail(f"header {h!r} must be NAME:VALUE")
        headers.append((key.strip(), value.strip()))
    client = client_from(args)
    objects: list[dict[str, Any]] = []
    try:
        for kind in _KINDS:
            objects += client.get(f"/v1/resources/{KINDS[kind].plural}")["items"]
    except ApiError as err:
        fail(err.message)
    mesh = MeshView.from_objects(objects, trust_domain="", trust_bundle="")
    code = explain(
        mesh,
        name,
        namespace,
        args.client_namespace or namespace,
        args.port,
        args.method.upper(),
        args.path,
        headers,
    )
    return code


def explain(
    mesh: MeshView,
    name: str,
    namespace: str,
    client_namespace: str,
    port: int | None,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    out: TextIO = sys.stdout,
) -> int:
    """Print the routing of one request (pure apart from `out`); 1 if it gets no answer."""
    svc = mesh.services.get((namespace, name))
    if svc is None:
        print(f"error: Service {namespace}/{name} does not exist", file=sys.stderr)
        return 1
    ports = [p.port for p in svc.ports]
    if port is None:
        port = 80 if 80 in ports or len(ports) != 1 else ports[0]
    if port not in ports:
        print(f"error: Service {namespace}/{name} has no port {port}", file=sys.stderr)
        return 1
    where = f"Service {namespace}/{name} port {port}, called from namespace {client_namespace}"
    found = [sr for sr in service_routes(mesh, client_namespace, svc) if sr.port == port]
    if not found:
        out.write(f"{where}: no HTTPRoute applies; requests go to the Service's endpoints.\n")
        return 0
    sr = found[0]
    kind = "consumer" if any(not r.startswith(f"{namespace}/") for r in sr.routes) else "producer"
    out.write(f"{where}: {kind} routes {', '.join(sr.routes)}\n\n")
    router: Router[str] = Router(sr, lambda service, p: f"{service}:{p}")
    rows = []
    for i, m in enumerate(router.matches):
        rows.append([i + 1, _rule(m.rule.spec), describe_match(m.spec), _backends(m.rule.spec)])
    table(["#", "RULE", "MATCH", "THEN"], rows, out)
    req_headers = [(k.encode(), v.encode()) for k, v in headers if k.lower() != "host"]
    host = next((v for k, v in headers if k.lower() == "host"), f"{name}.{namespace}")
    shown = " ".join([method, path, *(f"-H '{k}: {v}'" for k, v in headers)])
    out.write(f"\nrequest: {shown}\n")
    chosen = router.match(method.encode(), path.encode(), host.encode(), req_headers)
    for i, m in enumerate(router.matches):
        if m is chosen:
            break
        reason = why_not(m, method.encode(), path.encode(), host.encode(), req_headers)
        out.write(f"  #{i + 1} {_rule(m.rule.spec)}: no, {reason}\n")
    if chosen is None:
        out.write("  → 404: no rule matches (a request that matches no rule gets a 404)\n")
        return 1
    n = router.matches.index(chosen) + 1
    out.write(f"  #{n} {_rule(chosen.rule.spec)}: yes → {_backends(chosen.rule.spec)}\n")
    return 0


def _rule(rule: RuleSpec) -> str:
    return rule_ref(rule.index, rule.name, owner=rule.route)


def _backends(rule: RuleSpec) -> str:
    if rule.error:
        return f"500 ({rule.error})"
    if rule.redirect is not None:
        r = rule.redirect
        return f"redirect {r.status_code}" + (f" to {r.hostname}" if r.hostname else "")
    total = sum(b.weight for b in rule.backends)
    if not total:
        return "500 (every backendRef has weight 0)"
    parts = []
    for b in rule.backends:
        share = f"{100 * b.weight / total:.0f}%"
        parts.append(f"{b.service}:{b.port} {share}" + (f" (500: {b.error})" if b.error else ""))
    extra = []
    if rule.rewrite is not None:
        extra.append("rewrite")
    if rule.request_headers or rule.response_headers:
        extra.append("header edits")
    if rule.mirrors:
        extra.append("mirror to " + ",".join(m.service for m in rule.mirrors))
    if rule.timeout:
        extra.append(f"timeout {rule.timeout:g}s")
    return ", ".join(parts) + (f" [{'; '.join(extra)}]" if extra else "")
