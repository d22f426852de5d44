"""`gateway.networking.k8s.io/v1alpha2 TCPRoute`: opaque TCP split between backends.

Field names follow gateway-api's `apis/v1alpha2/tcproute_types.go`; references are
HTTPRoute's types. A TCPRoute has no matches: a connection takes the first rule of the
oldest route on its Service port (the spec leaves several rules to implementations),
and one of that rule's backends by weight.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from gossamer.resources._base import Between, Loc, Model, each, first_seen
from gossamer.resources.httproute import (
    BackendObjectReference,
    ParentReference,
    SectionName,
)
from gossamer.resources.httproute import (
    _parent_ref_problems as parent_ref_problems,
)
from gossamer.resources.meta import ObjectMeta

__all__ = ["TCPBackendRef", "TCPRoute", "TCPRouteRule", "TCPRouteSpec"]


class TCPBackendRef(BackendObjectReference):
    """Where connections go; `weight` is this backend's share (weight / sum of weights)."""

    weight: Annotated[int, Between(0, 1_000_000)] = 1


class TCPRouteRule(Model):
    name: SectionName | None = None
    backend_refs: list[TCPBackendRef] = Field(min_length=1, max_length=16)


def _rule_problems(rules: list[TCPRouteRule]) -> list[tuple[Loc, str]]:
    named = [(i, r.name) for i, r in enumerate(rules) if r.name is not None]
    return [
        ((named[k][0], "name"), f'duplicate name "{named[k][1]}" (rules[{named[j][0]}])')
        for k, j in first_seen([name for _, name in named])
    ]


class TCPRouteSpec(Model):
    parent_refs: Annotated[list[ParentReference], each(parent_ref_problems)] = Field(
        default_factory=list, max_length=32
    )
    rules: Annotated[list[TCPRouteRule], each(_rule_problems)] = Field(min_length=1, max_length=16)


class TCPRoute(Model):
    api_version: Literal["gateway.networking.k8s.io/v1alpha2"] = (
        "gateway.networking.k8s.io/v1alpha2"
    )
    kind: Literal["TCPRoute"] = "TCPRoute"
    metadata: ObjectMeta
    spec: TCPRouteSpec
    status: dict[str, Any] | None = None
