"""`gossamer analyze`: configuration the control plane accepted that does nothing.

Validation (at the door) rejects what is malformed; this finds what is well formed
and still inert, as `istioctl analyze` does: a route whose parentRef is not a Service
in the core group (the Gateway API's default group is gateway.networking.k8s.io, so
`kind: Service` alone names nothing the mesh serves), a parent or backend Service
that does not exist, a policy that targets nothing. (A principal that is not
TRUST_DOMAIN/ns/NS/sa/SA is refused by validation; `authz explain --from`, which takes
any string, warns about one.) `gossamer apply` prints the same findings for what it
applied, as warnings; the objects are stored anyway (decision 0083).

`findings()` is pure: objects in, findings out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gossamer.cli.client import ApiError, Client
from gossamer.cli.common import add_output_flag, add_server_flags, client_from, emit, fail
from gossamer.cli.output import table

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TCPRoute")
TARGETED_KINDS = (
    "AuthorizationPolicy",
    "RetryPolicy",
    "OutlierPolicy",
    "CircuitBreakerPolicy",
    "FaultPolicy",
)
# Every kind analysis reads, by its API plural.
PLURALS = {
    "Service": "services",
    "Workload": "workloads",
    "HTTPRoute": "httproutes",
    "GRPCRoute": "grpcroutes",
    "TCPRoute": "tcproutes",
    "AuthorizationPolicy": "authorizationpolicies",
    "RetryPolicy": "retrypolicies",
    "OutlierPolicy": "outlierpolicies",
    "CircuitBreakerPolicy": "circuitbreakerpolicies",
    "FaultPolicy": "faultpolicies",
}


@dataclass(frozen=True)
class Finding:
    level: str  # "warning": it does nothing; "info": it does nothing yet
    kind: str
    namespace: str
    name: str
    path: str  # the field path, as validation errors name it
    message: str  # what is wrong and what to do

    @property
    def subject(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def is_principal(value: str) -> bool:
    """Istio's principal form, TRUST_DOMAIN/ns/NS/sa/SA, or a `*` pattern of it."""
    if value == "*" or value.startswith("*") or value.endswith("*"):
        return True
    parts = value.split("/")
    return len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" and all(parts)


def principal_hint(value: str, namespace: str = "default") -> str:
    return (
        f"{value!r} is not TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT, so no workload "
        f"has it; e.g. cluster.local/ns/{namespace}/sa/{value.rsplit('/', 1)[-1] or 'NAME'}"
    )


