"""Pure translation of HTTPRoutes (GAMMA) and gossamer.dev policies for one proxy.

The Gateway API's mesh semantics (GEP-1294), as this module applies them:

- A route attaches to a Service through a parentRef `{group: "", kind: Service}`; with
  `port` it applies to that Service port only, with `sectionName` to the port of that
  name, with neither to every port.
- A route in the Service's namespace is a *producer* route and applies to every
  client. A route in another namespace is a *consumer* route and applies only to
  clients in its own namespace. A client with consumer routes for a Service uses them
  (merged) instead of the producer routes.
- `hostnames` are not used ("GAMMA implementations SHOULD NOT infer any functionality
  from the hostnames field").
- backendRefs may name Services in any namespace without a ReferenceGrant.
- Matches are ordered across all merged routes by the specification's precedence:
  Exact path, then the longest PathPrefix, then a method, then the most header
  matches, then the most query matches; ties go to the oldest route, then the first
  by "namespace/name", then the first rule and match in list order. The place of a
  RegularExpression path is left to implementations: here it ranks with PathPrefix
  by the length of its pattern, after a prefix of the same length.

No I/O, no clock: `route_conditions` gives the status a route should have, and
`build_routes` what a proxy needs, from the same reading of the spec.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gossamer.resources import validate
from gossamer.resources.grpcroute import GRPCRoute
from gossamer.resources.httproute import (
    HTTPHeaderFilter,
    HTTPPathModifier,
    HTTPRoute,
    HTTPRouteFilter,
    HTTPRouteRule,
    ParentReference,
    parse_duration,
)
from gossamer.resources.policies import (
    POLICY_KINDS,
    CircuitBreakerPolicy,
    FaultPolicy,
    OutlierPolicy,
    RetryPolicy,
)
from gossamer.resources.tcproute import TCPRoute
from gossamer.translate.grpcroutes import CompiledTCPRoute, compile_route, grpc_precedence
from gossamer.translate.routetypes import (
    BackendTarget,
    FaultSpec,
    HeaderEdit,
    HeaderMatchSpec,
    LimitsSpec,
    MatchSpec,
    MirrorSpec,
    OutlierSpec,
    PathModifierSpec,
    RedirectSpec,
    RetrySpec,
    RewriteSpec,
    RuleSpec,
    ServicePolicy,
    ServiceRoutes,
)

if TYPE_CHECKING:
    from gossamer.translate.build import MeshView, ServiceRecord

__all__ = [
    "CONTROLLER_NAME",
    "Condition",
    "ParentStatus",
    "build_policies",
    "build_routes",
    "route_conditions",
    "routes_for_client",
]

CONTROLLER_NAME = "gossamer.dev/mesh"
# The kinds that become HTTP routes (a GRPCRoute compiles to an HTTPRoute).
ROUTE_KINDS = frozenset({"HTTPRoute", "GRPCRoute", "TCPRoute"})

Policy = RetryPolicy | OutlierPolicy | CircuitBreakerPolicy | FaultPolicy


def traffic_objects(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """MeshView's `routes` and `policies`, typed, from the store's (validated) objects."""
    routes: list[HTTPRoute] = []
    policies: list[Policy] = []
    for obj in objects:
        if obj["kind"] in ROUTE_KINDS or obj["kind"] in POLICY_KINDS:
            resource = validate(obj)
            if isinstance(resource, HTTPRoute):
                routes.append(resource)
            elif isinstance(resource, GRPCRoute | TCPRoute):
                routes.append(compile_route(resource))
            elif isinstance(
                resource, RetryPolicy | OutlierPolicy | CircuitBreakerPolicy | FaultPolicy
            ):
                policies.append(resource)
    return {"routes": tuple(routes), "policies": tuple(policies)}


# --- attachment ------------------------------------------------------------------------


def _is_service(ref: ParentReference) -> bool:
    return ref.group == "" and ref.kind == "Service"


def route_key(route: HTTPRoute) -> str:
    return f"{route.metadata.namespace}/{route.metadata.name}"


def _age_order(route: HTTPRoute) -> tuple[str, str, str]:
    # Oldest first, then by "namespace/name" (RFC 3339 UTC timestamps sort as text).
    return (route.metadata.creation_timestamp or "~", route.metadata.namespace, route.metadata.name)


def _ports_of(ref: ParentReference, svc: ServiceRecord) -> list[int]:
    if ref.port is not None:
        return [p.port for p in svc.ports if p.port == ref.port]
    if ref.section_name is not None:
        return [p.port for p in svc.ports if p.name == ref.section_name]
    return [p.port for p in svc.ports]


def _regex_problems(route: HTTPRoute) -> list[str]:
    """Why the route cannot be accepted as written (reason UnsupportedValue)."""
    found = []
    for i, rule in enumerate(route.spec.rules):
        for j, match in enumerate(rule.matches):
            patterns = []
            if match.path.type == "RegularExpression":
                patterns.append(("path.value", match.path.value))
            patterns += [
                (f"headers[{k}].value", h.value)
                for k, h in enumerate(match.headers)
                if h.type == "RegularExpression"
            ]
            patterns += [
                (f"queryParams[{k}].value", q.value)
                for k, q in enumerate(match.query_params)
                if q.type == "RegularExpression"
            ]
            for where, pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    found.append(
                        f"spec.rules[{i}].matches[{j}].{where}: regular expression "
                        f"{pattern!r} does not compile: {exc}"
                    )
        # Extended features this mesh does not implement: the route is not accepted
        # (rather than served without them).
        filters = [(f"spec.rules[{i}].filters[{k}]", f) for k, f in enumerate(rule.filters)]
        filters += [
            (f"spec.rules[{i}].backendRefs[{b}].filters[{k}]", f)
            for b, ref in enumerate(rule.backend_refs)
            for k, f in enumerate(ref.filters)
        ]
        found += [
            f"{where}: filter CORS is not supported" for where, f in filters if f.type == "CORS"
        ]
    return found


def attached_ports(route: HTTPRoute, mesh: MeshView, svc: ServiceRecord) -> list[int]:
    """The ports of `svc` that `route` attaches to (none if the route is not accepted)."""
    if _regex_problems(route):
        return []
    ports: set[int] = set()
    for ref in route.spec.parent_refs:
        namespace = ref.namespace or route.metadata.namespace
        if _is_service(ref) and ref.name == svc.name and namespace == svc.namespace:
            ports.update(_ports_of(ref, svc))
    return sorted(ports)


def routes_for_client(mesh: MeshView, client_namespace: str, svc: ServiceRecord) -> list[HTTPRoute]:
    """The routes a client in `client_namespace` uses for `svc`, oldest first:
    its namespace's consumer routes if there are any, else the producer routes."""
    attached = [r for r in mesh.routes if attached_ports(r, mesh, svc)]
    consumer = [r for r in attached if r.metadata.namespace == client_namespace != svc.namespace]
    chosen = consumer or [r for r in attached if r.metadata.namespace == svc.namespace]
    return sorted(chosen, key=_age_order)


