"""`gossamer tap`: each request to or from a service's proxies, as it happens."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from gossamer.cli.client import ApiError, Client
from gossamer.cli.common import add_output_flag, add_server_flags, client_from, duration_arg, fail


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tap",
        help="watch a service's requests live: source, destination, path, status, latency",
        description="Stream each request that a service's proxies carry, in both directions, "
        "as it ends: source and destination (workload, service, identity), method, path, "
        "status and latency. The control plane opens a tap on each proxy for as long as "
        "this runs; a proxy nobody taps spends nothing on it. Needs a read token "
        "(--token-file or $GOSSAMER_TOKEN): paths may carry secrets.",
    )
    p.add_argument("service", help="the service whose proxies to tap")
    tap_flags(p)
    p.add_argument(
        "--direction", choices=("inbound", "outbound"), help="only requests to it, or from it"
    )
    p.add_argument("--max", type=int, default=0, help="stop after this many requests")
    p.add_argument("--duration", type=duration_arg(), help="stop after this long, e.g. 30s, 5m")
    add_output_flag(p, structured=("json",))
    add_server_flags(p)
    p.set_defaults(func=tap)


def tap_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("--path", help="only requests whose path starts with this")
    p.add_argument("-X", "--method", help="only requests with this method (GET, POST, ...)")


def tap_query(args: argparse.Namespace, name: str | None, **extra: str | None) -> dict[str, str]:
    query: dict[str, str | None] = {
        "namespace": args.namespace,
        "name": name,
        "path": args.path,
        "method": args.method.upper() if args.method else None,
        **extra,
    }
    if args.path and not args.path.startswith("/"):
        fail(f"--path must start with /, not {args.path!r}")
    return {k: v for k, v in query.items() if v}


def open_tap(
    client: Client, query: dict[str, str], duration: float | None = None, limit: int = 0
) -> Iterator[dict[str, Any]]:
    """Requests from the tap, after saying on stderr which proxies are tapped.

    The control plane ends the stream when `duration` has passed or `limit` requests
    came; a stream that ends before either (the control plane stopped) is an error,
    not a quiet exit 0.
    """
    started = time.monotonic()
    seen = 0
    try:
        for event in client.stream("/v1/tap", query):
            kind = event.get("type")
            if kind == "request":
                seen += 1
                yield event
            elif kind == "error":
                print(
                    f"warning: {event.get('namespace')}/{event.get('workload')}: "
                    f"{event.get('message')}",
                    file=sys.stderr,
                )
            elif kind == "started":
                workloads = event.get("workloads") or []
                if not workloads:
                    fail("no proxy could be tapped")
                print(f"tapping {', '.join(workloads)}", file=sys.stderr, flush=True)
    except ApiError as err:
        fail(err.message)
    if (limit and seen >= limit) or (duration and time.monotonic() - started >= duration):
        return
    fail(
        f"the control plane at {client.server} ended the tap early; is it still running?",
        hint="`gossamer check` says whether it answers",
    )


def _who(where: dict[str, Any]) -> str:
    name = where.get("workload") or where.get("service") or "unknown"
    return f"{name}.{where.get('namespace') or 'unknown'}"


def line_of(event: dict[str, Any]) -> str:
    """One request on one line, like Linkerd's tap: who → whom, what, how it went."""
    src, dst = event["source"], event["destination"]
    identity = src.get("identity") if event["direction"] == "inbound" else dst.get("identity")
    parts = [
        event["time"],
        "in " if event["direction"] == "inbound" else "out",
        f"src={_who(src)}",
        f"dst={_who(dst)}",
        f":method={event['method']}",
        f":authority={event.get('authority') or '-'}",
        f":path={event['path']}",
        f":status={event['status']}",
        f"latency={event['latency_ms']:g}ms",
        f"tls={'true' if event.get('tls') else 'false'}",
    ]
    if event.get("grpc_status") is not None:  # a gRPC call's own status, beside HTTP's
        parts.append(f"grpc-status={event['grpc_status']}")
    if identity:
        parts.append(f"id={identity}")
    if event.get("trace_id"):
        parts.append(f"trace={event['trace_id']}")
    return " ".join(parts)


def tap(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.max < 0:
        fail("--max must be 0 (no limit) or more")
    client = client_from(args)
    query = tap_query(
        args,
        args.service,
        direction=args.direction,
        max=str(args.max) if args.max else None,
        duration=f"{args.duration}s" if args.duration else None,
    )
    for event in open_tap(client, query, args.duration, args.max):
        out.write((json.dumps(event) if args.output == "json" else line_of(event)) + "\n")
        out.flush()
    return 0
