"""`gossamer authz explain`: would this call be allowed, and which policy and rule decide?

It reads the policies, services and workloads from the control plane and decides with
the code the proxy runs: `security_for` picks the policies that apply to each workload
behind the service (as translation does for its snapshot), `compile_security` and
`Authorizer.check` decide (as the inbound side does per request).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from gossamer.authz import Request, compile_security, principal_of
from gossamer.cli.analyze import is_principal, principal_hint
from gossamer.cli.client import ApiError
from gossamer.cli.common import add_output_flag, add_server_flags, client_from, emit, fail
from gossamer.cli.output import rule_ref
from gossamer.translate.authz import SecurityIndex, security_for

__all__ = ["explain", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "authz",
        help="authorization: explain what the policies decide",
        description="Inspect authorization (AuthorizationPolicy, MeshPolicy).",
    )
    asub = p.add_subparsers(dest="authz_command", required=True, metavar="COMMAND")
    e = asub.add_parser(
        "explain",
        help="say whether a call would be allowed, and which policy and rule decide",
        description="Say whether a call from PRINCIPAL to SERVICE would be allowed, and which "
        "policy and rule decide, for each workload behind the service — computed by the "
        "same code the proxy runs. Exits 0 when every workload allows the call, 1 when any "
        "would deny it.",
    )
    e.add_argument(
        "--from",
        dest="source",
        metavar="PRINCIPAL",
        help="the caller: TRUST_DOMAIN/ns/NS/sa/SA or its spiffe:// URI; leave out for a "
        "plaintext client with no mesh identity",
    )
    e.add_argument(
        "--to",
        required=True,
        metavar="SERVICE[.NS][:PORT]",
        help="the service called (namespace default: default; port default: its first port)",
    )
    e.add_argument("-X", "--method", default="GET", help="HTTP method (default: GET)")
    e.add_argument("--path", default="/", help="request path (default: /)")
    e.add_argument("--host", help="Host header (default: SERVICE.NS)")
    e.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a request header (repeatable)",
    )
    e.add_argument(
        "--source-ip", default="127.0.0.1", help="the caller's address (default: 127.0.0.1)"
    )
    e.add_argument("--tcp", action="store_true", help="an opaque TCP connection rather than HTTP")
    add_output_flag(e)
    add_server_flags(e)
    e.set_defaults(func=explain)


def _target(text: str) -> tuple[str, str, int | None]:
    host, _, port = text.partition(":")
    name, _, namespace = host.partition(".")
    if not name or (port and not port.isdigit()) or "." in namespace:
        fail(f"--to {text!r}: expected SERVICE[.NAMESPACE][:PORT]")
    return name, namespace or "default", int(port) if port else None


def _headers(raw: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            fail(f"-H {item!r}: expected NAME:VALUE")
        key = name.strip().lower()
        out[key] = f"{out[key]},{value.strip()}" if key in out else value.strip()
    return out


def _target_port(port: Mapping[str, Any], workload: Mapping[str, Any] | None) -> int | None:
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    for wp in (workload or {}).get("spec", {}).get("ports") or ():
        if wp.get("name") == target:
            return int(wp["port"])
    return None


def explain(args: argparse.Namespace) -> int:
    name, namespace, port_number = _target(args.to)
    client = client_from(args)
    try:
        service = client.get(f"/v1/resources/services/{namespace}/{name}")
        objects: list[dict[str, Any]] = [service]
        for plural in ("authorizationpolicies", "meshpolicies", "services", "workloads"):
            objects += client.get(f"/v1/resources/{plural}")["items"]
    except ApiError as err:
        fail(err.message)
    ports = service["spec"]["ports"]
    port = next((p for p in ports if p["port"] == port_number), None) if port_number else ports[0]
    if port is None:
        fail(f"service {name}.{namespace} has no port {port_number}")
    selector: dict[str, str] = service["spec"].get("selector") or {}
    workloads = [
        o
        for o in objects
        if o["kind"] == "Workload"
        and o["metadata"]["namespace"] == namespace
        and selector
        and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
    ]
    index = SecurityIndex.from_objects(objects)
    principal = principal_of(args.source) if args.source else None
    if principal is not None and not is_principal(principal):
        print(f"warning: --from {principal_hint(principal, namespace)}", file=sys.stderr)
    headers = _headers(args.header)
    results = []
    # With no workload registered yet, a workload the service would select is assumed.
    candidates: list[dict[str, Any] | None] = [*workloads] or [None]
    for wl in candidates:
        labels = (wl["metadata"].get("labels") or {}) if wl else selector
        target = _target_port(port, wl)
        if target is None:
            continue
        view = security_for(index, namespace, labels)
        request = Request(
            principal=principal,
            port=target,
            source_ip=args.source_ip,
            tcp=args.tcp,
            method=None if args.tcp else args.method.upper(),
            path=None if args.tcp else args.path.partition("?")[0],
            host=None if args.tcp else (args.host or f"{name}.{namespace}"),
            headers=None if args.tcp else headers,
        )
        decision = compile_security(view).check(request)
        results.append(
            {
                "workload": wl["metadata"]["name"] if wl else None,
                "port": target,
                "mtlsMode": view.mtls_mode,
                "defaultAction": view.default_action,
                "policies": [p.key for p in view.policies],
                **decision.to_dict(),
            }
        )
    if not results:
        fail(f"no workload of {name}.{namespace} has the port {port.get('targetPort')}")
    deciding = next((r for r in results if not r["allowed"]), results[0])
    report = {
        "allowed": all(r["allowed"] for r in results),
        "policy": deciding["policy"],
        "rule": deciding["rule"],
        "reason": deciding["reason"],
        "from": principal,
        "to": f"{name}.{namespace}:{port['port']}",
        "workloads": results,
    }
    if not emit(args, report):
        _print(report, args)
    return 0 if report["allowed"] else 1


def _print(report: dict[str, Any], args: argparse.Namespace) -> None:
    what = "tcp connection" if args.tcp else f"{args.method.upper()} {args.path}"
    who = report["from"] or "a plaintext client"
    print(f"{'ALLOWED' if report['allowed'] else 'DENIED'}: {what} from {who} to {report['to']}")
    for r in report["workloads"]:
        where = f"workload {r['workload']}" if r["workload"] else "(no workload registered)"
        rule = f", {rule_ref(r['rule'])}" if isinstance(r["rule"], int) else ""
        print(f"  {where} port {r['port']}: {r['reason']}{rule}")
        if r["audited"]:
            print(f"    audited by {', '.join(r['audited'])}")
        applied = ", ".join(r["policies"]) or "none"
        mode, default = r["mtlsMode"], r["defaultAction"]
        print(f"    policies applied: {applied}; mtls {mode}, default {default}")
