"""`gossamer stat`, `gossamer edges` and `gossamer dashboard`: golden metrics the control
plane keeps from scraping every proxy."""

from __future__ import annotations

import argparse
import contextlib
import sys
import webbrowser
from collections.abc import Sequence
from typing import Any, TextIO

from gossamer.cli.client import ApiError, Client
from gossamer.cli.common import (
    add_output_flag,
    add_server_flags,
    client_from,
    emit,
    fail,
)
from gossamer.cli.output import table

METRIC_HEADERS = ("SUCCESS", "RPS", "P50", "P95", "P99", "REQUESTS", "STALE")
# -o wide: what retries did (decision 0082). EFFECTIVE: what callers got, once per call;
# ACTUAL: every try; RETRIES: the tries sent again. "-" where it is not known.
RETRY_HEADERS = ("EFFECTIVE", "ACTUAL", "RETRIES")


def add_window_flag(p: argparse.ArgumentParser) -> None:
    """`--window`, the same for every command that shows golden metrics."""
    p.add_argument(
        "-w",
        "--window",
        default="1m",
        help="how far back to look, e.g. 30s, 1m, 15m (default: 1m; at most 15m)",
    )


def _namespace_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stat",
        help="golden metrics per service (or per route): success rate, RPS, latency",
        description="Success rate, requests per second and p50/p95/p99 latency of each "
        "service over the last WINDOW, as its own proxies counted them (every call that "
        "reached it). STALE means one of its proxies did not answer the control plane's "
        "last scrape, so the numbers may be short. With --routes: per HTTPRoute or "
        "GRPCRoute and the service its calls went to, as callers counted the requests "
        "the route's rules matched (the same as `gossamer routes --stats`).",
    )
    p.add_argument("name", nargs="?", help="one service (or route, with --routes)")
    p.add_argument("--routes", action="store_true", help="per route instead of per service")
    _namespace_flags(p)
    add_window_flag(p)
    add_output_flag(p, wide=True)
    add_server_flags(p)
    p.set_defaults(func=stat)

    p = sub.add_parser(
        "edges",
        help="golden metrics per caller → callee pair",
        description="Success rate, RPS and latency of the calls from each service to each "
        "other, as the callers' proxies counted them (so failures before a call left, "
        "like no endpoints, count too). With NAME, only the edges to or from it.",
    )
    p.add_argument("name", nargs="?", help="only edges to or from this service")
    _namespace_flags(p)
    add_window_flag(p)
    add_output_flag(p, wide=True)
    add_server_flags(p)
    p.set_defaults(func=edges)

    p = sub.add_parser(
        "dashboard",
        help="print (and open) the web dashboard's URL",
        description="The control plane serves the dashboard at the root of its API address. "
        "It only reads unless you give it the admin token.",
    )
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    add_server_flags(p)
    p.set_defaults(func=dashboard)


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "-" if v is None else format(v, spec) + suffix


def metric_cells(row: dict[str, Any]) -> list[object]:
    rate = row.get("success_rate")
    return [
        _fmt(None if rate is None else rate * 100, ".2f", "%"),
        _fmt(row.get("rps"), ".1f"),
        _fmt(row.get("p50_ms"), ".1f", "ms"),
        _fmt(row.get("p95_ms"), ".1f", "ms"),
        _fmt(row.get("p99_ms"), ".1f", "ms"),
        row.get("requests", 0),
        "yes" if row.get("stale") else "no",
    ]


def retry_cells(row: dict[str, Any]) -> list[object]:
    def pct(v: float | None) -> str:
        return _fmt(None if v is None else v * 100, ".2f", "%")

    retries = row.get("retries")
    return [
        pct(row.get("effective_success_rate")),
        pct(row.get("actual_success_rate")),
        "-" if retries is None else retries,
    ]


def _with_retries(
    headers: list[str], rows: list[list[object]], data: Sequence[dict[str, Any]], wide: bool
) -> tuple[list[str], list[list[object]]]:
    if not wide:
        return headers, rows
    return [*headers, *RETRY_HEADERS], [
        [*r, *retry_cells(d)] for r, d in zip(rows, data, strict=True)
    ]


def _retry_note(data: Sequence[dict[str, Any]], wide: bool, out: TextIO) -> None:
    """Under a narrow table: retries happened, so SUCCESS is only half the story."""
    retries = sum(d.get("retries") or 0 for d in data)
    if retries and not wide:
        out.write(
            f"{retries} retries in the window: -o wide shows EFFECTIVE (what callers got) "
            "and ACTUAL (every try) success\n"
        )


def print_services(
    rows: Sequence[dict[str, Any]],
    all_namespaces: bool,
    out: TextIO | None = None,
    wide: bool = False,
) -> None:
    out = out or sys.stdout
    lead = ["NAMESPACE", "NAME"] if all_namespaces else ["NAME"]
    table(
        *_with_retries(
            [*lead, *METRIC_HEADERS],
            [
                [*([r["namespace"]] if all_namespaces else []), r["name"], *metric_cells(r)]
                for r in rows
            ],
            rows,
            wide,
        ),
        out,
    )
    _retry_note(rows, wide, out)


