"""`gossamer api-token create|list|revoke`: named API tokens with a scope."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from gossamer.cli.client import ApiError
from gossamer.cli.common import (
    add_output_flag,
    add_server_flags,
    client_from,
    emit,
    fail,
    parse_duration,
)
from gossamer.cli.output import age, table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "api-token",
        help="API tokens for the control plane (read or admin)",
        description="Manage named API tokens. A read token can read everything the API "
        "shows (needed for reads when the control plane runs with --auth-reads, and for "
        "`gossamer audit`); an admin token can also change the mesh. The control plane "
        "keeps only a hash of each; DATA_DIR/admin.token is the token named "
        "bootstrap-admin.",
    )
    tsub = p.add_subparsers(dest="api_token_command", required=True, metavar="COMMAND")

    c = tsub.add_parser(
        "create",
        help="create a token and print it (once)",
        description="Create a token NAME and print it. It is shown only now: store it "
        "somewhere safe, e.g. a file for --token-file.",
    )
    c.add_argument("name", help="a name for the token (a DNS-1123 label), e.g. grafana")
    c.add_argument(
        "--scope", choices=("read", "admin"), required=True, help="what the token may do"
    )
    c.add_argument(
        "--ttl",
        type=parse_duration,
        help="how long the token is valid, e.g. 12h, 30d (default: until revoked)",
    )
    add_output_flag(c)
    add_server_flags(c)
    c.set_defaults(func=create)

    ls = tsub.add_parser(
        "list", help="list tokens", description="Names, scopes, creation, expiry, last use."
    )
    add_output_flag(ls)
    add_server_flags(ls)
    ls.set_defaults(func=list_tokens)

    r = tsub.add_parser(
        "revoke", help="revoke a token", description="Revoke a token: refused from now on."
    )
    r.add_argument("name", help="the token's name")
    add_server_flags(r)
    r.set_defaults(func=revoke)


def _fail(err: ApiError) -> None:
    if err.details:
        fail("; ".join(f"{d['path']}: {d['reason']}" for d in err.details))
    fail(err.message)


def create(args: argparse.Namespace) -> int:
    client = client_from(args)
    body = {"name": args.name, "scope": args.scope, "ttlSeconds": args.ttl}
    try:
        result = client.request("POST", "/v1/api-tokens", body=json.dumps(body).encode())
    except ApiError as err:
        _fail(err)
    if not emit(args, result):
        print(result["token"])
    return 0


def _expiry(item: dict[str, Any], now: datetime) -> str:
    expires = item.get("expiresAt")
    if not expires:
        return "never"
    if datetime.fromisoformat(expires) <= now:
        return "expired"
    return "in " + age(now.isoformat(), datetime.fromisoformat(expires))


def list_tokens(args: argparse.Namespace) -> int:
    client = client_from(args)
    try:
        items = client.get("/v1/api-tokens")["items"]
    except ApiError as err:
        _fail(err)
    if emit(args, {"items": items}):
        return 0
    now = datetime.now(UTC)
    table(
        ["NAME", "SCOPE", "CREATED", "EXPIRES", "LAST-USED"],
        [
            [
                i["name"],
                i["scope"],
                i["createdAt"],
                _expiry(i, now),
                age(i["lastUsedAt"], now) + " ago" if i.get("lastUsedAt") else "never",
            ]
            for i in items
        ],
    )
    return 0


def revoke(args: argparse.Namespace) -> int:
    client = client_from(args)
    try:
        client.request("DELETE", "/v1/api-tokens/" + urllib.parse.quote(args.name, safe=""))
    except ApiError as err:
        _fail(err)
    print(f"api token {args.name} revoked")
    return 0