# --- status ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False"
    reason: str
    message: str


@dataclass(frozen=True)
class ParentStatus:
    parent_ref: ParentReference
    conditions: tuple[Condition, ...] = field(default_factory=tuple)


def _backend_problem(
    mesh: MeshView,
    route_namespace: str,
    group: str,
    kind: str,
    name: str,
    ns: str | None,
    port: int | None,
) -> tuple[str, str] | None:
    """(reason, message) when a backendRef does not resolve, per the spec's reasons."""
    if group != "" or kind != "Service":
        return (
            "InvalidKind",
            f"backendRef {kind}.{group or 'core'} {name}: only Services are supported",
        )
    namespace = ns or route_namespace
    svc = mesh.services.get((namespace, name))
    if svc is None:
        return "BackendNotFound", f"backend Service {namespace}/{name} does not exist"
    if port is not None and port not in {p.port for p in svc.ports}:
        return "BackendNotFound", f"backend Service {namespace}/{name} has no port {port}"
    return None


def _rule_backend_problems(mesh: MeshView, route: HTTPRoute) -> list[tuple[str, str]]:
    found = []
    ns = route.metadata.namespace
    for rule in route.spec.rules:
        for ref in rule.backend_refs:
            if p := _backend_problem(
                mesh, ns, ref.group, ref.kind, ref.name, ref.namespace, ref.port
            ):
                found.append(p)
        for f in [*rule.filters, *(f for ref in rule.backend_refs for f in ref.filters)]:
            if f.request_mirror is not None:
                m = f.request_mirror.backend_ref
                if p := _backend_problem(mesh, ns, m.group, m.kind, m.name, m.namespace, m.port):
                    found.append(p)
            if f.type == "ExtensionRef" and f.extension_ref is not None:
                e = f.extension_ref
                found.append(
                    ("InvalidKind", f"filter ExtensionRef {e.kind} {e.name} is not supported")
                )
    return found


