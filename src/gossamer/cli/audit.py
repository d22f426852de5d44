"""`gossamer audit`: who changed what, when; every certificate and join token issued."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

from gossamer.cli.client import ApiError
from gossamer.cli.common import (
    add_output_flag,
    add_server_flags,
    client_from,
    emit,
    fail,
    parse_duration,
)
from gossamer.cli.output import table

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "audit",
        help="show the audit log: changes, certificates and tokens issued",
        description="Show the control plane's audit log, oldest first: every object applied "
        "or deleted, every certificate issued and every join token created or used — who, "
        "what and when. Needs the admin token.",
    )
    p.add_argument("--kind", help="only this kind (e.g. AuthorizationPolicy, Certificate)")
    p.add_argument(
        "--action", help="only this action or action prefix (apply, delete, certificate, token)"
    )
    p.add_argument(
        "--since",
        help="only records newer than this: a duration (1h, 30m, 2d) or an ISO 8601 time",
    )
    p.add_argument(
        "--limit", type=int, default=1000, help="at most this many, the newest (default: 1000)"
    )
    add_output_flag(p)
    add_server_flags(p)
    p.set_defaults(func=audit)


def _since(text: str) -> str:
    try:
        seconds = parse_duration(text)
    except argparse.ArgumentTypeError:
        try:
            return datetime.fromisoformat(text).isoformat()
        except ValueError:
            fail(f"--since {text!r}: expected a duration (1h, 30m) or an ISO 8601 time")
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def audit(args: argparse.Namespace) -> int:
    client = client_from(args)
    query = {"limit": str(args.limit)}
    if args.kind:
        query["kind"] = args.kind
    if args.action:
        query["action"] = args.action
    if args.since:
        query["since"] = _since(args.since)
    try:
        items = client.get("/v1/audit", **query)["items"]
    except ApiError as err:
        fail(err.message)
    if emit(args, {"items": items}):
        return 0
    table(
        ["TIME", "ACTOR", "ACTION", "OBJECT", "DETAIL"],
        [
            [
                i["time"],
                i["actor"],
                i["action"],
                f"{i['kind']} {i['namespace']}/{i['name']}".strip(),
                json.dumps(i["detail"], separators=(",", ":")),
            ]
            for i in items
        ],
    )
    return 0