def _meta(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name") or ""


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def findings(objects: Iterable[Mapping[str, Any]]) -> list[Finding]:
    objs = list(objects)
    services: dict[tuple[str, str], Mapping[str, Any]] = {
        _meta(o): o for o in objs if o.get("kind") == "Service"
    }
    workloads = [o for o in objs if o.get("kind") == "Workload"]
    out: list[Finding] = []
    for obj in objs:
        kind = str(obj.get("kind"))
        ns, name = _meta(obj)
        spec = obj.get("spec") or {}

        def add(path: str, message: str, level: str = "warning") -> None:
            out.append(Finding(level, kind, ns, name, path, message))  # noqa: B023

        if kind in ROUTE_KINDS:
            for i, ref in enumerate(spec.get("parentRefs") or ()):
                where = f"spec.parentRefs[{i}]"
                if ref.get("kind", "Gateway") != "Service":
                    add(where, "a Gateway parent: the mesh serves only Service parents", "info")
                    continue
                group = ref.get("group", "gateway.networking.k8s.io")
                if group != "":
                    add(
                        f"{where}.group",
                        f'kind Service in group "{group}" names nothing; a '
                        'Service parent needs group: "" (the core group), so this route '
                        "attaches to no Service",
                    )
                    continue
                svc = services.get((ref.get("namespace") or ns, ref.get("name", "")))
                if svc is None:
                    add(
                        f"{where}.name",
                        f"Service {ref.get('namespace') or ns}/{ref.get('name')} does not "
                        "exist; the route applies to nothing until it does",
                    )
                elif ref.get("port") is not None and ref["port"] not in _ports(svc):
                    add(f"{where}.port", f"Service {ref.get('name')} has no port {ref['port']}")
            for i, rule in enumerate(spec.get("rules") or ()):
                for j, backend in enumerate(rule.get("backendRefs") or ()):
                    if backend.get("kind", "Service") != "Service" or backend.get("group", ""):
                        continue
                    bns = backend.get("namespace") or ns
                    svc = services.get((bns, backend.get("name", "")))
                    where = f"spec.rules[{i}].backendRefs[{j}]"
                    if svc is None:
                        add(
                            f"{where}.name",
                            f"Service {bns}/{backend.get('name')} does not exist; requests "
                            "this rule sends there get a 500",
                        )
                    elif backend.get("port") is not None and backend["port"] not in _ports(svc):
                        add(
                            f"{where}.port",
                            f"Service {backend.get('name')} has no port {backend['port']}; "
                            "requests this rule sends there get a 500",
                        )
        if kind in TARGETED_KINDS:
            refs = spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
            for i, ref in enumerate(refs):
                where = f"spec.targetRefs[{i}]" if spec.get("targetRefs") else "spec.targetRef"
                if ref.get("kind", "Service") == "Service" and (
                    (ref.get("namespace") or ns, ref.get("name", "")) not in services
                ):
                    add(
                        f"{where}.name",
                        f"Service {ref.get('namespace') or ns}/{ref.get('name')} does not "
                        "exist; the policy applies to nothing until it does",
                    )
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            if selector and not any(
                _meta(w)[0] == ns
                and _selects(selector, (w.get("metadata") or {}).get("labels") or {})
                for w in workloads
            ):
                add(
                    "spec.selector.matchLabels",
                    "selects no registered workload now; it applies to none until one "
                    "with these labels joins",
                    "info",
                )
    return out


def _ports(service: Mapping[str, Any]) -> set[int]:
    return {p.get("port") for p in (service.get("spec") or {}).get("ports") or ()}


def fetch_objects(client: Client) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for plural in PLURALS.values():
        objects += client.get(f"/v1/resources/{plural}")["items"]
    return objects


def _identity(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(obj.get("kind")), *_meta(obj))


def merged(stored: Sequence[dict[str, Any]], applied: Sequence[dict[str, Any]]) -> list[Any]:
    """The store's objects with `applied` over them, as the store holds them after."""
    mine = {_identity(o) for o in applied}
    return [o for o in stored if _identity(o) not in mine] + list(applied)


def warn_about(applied: Sequence[dict[str, Any]], client: Client) -> int:
    """For `apply`: print the warning findings about the objects just applied; how many."""
    try:
        everything = merged(fetch_objects(client), applied)
    except ApiError:
        return 0  # applied already; the analysis is a courtesy
    subjects = {(o.get("kind"), *_meta(o)) for o in applied}
    found = [
        f
        for f in findings(everything)
        if f.level == "warning" and (f.kind, f.namespace, f.name) in subjects
    ]
    for f in found:
        print(f"warning: {f.subject}: {f.path}: {f.message}", file=sys.stderr)
    return len(found)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "analyze",
        help="find configuration that is accepted but does nothing",
        description="Look at the mesh's objects (and FILE's, as if applied) for what is "
        "valid and still does nothing: routes that attach to no Service (a parentRef "
        'without group: ""), parents and backends that do not exist, policies that '
        "target nothing. Exits 1 if there is a warning.",
    )
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="FILE",
        help="also these objects, as if applied (- for standard input; repeatable)",
    )
    add_output_flag(p)
    add_server_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gossamer.errors import InvalidResource
    from gossamer.resources import parse_documents

    applied: list[dict[str, Any]] = []
    for src in args.filename:
        text = sys.stdin.read() if src == "-" else _read(src)
        try:
            applied += parse_documents(text, source=src)
        except InvalidResource as err:
            fail(str(err))
    client = client_from(args)
    try:
        objects = merged(fetch_objects(client), applied)
    except ApiError as err:
        fail(err.message)
    found = [f for f in findings(objects) if args.all_namespaces or f.namespace == args.namespace]
    warnings = sum(f.level == "warning" for f in found)
    if emit(args, {"items": [asdict(f) for f in found], "warnings": warnings}):
        return 1 if warnings else 0
    if not found:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"✓ nothing inert found in {where}")
        return 0
    table(
        ["LEVEL", "OBJECT", "FIELD", "WHAT"],
        [[f.level, f.subject, f.path, f.message] for f in found],
    )
    return 1 if warnings else 0


def _read(source: str) -> str:
    try:
        return Path(source).read_text()
    except OSError as err:
        fail(f"cannot read {source}: {err.strerror}")