def _shadowed(mesh: MeshView, route: HTTPRoute, svc: ServiceRecord) -> list[str]:
    """Matches of `route` that an older route's identical match takes (spec precedence)."""
    mine = {
        _match_identity(m): (i, j)
        for i, r in enumerate(route.spec.rules)
        for j, m in enumerate(r.matches)
    }
    found = []
    for other in mesh.routes:
        if other is route or other.metadata.namespace != route.metadata.namespace:
            continue
        if _age_order(other) >= _age_order(route) or not attached_ports(other, mesh, svc):
            continue
        for r in other.spec.rules:
            for m in r.matches:
                hit = mine.pop(_match_identity(m), None)
                if hit is not None:
                    found.append(
                        f"spec.rules[{hit[0]}].matches[{hit[1]}] is the same match as one in "
                        f"the older route {route_key(other)}, which takes precedence"
                    )
    return found


def _match_identity(m: object) -> str:
    return repr(m)


def route_conditions(route: HTTPRoute, mesh: MeshView) -> list[ParentStatus]:
    """The `Accepted` and `ResolvedRefs` conditions for each Service parentRef of
    `route` (parents of other kinds, Gateways, are not the mesh's to report on)."""
    out = []
    regex = _regex_problems(route)
    backends = _rule_backend_problems(mesh, route)
    for ref in route.spec.parent_refs:
        if not _is_service(ref):
            continue
        namespace = ref.namespace or route.metadata.namespace
        svc = mesh.services.get((namespace, ref.name))
        if svc is None:
            accepted = Condition(
                "Accepted",
                "False",
                "NoMatchingParent",
                f"Service {namespace}/{ref.name} does not exist",
            )
        elif not _ports_of(ref, svc):
            which = (
                f"port {ref.port}" if ref.port is not None else f'a port named "{ref.section_name}"'
            )
            accepted = Condition(
                "Accepted",
                "False",
                "NoMatchingParent",
                f"Service {namespace}/{ref.name} has no {which}",
            )
        elif regex:
            accepted = Condition("Accepted", "False", "UnsupportedValue", "; ".join(regex))
        else:
            scope = (
                "producer route: applies to every client"
                if namespace == route.metadata.namespace
                else f"consumer route: applies to clients in namespace {route.metadata.namespace}"
            )
            notes = _shadowed(mesh, route, svc)
            if route.spec.hostnames:
                notes.append("hostnames are ignored for a Service parent (GEP-1294)")
            message = f"attached to Service {namespace}/{ref.name} ({scope})"
            if notes:
                message += "; " + "; ".join(notes)
            accepted = Condition("Accepted", "True", "Accepted", message)
        if backends:
            reason = backends[0][0]
            resolved = Condition(
                "ResolvedRefs",
                "False",
                reason,
                "; ".join(msg for _, msg in backends) + " (requests sent there get a 500)",
            )
        else:
            resolved = Condition("ResolvedRefs", "True", "ResolvedRefs", "all references resolved")
        out.append(ParentStatus(ref, (accepted, resolved)))
    return out


