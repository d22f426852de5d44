"""`gossamer token create`: join tokens for workloads."""

from __future__ import annotations

import argparse
import json

from gossamer.cli.client import ApiError
from gossamer.cli.common import (
    add_output_flag,
    add_server_flags,
    client_from,
    emit,
    fail,
    parse_duration,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("token", help="join tokens", description="Manage join tokens.")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    c = tsub.add_parser(
        "create",
        help="create a join token for one identity",
        description="Create a signed, expiring join token that lets one workload get a "
        "certificate for spiffe://<trust-domain>/ns/NS/sa/SA and nothing else. A token is "
        "good for one join unless --uses says more; the control plane counts uses.",
    )
    c.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    c.add_argument(
        "--service-account", default="default", help="service account (default: default)"
    )
    c.add_argument(
        "--ttl",
        type=parse_duration,
        default=3600,
        help="how long the token is valid, e.g. 30m, 1h, 2d (default: 1h)",
    )
    c.add_argument(
        "--uses",
        type=int,
        default=1,
        help="how many workloads may join with it, 1-1000 (default: 1, single use)",
    )
    add_output_flag(c)
    add_server_flags(c)
    c.set_defaults(func=create)


def create(args: argparse.Namespace) -> int:
    client = client_from(args)
    body = {
        "namespace": args.namespace,
        "serviceAccount": args.service_account,
        "ttlSeconds": args.ttl,
        "uses": args.uses,
    }
    try:
        result = client.request("POST", "/v1/tokens", body=json.dumps(body).encode())
    except ApiError as err:
        if err.details:
            fail("; ".join(f"{d['path']}: {d['reason']}" for d in err.details))
        fail(err.message)
    if not emit(args, result):
        print(result["token"])
    return 0
