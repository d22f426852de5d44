"""`gateway.networking.k8s.io/v1 GRPCRoute`, with the CRD's validation rules and defaults.

Class and field names follow the Go types in gateway-api's `apis/v1/grpcroute_types.go`;
references, header filters and mirrors are HTTPRoute's own types (the Go API shares
them too). The mesh compiles a GRPCRoute into the same routes as an HTTPRoute (a gRPC
method is the request `POST /<service>/<method>`), see `gossamer.translate.grpcroutes`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from gossamer.resources._base import Between, Loc, Model, each, first_seen, raise_problems
from gossamer.resources.httproute import (
    BackendObjectReference,
    HeaderName,
    HeaderValue,
    Hostname,
    HTTPHeaderFilter,
    HTTPRequestMirrorFilter,
    LocalObjectReference,
    ParentReference,
    SectionName,
    config_matches_type,
)
from gossamer.resources.httproute import (
    _parent_ref_problems as parent_ref_problems,
)
from gossamer.resources.meta import ObjectMeta

__all__ = [
    "GRPCBackendRef",
    "GRPCHeaderMatch",
    "GRPCMethodMatch",
    "GRPCRoute",
    "GRPCRouteFilter",
    "GRPCRouteMatch",
    "GRPCRouteRule",
    "GRPCRouteSpec",
]

# The CRD's patterns for an Exact service and method (a protobuf full name and identifier).
_SERVICE = re.compile(r"(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*")
_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def _regex_problem(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"must be a valid regular expression: {exc}"
    return None


class GRPCMethodMatch(Model):
    """Which method: `service` and/or `method` (at least one), Exact or RegularExpression."""

    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: str | None = Field(default=None, max_length=1024)
    method: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _check(self) -> GRPCMethodMatch:
        found: list[tuple[Loc, str]] = []
        if self.service is None and self.method is None:
            found.append(((), "one or both of service and method must be set"))
        for name, value, exact in (
            ("service", self.service, _SERVICE),
            ("method", self.method, _METHOD),
        ):
            if value is None:
                continue
            if self.type == "Exact" and exact.fullmatch(value) is None:
                what = (
                    "a protobuf service name (e.g. pkg.Service)"
                    if name == "service"
                    else ("a method name: a letter or '_', then letters, digits and '_'")
                )
                found.append(((name,), f"must be {what} when type is Exact"))
            elif self.type == "RegularExpression" and (problem := _regex_problem(value)):
                found.append(((name,), problem))
        raise_problems(found)
        return self


class GRPCHeaderMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    """Compared case-insensitively."""
    value: HeaderValue

    @model_validator(mode="after")
    def _check_regex(self) -> GRPCHeaderMatch:
        if self.type == "RegularExpression" and (problem := _regex_problem(self.value)):
            raise_problems([(("value",), problem)])
        return self


def _header_match_problems(headers: list[GRPCHeaderMatch]) -> list[tuple[Loc, str]]:
    return [
        ((i, "name"), f'duplicate header "{headers[i].name}" (headers[{j}])')
        for i, j in first_seen([h.name.lower() for h in headers])
    ]


class GRPCRouteMatch(Model):
    """Both the method and all headers must match (AND); no method matches every method."""

    method: GRPCMethodMatch | None = None
    headers: Annotated[list[GRPCHeaderMatch], each(_header_match_problems)] = Field(
        default_factory=list, max_length=16
    )


GRPCFilterType = Literal[
    "RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"
]
_FILTER_FIELDS: dict[str, str] = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "ExtensionRef": "extensionRef",
}
_REPEATABLE_FILTERS = frozenset({"RequestMirror", "ExtensionRef"})


class GRPCRouteFilter(Model):
    """A union on `type`: exactly the field named for the type is set."""

    type: GRPCFilterType
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    extension_ref: LocalObjectReference | None = None

    @model_validator(mode="after")
    def _config_matches_type(self) -> GRPCRouteFilter:
        raise_problems(config_matches_type(self, self.type, _FILTER_FIELDS))
        return self


def _filter_problems(filters: list[GRPCRouteFilter]) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    for i, f in enumerate(filters):
        if f.type in seen and f.type not in _REPEATABLE_FILTERS:
            found.append(((i, "type"), f"{f.type} filter cannot be repeated ([{seen[f.type]}])"))
        seen.setdefault(f.type, i)
    return found


class GRPCBackendRef(BackendObjectReference):
    """Where matching calls go; `weight` is this backend's share (weight / sum of weights)."""

    weight: Annotated[int, Between(0, 1_000_000)] = 1
    filters: Annotated[list[GRPCRouteFilter], each(_filter_problems)] = Field(
        default_factory=list, max_length=16
    )


class GRPCRouteRule(Model):
    name: SectionName | None = None
    matches: list[GRPCRouteMatch] = Field(default_factory=list, max_length=64)
    """Any one of these (OR); none matches every gRPC call."""
    filters: Annotated[list[GRPCRouteFilter], each(_filter_problems)] = Field(
        default_factory=list, max_length=16
    )
    backend_refs: list[GRPCBackendRef] = Field(default_factory=list, max_length=16)
    session_persistence: dict[str, Any] | None = None


def _rule_problems(rules: list[GRPCRouteRule]) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    total = sum(len(r.matches) for r in rules)
    if total > 128:
        found.append(((), f"must have at most 128 matches in all (has {total})"))
    named = [(i, r.name) for i, r in enumerate(rules) if r.name is not None]
    found += [
        ((named[k][0], "name"), f'duplicate name "{named[k][1]}" (rules[{named[j][0]}])')
        for k, j in first_seen([name for _, name in named])
    ]
    return found


class GRPCRouteSpec(Model):
    parent_refs: Annotated[list[ParentReference], each(parent_ref_problems)] = Field(
        default_factory=list, max_length=32
    )
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    rules: Annotated[list[GRPCRouteRule], each(_rule_problems)] = Field(
        default_factory=lambda: [GRPCRouteRule()], max_length=16
    )

    @field_validator("rules", mode="before")
    @classmethod
    def _no_rules_is_one_catch_all(cls, value: Any) -> Any:
        return [GRPCRouteRule()] if value == [] else value


class GRPCRoute(Model):
    api_version: Literal["gateway.networking.k8s.io/v1"] = "gateway.networking.k8s.io/v1"
    kind: Literal["GRPCRoute"] = "GRPCRoute"
    metadata: ObjectMeta
    spec: GRPCRouteSpec
    status: dict[str, Any] | None = None