# --- routes for a proxy ----------------------------------------------------------------


def _header_edit(f: HTTPHeaderFilter | None) -> HeaderEdit | None:
    if f is None:
        return None
    return HeaderEdit(
        set=tuple((h.name, h.value) for h in f.set),
        add=tuple((h.name, h.value) for h in f.add),
        remove=tuple(name.lower() for name in f.remove),
    )


def _path_modifier(m: HTTPPathModifier | None) -> PathModifierSpec | None:
    if m is None:
        return None
    if m.type == "ReplaceFullPath":
        return PathModifierSpec("ReplaceFullPath", m.replace_full_path or "")
    return PathModifierSpec("ReplacePrefixMatch", m.replace_prefix_match or "")


def _mirror(mesh: MeshView, route: HTTPRoute, f: HTTPRouteFilter) -> MirrorSpec | None:
    m = f.request_mirror
    if m is None:
        return None
    ref = m.backend_ref
    if _backend_problem(
        mesh, route.metadata.namespace, ref.group, ref.kind, ref.name, ref.namespace, ref.port
    ):
        return None
    assert ref.port is not None
    namespace = ref.namespace or route.metadata.namespace
    if m.fraction is not None:
        num, den = m.fraction.numerator, m.fraction.denominator
    else:
        num, den = (m.percent if m.percent is not None else 100), 100
    return MirrorSpec(f"{ref.name}.{namespace}", ref.port, num, den)


def _rule_retry(rule: HTTPRouteRule, base: RetrySpec | None) -> RetrySpec | None:
    r = rule.retry
    if r is None:
        return None
    spec = base or RetrySpec()
    backoff = parse_duration(r.backoff) if r.backoff is not None else spec.backoff_base
    return RetrySpec(
        attempts=r.attempts if r.attempts is not None else spec.attempts,
        on=("connect-failure", "reset") if r.codes else spec.on,
        codes=tuple(r.codes) or spec.codes,
        per_try_timeout=spec.per_try_timeout,
        backoff_base=backoff,
        backoff_max=max(backoff * 10, spec.backoff_max) if backoff else 0.0,
        budget_ratio=spec.budget_ratio,
        budget_min_per_second=spec.budget_min_per_second,
        budget_ttl=spec.budget_ttl,
    )


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    seconds = parse_duration(value)
    return seconds or None  # 0s turns the timeout off


def _rule_spec(
    mesh: MeshView, route: HTTPRoute, index: int, rule: HTTPRouteRule, retry: RetrySpec | None
) -> RuleSpec:
    ns = route.metadata.namespace
    request_headers = response_headers = None
    redirect = rewrite = None
    mirrors = []
    error = None
    for f in rule.filters:
        if f.type == "RequestHeaderModifier":
            request_headers = _header_edit(f.request_header_modifier)
        elif f.type == "ResponseHeaderModifier":
            response_headers = _header_edit(f.response_header_modifier)
        elif f.type == "RequestRedirect" and f.request_redirect is not None:
            rr = f.request_redirect
            redirect = RedirectSpec(
                rr.scheme, rr.hostname, rr.port, _path_modifier(rr.path), rr.status_code
            )
        elif f.type == "URLRewrite" and f.url_rewrite is not None:
            rewrite = RewriteSpec(f.url_rewrite.hostname, _path_modifier(f.url_rewrite.path))
        elif f.type == "RequestMirror":
            if (m := _mirror(mesh, route, f)) is not None:
                mirrors.append(m)
        else:
            # The spec: a filter that cannot be applied must not be skipped; requests
            # it would have processed get an error instead.
            error = f"filter {f.type} is not supported"
    backends = []
    for ref in rule.backend_refs:
        problem = _backend_problem(mesh, ns, ref.group, ref.kind, ref.name, ref.namespace, ref.port)
        req = resp = None
        for f in ref.filters:
            if f.type == "RequestHeaderModifier":
                req = _header_edit(f.request_header_modifier)
            elif f.type == "ResponseHeaderModifier":
                resp = _header_edit(f.response_header_modifier)
            elif f.type == "RequestMirror":
                if (m := _mirror(mesh, route, f)) is not None:
                    mirrors.append(m)
            elif problem is None:
                problem = ("UnsupportedValue", f"backendRef filter {f.type} is not supported")
        backends.append(
            BackendTarget(
                service=f"{ref.name}.{ref.namespace or ns}",
                port=ref.port or 0,
                weight=ref.weight,
                request_headers=req,
                response_headers=resp,
                error=problem[1] if problem else None,
            )
        )
    if not backends and redirect is None and error is None:
        error = "rule has no backendRefs"
    timeouts = rule.timeouts
    prefix = None
    if len(rule.matches) == 1 and rule.matches[0].path.type == "PathPrefix":
        prefix = rule.matches[0].path.value
    return RuleSpec(
        route=route_key(route),
        index=index,
        name=rule.name,
        backends=tuple(backends),
        request_headers=request_headers,
        response_headers=response_headers,
        redirect=redirect,
        rewrite=rewrite,
        mirrors=tuple(mirrors),
        timeout=_seconds(timeouts.request) if timeouts else None,
        backend_timeout=_seconds(timeouts.backend_request) if timeouts else None,
        retry=_rule_retry(rule, retry),
        prefix=prefix,
        error=error,
    )


