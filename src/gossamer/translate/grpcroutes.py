"""GRPCRoute compiled into HTTPRoute form, so that one route pipeline serves both.

A gRPC call is an HTTP/2 request `POST /<service>/<method>`, so every GRPCRoute match
has an HTTPRoute equivalent: method POST, a path, the same header matches. An Exact
service and method is an Exact path; anything else a RegularExpression path
(`/(?:service)/(?:method)`, a missing half `[^/]+`); no method match is any path.
Filters (header modifiers, mirrors, ExtensionRef) and backendRefs have the same shape
in both kinds. Attachment, status and snapshot translation then run unchanged
(`gossamer.translate.routes`); only precedence differs, and `grpc_precedence` gives
the GRPCRoute spec's: the most characters in the service, then in the method, then
the most header matches.

A TCPRoute compiles the same way, its rules kept for their backends only: they have
no matches (`ServiceRoutes.tcp_rules` names them for opaque connections).
"""

from __future__ import annotations

import re
from typing import Any

from gossamer.resources.grpcroute import GRPCMethodMatch, GRPCRoute, GRPCRouteFilter
from gossamer.resources.httproute import HTTPRoute
from gossamer.resources.tcproute import TCPRoute

__all__ = [
    "CompiledGRPCRoute",
    "CompiledTCPRoute",
    "compile_grpcroute",
    "compile_route",
    "compile_tcproute",
    "grpc_precedence",
]

_ANY_NAME = "[^/]+"


class CompiledGRPCRoute(HTTPRoute):
    """A GRPCRoute as the HTTPRoute it compiles to; `source` is the route as written."""

    source: GRPCRoute


def _part(value: str | None, exact: bool) -> str:
    if value is None:
        return _ANY_NAME
    return re.escape(value) if exact else f"(?:{value})"


def _path(m: GRPCMethodMatch | None) -> dict[str, str]:
    if m is None:
        return {"type": "PathPrefix", "value": "/"}
    exact = m.type == "Exact"
    if exact and m.service is not None and m.method is not None:
        return {"type": "Exact", "value": f"/{m.service}/{m.method}"}
    return {
        "type": "RegularExpression",
        "value": f"/{_part(m.service, exact)}/{_part(m.method, exact)}",
    }


def _filter(f: GRPCRouteFilter) -> dict[str, Any]:
    return f.model_dump(mode="json", by_alias=True, exclude_none=True)


def compile_grpcroute(route: GRPCRoute) -> CompiledGRPCRoute:
    """The HTTPRoute that routes exactly the calls `route` routes, the same way."""
    rules = []
    for rule in route.spec.rules:
        matches = [
            {
                "path": _path(m.method),
                "method": "POST",
                "headers": [h.model_dump(mode="json", by_alias=True) for h in m.headers],
            }
            for m in rule.matches
        ] or [{"path": _path(None), "method": "POST"}]
        rules.append(
            {
                "name": rule.name,
                "matches": matches,
                "filters": [_filter(f) for f in rule.filters],
                "backendRefs": [
                    {
                        **ref.model_dump(mode="json", by_alias=True, exclude={"filters"}),
                        "filters": [_filter(f) for f in ref.filters],
                    }
                    for ref in rule.backend_refs
                ],
                "sessionPersistence": rule.session_persistence,
            }
        )
    spec = route.spec.model_dump(mode="json", by_alias=True, exclude={"rules"})
    return CompiledGRPCRoute.model_validate(
        {
            "metadata": route.metadata.model_dump(mode="json", by_alias=True),
            "spec": {**spec, "rules": rules},
            "source": route,
        }
    )


def grpc_precedence(route: HTTPRoute, rule: int, match: int) -> tuple[int, int, int] | None:
    """For a compiled GRPCRoute's match, the spec's ranking (smaller first): most
    service characters, then method characters, then header matches. None for an
    HTTPRoute, which ranks by HTTPRoute's rules instead."""
    if not isinstance(route, CompiledGRPCRoute):
        return None
    matches = route.source.spec.rules[rule].matches
    if not matches:
        return (0, 0, 0)
    m = matches[match]
    service = len(m.method.service or "") if m.method else 0
    method = len(m.method.method or "") if m.method else 0
    return (-service, -method, -len(m.headers))


class CompiledTCPRoute(HTTPRoute):
    """A TCPRoute as an HTTPRoute with the same parents and weighted backends."""

    source: TCPRoute


def compile_tcproute(route: TCPRoute) -> CompiledTCPRoute:
    """The HTTPRoute form of `route`, for attachment, status and backends."""
    spec = route.spec.model_dump(mode="json", by_alias=True)
    return CompiledTCPRoute.model_validate(
        {
            "metadata": route.metadata.model_dump(mode="json", by_alias=True),
            "spec": spec,
            "source": route,
        }
    )


def compile_route(route: GRPCRoute | TCPRoute) -> CompiledGRPCRoute | CompiledTCPRoute:
    if isinstance(route, GRPCRoute):
        return compile_grpcroute(route)
    return compile_tcproute(route)
