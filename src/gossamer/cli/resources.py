"""`gossamer apply`, `gossamer get`, `gossamer delete`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from gossamer.cli.client import ApiError
from gossamer.cli.common import add_output_flag, add_server_flags, client_from, emit, fail
from gossamer.cli.output import age, table
from gossamer.errors import InvalidResource
from gossamer.resources import KINDS, parse_documents, resolve_kind

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
    p.add_argument(
        "--no-analyze",
        action="store_true",
        help="skip the warnings about what was applied but does nothing (`gossamer analyze`)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="apply a TrafficControl that refuses every call from, or to, the whole mesh "
        "(refused without it)",
    )
    add_output_flag(p)
    add_server_flags(p)
    p.set_defaults(func=apply)

    p = sub.add_parser(
        "get",
        help="show objects of a kind",
        description=f"List objects of KIND, or show one by NAME. Kinds: {kinds_help()}. "
        "Plural names and Kind.group work too (services, httproutes.gateway.networking.k8s.io). "
        "-o wide adds labels and, for policies, their full settings.",
    )
    p.add_argument("kind", help="the kind: " + kinds_help())
    p.add_argument("name", nargs="?", help="one object's name")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across namespaces")
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="after the list, print a line for each change (added, modified, deleted) "
        "until Ctrl-C; with -o json or yaml, one JSON object per change",
    )
    add_output_flag(p, wide=True)
    add_server_flags(p)
    p.set_defaults(func=get)

    p = sub.add_parser(
        "delete",
        help="delete an object, or every object in a file",
        description="Delete KIND NAME, or (with -f) every object FILE names, as `kubectl "
        "delete -f` does. Kinds: " + kinds_help() + ".",
    )
    p.add_argument("kind", nargs="?", help="the kind: " + kinds_help())
    p.add_argument("name", nargs="?", help="the object's name")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE",
        help="delete the objects in FILE (YAML/JSON, - for standard input; repeatable)",
    )
    p.add_argument(
        "--ignore-not-found", action="store_true", help="an object already gone is not an error"
    )
    add_server_flags(p)
    p.set_defaults(func=delete)


def kinds_help() -> str:
    """Every kind `get` and `delete` take, with its short name: from the one registry."""
    return ", ".join(
        info.kind.lower() + (f" ({'/'.join(info.short_names)})" if info.short_names else "")
        for info in KINDS.values()
    )


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
    return apply_objects(args, docs, analyze=not args.no_analyze, force=args.force)


def apply_objects(
    args: argparse.Namespace,
    docs: list[dict[str, Any]],
    *,
    analyze: bool = True,
    force: bool = False,
) -> int:
    """POST `docs` to /v1/apply (all or nothing) and report as `gossamer apply` does.
    `force`: also a TrafficControl that refuses every call of the mesh on one side."""
    import json

    client = client_from(args)
    try:
        result = client.request(
            "POST",
            "/v1/apply",
            body=json.dumps({"kind": "List", "items": docs}).encode(),
            query={"force": "true"} if force else None,
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
    if emit(args, result):
        return 0
    for item in result["items"]:
        print(f"{item['kind'].lower()}/{item['name']} ({item['namespace']}) {item['action']}")
    if analyze:
        from gossamer.cli.analyze import warn_about

        warn_about(docs, client)  # stored all the same: it is valid, only inert
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


def _targets(obj: dict[str, Any]) -> str:
    """What a policy applies to: its targetRefs, or its workload selector, or all."""
    spec = obj.get("spec") or {}
    refs = spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
    if refs:
        return ",".join(f"{r.get('kind', 'Service')}/{r['name']}" for r in refs)
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    if sel:
        return ",".join(f"{k}={v}" for k, v in sorted(sel.items()))
    return "<namespace>"


def _settings(obj: dict[str, Any], wide: bool) -> str:
    """A policy's own settings on one line, `attempts=2,backoff.baseInterval=25ms`
    (`-o wide`: all of them, else the first 60 characters)."""
    spec = {
        k: v
        for k, v in (obj.get("spec") or {}).items()
        if k not in ("targetRefs", "targetRef", "selector")
    }
    text = ",".join(_flat(spec))
    return text if wide or len(text) <= 60 else text[:59] + "…"


def _flat(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flat(v, f"{prefix}{k}.")]
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return [f"{prefix[:-1]}={'|'.join(str(v) for v in value)}"]
    if isinstance(value, list):
        return [kv for i, v in enumerate(value) for kv in _flat(v, f"{prefix[:-1]}[{i}].")]
    return [f"{prefix[:-1]}={value}"]


def _labels(obj: dict[str, Any]) -> str:
    labels = obj["metadata"].get("labels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


POLICY_KINDS = (
    "AuthorizationPolicy",
    "MeshPolicy",
    "RetryPolicy",
    "OutlierPolicy",
    "CircuitBreakerPolicy",
    "FaultPolicy",
)


def print_table(
    kind: str,
    items: list[dict[str, Any]],
    all_namespaces: bool,
    now: datetime | None = None,
    out: TextIO | None = None,
    wide: bool = False,
) -> None:
    """kubectl's table for `kind`; `wide` adds LABELS (and a policy's whole settings)."""
    table(*table_rows(kind, items, all_namespaces, now, wide), out)


def table_rows(
    kind: str,
    items: list[dict[str, Any]],
    all_namespaces: bool,
    now: datetime | None = None,
    wide: bool = False,
) -> tuple[list[str], list[list[object]]]:
    """The headers and rows of `print_table` (and of `get -w`'s lines)."""
    if kind in POLICY_KINDS:
        headers = ["NAME", "TARGETS", "SETTINGS", "AGE"]

        def row(o: dict[str, Any], now: datetime | None) -> list[object]:
            return [
                o["metadata"]["name"],
                _targets(o),
                _settings(o, wide),
                age(o["metadata"].get("creationTimestamp"), now),
            ]
    else:
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
    if wide:
        headers = [*headers, "LABELS"]
        rows = [[*r, _labels(o)] for o, r in zip(items, rows, strict=True)]
    if all_namespaces:
        headers = ["NAMESPACE", *headers]
        rows = [[o["metadata"]["namespace"], *r] for o, r in zip(items, rows, strict=True)]
    return headers, rows


def _kind(name: str) -> tuple[str, str]:
    try:
        info = resolve_kind(name)
    except (KeyError, InvalidResource) as err:
        fail(str(err).strip("'\""), hint="see `gossamer get --help` for the kinds")
    return info.kind, info.plural


def get(args: argparse.Namespace) -> int:
    kind, plural = _kind(args.kind)
    client = client_from(args)
    # -w: the watch opens first, so a change made while the list is read is not missed
    # (it may show twice: in the list and as an event).
    try:
        events = client.stream("/v1/watch", {"kind": kind}) if args.watch else None
    except ApiError as err:
        fail(err.message)
    try:
        if args.name:
            obj = client.get(f"/v1/resources/{plural}/{args.namespace}/{args.name}")
            items = [obj]
        else:
            query = {} if args.all_namespaces else {"namespace": args.namespace}
            items = client.get(f"/v1/resources/{plural}", **query)["items"]
    except ApiError as err:
        fail(err.message)
    listed = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
    if emit(args, listed):
        pass  # JSON or YAML printed
    elif not items:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"No {plural} found in {where}.", file=sys.stderr)
    else:
        print_table(kind, items, args.all_namespaces, wide=args.output == "wide")
    if events is not None:
        sys.stdout.flush()
        return watch(args, kind, events, client.server)
    return 0