def _precedence(
    m: MatchSpec, route_order: int, route: HTTPRoute, rule: int, match: int
) -> tuple[int, ...]:
    # A compiled GRPCRoute's matches (all POST /service/method) rank by the GRPCRoute
    # spec, ahead of HTTPRoute matches on the same port, which would otherwise take
    # gRPC calls with a catch-all path.
    if (grpc := grpc_precedence(route, rule, match)) is not None:
        return (0, *grpc, route_order, m.rule, m.index)
    return (
        1,
        0 if m.path_type == "Exact" else 1,
        -len(m.path),
        0 if m.path_type == "PathPrefix" else 1,
        0 if m.method is not None else 1,
        -len(m.headers),
        -len(m.query),
        route_order,
        m.rule,
        m.index,
    )


def service_routes(
    mesh: MeshView, client_namespace: str, svc: ServiceRecord, retry: RetrySpec | None = None
) -> list[ServiceRoutes]:
    """The merged, ordered routes for each port of `svc` that has any, for a client."""
    routes = routes_for_client(mesh, client_namespace, svc)
    out = []
    for port in (p.port for p in svc.ports):
        on_port = [r for r in routes if port in attached_ports(r, mesh, svc)]
        if not on_port:
            continue
        rules: list[RuleSpec] = []
        keyed: list[tuple[tuple[int, ...], MatchSpec]] = []
        tcp_rules: list[int] = []
        for order, route in enumerate(on_port):
            for i, rule in enumerate(route.spec.rules):
                rule_index = len(rules)
                rules.append(_rule_spec(mesh, route, i, rule, retry))
                if isinstance(route, CompiledTCPRoute):
                    # Connections, not requests: no match ever picks a TCPRoute rule.
                    tcp_rules.append(rule_index)
                    continue
                for j, match in enumerate(rule.matches):
                    spec = MatchSpec(
                        rule=rule_index,
                        index=j,
                        path_type=match.path.type,
                        path=match.path.value,
                        method=match.method,
                        headers=tuple(
                            HeaderMatchSpec(h.type, h.name.lower(), h.value) for h in match.headers
                        ),
                        query=tuple(
                            HeaderMatchSpec(q.type, q.name, q.value) for q in match.query_params
                        ),
                    )
                    keyed.append((_precedence(spec, order, route, i, j), spec))
        keyed.sort(key=lambda pair: pair[0])
        out.append(
            ServiceRoutes(
                service=f"{svc.name}.{svc.namespace}",
                port=port,
                matches=tuple(spec for _, spec in keyed),
                rules=tuple(rules),
                routes=tuple(route_key(r) for r in on_port),
                tcp_rules=tuple(tcp_rules),
            )
        )
    return out


