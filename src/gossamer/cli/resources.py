"""`gossamer apply`, `gossamer get`, `gossamer delete`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from gossamer.cli.client import ApiError
from gossamer.cli.common import add_output_flag, add_server_flags, client_from, fail
from gossamer.cli.output import age, dump, table
from gossamer.errors import InvalidResource
from gossamer.resources import parse_documents, resolve_kind

Row = Callable[[dict[str, Any], datetime | None], list[object]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "apply",
        help="create or update objects from YAML/JSON (all or nothing)",
        description="Validate and store every object in FILE (multi-document YAML or JSON). "
        "If any object is invalid, nothing is stored.",
    )
    p.add_argument(
        "-f",
        "--filename",
        required=True,
        action="append",
        metavar="FILE",
        help="file to apply, or - for standard input (repeatable)",
    )
    add_output_flag(p, choices=("text", "json"), default="text")
    add_server_flags(p)
    p.set_defaults(func=apply)

    p = sub.add_parser(
        "get",
        help="show objects of a kind",
        description="List objects of KIND (service, workload, httproute; plural and short "
        "names work), or show one by NAME.",
    )
    p.add_argument("kind", help="service|svc, workload|wl, httproute")
    p.add_argument("name", nargs="?", help="one object's name")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across namespaces")
    add_output_flag(p, choices=("table", "yaml", "json"), default="table")
    add_server_flags(p)
    p.set_defaults(func=get)

    p = sub.add_parser("delete", help="delete an object", description="Delete KIND NAME.")
    p.add_argument("kind", help="service|svc, workload|wl, httproute")
    p.add_argument("name", help="the object's name")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    add_server_flags(p)
    p.set_defaults(func=delete)


def _read(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text()
    except OSError as err:
        fail(f"cannot read {source}: {err.strerror}")


def apply(args: argparse.Namespace) -> int:
    texts = [(src, _read(src)) for src in args.filename]
    # Parse here too, so a YAML syntax error names the file and the document.
    try:
        docs = [doc for src, text in texts for doc in parse_documents(text, source=src)]
    except InvalidResource as err:
        fail(f"{err}", hint="fix the file; nothing was applied")
    if not docs:
        fail("no objects found in the input; nothing was applied")
    import json

    client = client_from(args)
    try:
        result = client.request(
            "POST", "/v1/apply", body=json.dumps({"kind": "List", "items": docs}).encode()
        )
    except ApiError as err:
        if err.details:
            for d in err.details:
                where = f"{d['object']}: " if d.get("object") else ""
                print(
                    f"error: {where}{d['path']}: {d['reason']}"
                    if d.get("path")
                    else f"error: {where}{d['reason']}",
                    file=sys.stderr,
                )
            print("nothing was applied", file=sys.stderr)
            return 1
        fail(err.message, hint="nothing was applied")
    if args.output == "json":
        dump(result, "json")
        return 0
    for item in result["items"]:
        print(f"{item['kind'].lower()}/{item['name']} ({item['namespace']}) {item['action']}")
    return 0


def _ports_service(obj: dict[str, Any]) -> str:
    out = []
    for p in obj["spec"].get("ports", []):
        target = p.get("targetPort", p["port"])
        s = f"{p['port']}" if target == p["port"] else f"{p['port']}→{target}"
        out.append(f"{p['name']}:{s}" if p.get("name") else s)
    return ",".join(out)


def _selector(obj: dict[str, Any]) -> str:
    sel = obj["spec"].get("selector") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "<none>"


def _ports_workload(obj: dict[str, Any]) -> str:
    out = []
    for p in obj["spec"].get("ports", []):
        app = p.get("appPort", p["port"])
        s = f"{p['port']}" if app == p["port"] else f"{p['port']}→{app}"
        out.append(f"{p['name']}:{s}" if p.get("name") else s)
    return ",".join(out) or "<none>"


def _parents(obj: dict[str, Any]) -> str:
    refs = obj["spec"].get("parentRefs") or []
    out = []
    for r in refs:
        s = f"{r.get('kind', 'Gateway')}/{r['name']}"
        if r.get("port"):
            s += f":{r['port']}"
        out.append(s)
    return ",".join(out) or "<none>"


COLUMNS: dict[str, tuple[list[str], Row]] = {
    "Service": (
        ["NAME", "SELECTOR", "PORTS", "AGE"],
        lambda o, now: [
            o["metadata"]["name"],
            _selector(o),
            _ports_service(o),
            age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "Workload": (
        ["NAME", "ADDRESS", "INBOUND", "SERVICE-ACCOUNT", "PORTS", "AGE"],
        lambda o, now: [
            o["metadata"]["name"],
            o["spec"]["address"],
            o["spec"]["inboundPort"],
            o["spec"].get("serviceAccount", "default"),
            _ports_workload(o),
            age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "HTTPRoute": (
        ["NAME", "PARENTS", "HOSTNAMES", "RULES", "AGE"],
        lambda o, now: [
            o["metadata"]["name"],
            _parents(o),
            ",".join(o["spec"].get("hostnames") or []) or "*",
            len(o["spec"].get("rules") or []),
            age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "GRPCRoute": (
        ["NAME", "PARENTS", "HOSTNAMES", "RULES", "AGE"],
        lambda o, now: [
            o["metadata"]["name"],
            _parents(o),
            ",".join(o["spec"].get("hostnames") or []) or "*",
            len(o["spec"].get("rules") or []),
            age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
}


def print_table(
    kind: str,
    items: list[dict[str, Any]],
    all_namespaces: bool,
    now: datetime | None = None,
    out: TextIO = sys.stdout,
) -> None:
    headers, row = COLUMNS.get(
        kind,
        (
            ["NAME", "AGE"],
            lambda o, now: [
                o["metadata"]["name"],
                age(o["metadata"].get("creationTimestamp"), now),
            ],
        ),
    )
    rows = [row(o, now) for o in items]
    if all_namespaces:
        headers = ["NAMESPACE", *headers]
        rows = [[o["metadata"]["namespace"], *r] for o, r in zip(items, rows, strict=True)]
    table(headers, rows, out)


def _kind(name: str) -> tuple[str, str]:
    try:
        info = resolve_kind(name)
    except (KeyError, InvalidResource) as err:
        fail(str(err).strip("'\""), hint="see `gossamer get --help` for the kinds")
    return info.kind, info.plural


def get(args: argparse.Namespace) -> int:
    kind, plural = _kind(args.kind)
    client = client_from(args)
    try:
        if args.name:
            obj = client.get(f"/v1/resources/{plural}/{args.namespace}/{args.name}")
            items = [obj]
        else:
            query = {} if args.all_namespaces else {"namespace": args.namespace}
            items = client.get(f"/v1/resources/{plural}", **query)["items"]
    except ApiError as err:
        fail(err.message)
    if args.output == "json":
        dump(
            items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}, "json"
        )
    elif args.output == "yaml":
        dump(
            items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}, "yaml"
        )
    elif not items:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"No {plural} found in {where}.", file=sys.stderr)
    else:
        print_table(kind, items, args.all_namespaces)
    return 0


def delete(args: argparse.Namespace) -> int:
    kind, plural = _kind(args.kind)
    client = client_from(args)
    try:
        client.request("DELETE", f"/v1/resources/{plural}/{args.namespace}/{args.name}")
    except ApiError as err:
        fail(err.message)
    print(f"{kind.lower()}/{args.name} ({args.namespace}) deleted")
    return 0