def print_routes(
    rows: Sequence[dict[str, Any]],
    all_namespaces: bool,
    out: TextIO | None = None,
    wide: bool = False,
) -> None:
    out = out or sys.stdout
    lead = ["NAMESPACE", "ROUTE", "SERVICE"] if all_namespaces else ["ROUTE", "SERVICE"]
    table(
        *_with_retries(
            [*lead, *METRIC_HEADERS],
            [
                [
                    *([r["namespace"]] if all_namespaces else []),
                    r["name"],
                    f"{r['service']}.{r['service_namespace']}",
                    *metric_cells(r),
                ]
                for r in rows
            ],
            rows,
            wide,
        ),
        out,
    )


def print_edges(
    rows: Sequence[dict[str, Any]], out: TextIO | None = None, wide: bool = False
) -> None:
    out = out or sys.stdout
    table(
        *_with_retries(
            ["SRC", "DST", *METRIC_HEADERS],
            [
                [
                    f"{r['src_name']}.{r['src_namespace']}",
                    f"{r['name']}.{r['namespace']}",
                    *metric_cells(r),
                ]
                for r in rows
            ],
            rows,
            wide,
        ),
        out,
    )
    _retry_note(rows, wide, out)


def _query(args: argparse.Namespace) -> dict[str, str]:
    query = {"window": args.window}
    if not args.all_namespaces:
        query["namespace"] = args.namespace
    if args.name:
        query["name"] = args.name
    return query


def _get(client: Client, path: str, query: dict[str, str]) -> dict[str, Any]:
    try:
        result: dict[str, Any] = client.get(path, **query)
    except ApiError as err:
        fail(err.message)
    return result


def stat(args: argparse.Namespace) -> int:
    if args.routes:
        return show_route_stats(args, route=args.name)
    client = client_from(args)
    rows = _get(client, "/v1/stats/services", _query(args))["items"]
    if emit(args, rows):
        return 0
    if args.name and not rows:
        fail(f"no service {args.name!r} in namespace {args.namespace!r} with metrics")
    if not rows:
        return _nothing(client, args, "services")
    print_services(rows, args.all_namespaces, wide=args.output == "wide")
    return 0


def _nothing(client: Client, args: argparse.Namespace, what: str) -> int:
    """No rows: 1 if the namespace holds no Service at all (a mistyped -n), else 0 and
    a line saying there was no traffic in the window, rather than a bare header."""
    where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
    query = {} if args.all_namespaces else {"namespace": args.namespace}
    try:
        services = client.get("/v1/resources/services", **query)["items"]
    except ApiError as err:
        fail(err.message)
    if not services:
        fail(
            f"no Service in {where}",
            hint="`gossamer get services -A` lists every namespace's services",
        )
    print(f"no {what} with traffic in {where} in the last {args.window}", file=sys.stderr)
    return 0


def show_route_stats(
    args: argparse.Namespace,
    *,
    route: str | None = None,
    service: tuple[str, str] | None = None,
) -> int:
    """Route rows for `stat --routes [ROUTE]` and `routes --stats [SERVICE]`.

    `args` has the server flags, `window`, `namespace`, `all_namespaces` and `output`.
    With `route`, only that route's rows. With `service` (name, namespace), only the
    rows of calls routes sent to that service, whatever namespace the routes are in:
    consumer routes live in their callers' namespaces.
    """
    client = client_from(args)
    query = {"window": args.window}
    if service is None and not args.all_namespaces:
        query["namespace"] = args.namespace
    if route:
        query["name"] = route
    rows: list[dict[str, Any]] = _get(client, "/v1/stats/routes", query)["items"]
    if service is not None:
        rows = [r for r in rows if (r["service"], r["service_namespace"]) == service]
    out = sys.stdout  # looked up now, not when this module was imported
    if emit(args, rows):
        return 0
    if not rows:
        if route:
            fail(f"no route {route!r} in namespace {args.namespace!r} with metrics")
        to = f" to {service[0]}.{service[1]}" if service is not None else ""
        where = "" if service is not None or args.all_namespaces else f" in {args.namespace}"
        out.write(f"no requests{to} matched a route{where} in the last {args.window}\n")
        return 0
    print_routes(rows, args.all_namespaces or service is not None, out, args.output == "wide")
    return 0


def edges(args: argparse.Namespace) -> int:
    client = client_from(args)
    rows = _get(client, "/v1/stats/edges", _query(args))["items"]
    if emit(args, rows):
        return 0
    if not rows:
        return _nothing(client, args, "calls between services")
    print_edges(rows, wide=args.output == "wide")
    return 0


def dashboard(args: argparse.Namespace) -> int:
    client = client_from(args)
    try:
        client.get("/readyz")
    except ApiError as err:
        fail(err.message)
    url = client.server + "/"
    print(url)
    if not args.no_browser and sys.stdout.isatty():
        # A machine with no browser: the printed URL is the answer.
        with contextlib.suppress(webbrowser.Error):
            webbrowser.open(url)
    return 0