def build_routes(
    mesh: MeshView, client_namespace: str, services: Sequence[ServiceRecord]
) -> tuple[list[ServiceRoutes], list[str]]:
    """Routes for the services a proxy asked about, and the other services they name
    (backends and mirrors) as "name.namespace", which must come along in the snapshot."""
    routes = []
    for svc in services:
        retry = _retry_spec(_policy_for(mesh, RetryPolicy, svc))
        routes.extend(service_routes(mesh, client_namespace, svc, retry))
    asked = {f"{s.name}.{s.namespace}" for s in services}
    named: set[str] = set()
    for sr in routes:
        for rule in sr.rules:
            named.update(b.service for b in rule.backends if b.error is None)
            named.update(m.service for m in rule.mirrors)
    return routes, sorted(named - asked)


# --- policies --------------------------------------------------------------------------


def _policy_for(mesh: MeshView, kind: type[Policy], svc: ServiceRecord) -> Policy | None:
    """The oldest policy of `kind` in the service's namespace that targets it."""
    found = [
        p
        for p in mesh.policies
        if isinstance(p, kind)
        and p.metadata.namespace == svc.namespace
        and any(t.name == svc.name for t in p.spec.target_refs)
    ]
    if not found:
        return None
    return min(found, key=lambda p: (p.metadata.creation_timestamp or "~", p.metadata.name))


def _retry_spec(p: Policy | None) -> RetrySpec | None:
    if not isinstance(p, RetryPolicy):
        return None
    s = p.spec
    base = parse_duration(s.backoff.base_interval)
    return RetrySpec(
        attempts=s.attempts,
        on=tuple(s.retry_on),
        codes=tuple(s.codes),
        per_try_timeout=_seconds(s.per_try_timeout),
        backoff_base=base,
        backoff_max=parse_duration(s.backoff.max_interval) if s.backoff.max_interval else base * 10,
        budget_ratio=s.budget.percent / 100,
        budget_min_per_second=float(s.budget.min_retries_per_second),
        budget_ttl=parse_duration(s.budget.ttl),
    )


def build_policies(mesh: MeshView, services: Iterable[ServiceRecord]) -> list[ServicePolicy]:
    out = []
    for svc in services:
        retry = _retry_spec(_policy_for(mesh, RetryPolicy, svc))
        outlier = limits = fault = None
        o = _policy_for(mesh, OutlierPolicy, svc)
        if isinstance(o, OutlierPolicy):
            s = o.spec
            outlier = OutlierSpec(
                consecutive_failures=s.consecutive_failures or 0,
                failure_rate_percent=s.failure_rate.percent if s.failure_rate else None,
                failure_rate_minimum_requests=s.failure_rate.minimum_requests
                if s.failure_rate
                else 0,
                interval=parse_duration(s.interval),
                base_ejection_time=parse_duration(s.base_ejection_time),
                max_ejection_time=parse_duration(s.max_ejection_time),
                max_ejected_percent=s.max_ejected_percent,
            )
        c = _policy_for(mesh, CircuitBreakerPolicy, svc)
        if isinstance(c, CircuitBreakerPolicy):
            limits = LimitsSpec(
                c.spec.max_connections, c.spec.max_pending_requests, c.spec.max_requests
            )
        f = _policy_for(mesh, FaultPolicy, svc)
        if isinstance(f, FaultPolicy):
            d, a = f.spec.delay, f.spec.abort
            fault = FaultSpec(
                delay=parse_duration(d.fixed_delay) if d else None,
                delay_percent=d.percent if d else 0.0,
                abort_status=a.http_status if a else None,
                abort_percent=a.percent if a else 0.0,
            )
        if (retry, outlier, limits, fault) != (None, None, None, None):
            out.append(ServicePolicy(f"{svc.name}.{svc.namespace}", retry, outlier, limits, fault))
    return out