def watch(args: argparse.Namespace, kind: str, events: Iterator[Any], server: str) -> int:
    """One line per change, until Ctrl-C; the control plane ending the stream is an
    error (exit 1), as it is for `tap`."""
    try:
        for event in events:
            if event.get("type") == "ERROR":
                fail(str(event.get("message")))
            obj = event["object"]
            meta = obj["metadata"]
            if not args.all_namespaces and meta["namespace"] != args.namespace:
                continue
            if args.name and meta["name"] != args.name:
                continue
            if args.output in ("json", "yaml"):
                import json

                print(json.dumps({"type": event["type"], "object": obj}), flush=True)
                continue
            _, [row] = table_rows(kind, [obj], args.all_namespaces, wide=args.output == "wide")
            print("  ".join([event["type"].lower(), *(str(c) for c in row)]), flush=True)
    except ApiError as err:
        fail(err.message)
    fail(f"the control plane at {server} ended the watch; is it still running?")


def delete(args: argparse.Namespace) -> int:
    """Delete each object named; exit 1 if any could not be (the rest are still deleted,
    as `kubectl delete -f` does: a delete cannot be all or nothing across objects)."""
    targets: list[tuple[str, str, str, str]] = []  # kind, plural, namespace, name
    if args.filename:
        if args.kind or args.name:
            fail("give KIND NAME or -f FILE, not both")
        try:
            docs = [d for src in args.filename for d in parse_documents(_read(src), source=src)]
        except InvalidResource as err:
            fail(f"{err}", hint="fix the file; nothing was deleted")
        for doc in docs:
            kind, plural = _kind(str(doc.get("kind", "")))
            meta = doc.get("metadata") or {}
            if not meta.get("name"):
                fail(f"a {kind} in the file has no metadata.name; nothing was deleted")
            targets.append((kind, plural, meta.get("namespace") or args.namespace, meta["name"]))
    elif args.kind and args.name:
        kind, plural = _kind(args.kind)
        targets.append((kind, plural, args.namespace, args.name))
    else:
        fail("what to delete? KIND NAME, or -f FILE")
    client = client_from(args)
    failed = 0
    for kind, plural, namespace, name in targets:
        try:
            client.request("DELETE", f"/v1/resources/{plural}/{namespace}/{name}")
        except ApiError as err:
            if err.status == 404 and args.ignore_not_found:
                continue
            print(f"error: {kind.lower()}/{name} ({namespace}): {err.message}", file=sys.stderr)
            failed += 1
            continue
        print(f"{kind.lower()}/{name} ({namespace}) deleted")
    return 1 if failed else 0
