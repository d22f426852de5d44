"""The traffic-management part of a snapshot: routes and per-service policies, as values.

These are what `gossamer.translate.routes` makes of HTTPRoutes and the gossamer.dev
policy kinds for one proxy: already scoped (producer or consumer routes, whichever
apply to the proxy's namespace), already ordered by the Gateway API's precedence,
durations in seconds, header names lowercased. The proxy compiles them once per
snapshot (`gossamer.proxy.policy.routematch`) and never looks at a resource.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar

__all__ = [
    "BackendTarget",
    "FaultSpec",
    "HeaderEdit",
    "HeaderMatchSpec",
    "LimitsSpec",
    "MatchSpec",
    "MirrorSpec",
    "OutlierSpec",
    "PathModifierSpec",
    "RedirectSpec",
    "RetrySpec",
    "RewriteSpec",
    "RuleSpec",
    "ServicePolicy",
    "ServiceRoutes",
    "load",
]


@dataclass(frozen=True, slots=True)
class HeaderMatchSpec:
    """A header (name lowercased) or query parameter (name as written) to match."""

    type: str  # "Exact" | "RegularExpression"
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class MatchSpec:
    """One `matches[]` entry of one rule; all of its parts must match (AND)."""

    rule: int  # index into ServiceRoutes.rules
    index: int  # which of the rule's matches this is
    path_type: str = "PathPrefix"  # "Exact" | "PathPrefix" | "RegularExpression"
    path: str = "/"
    method: str | None = None
    headers: tuple[HeaderMatchSpec, ...] = ()
    query: tuple[HeaderMatchSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """RequestHeaderModifier / ResponseHeaderModifier: names of `remove` lowercased."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifierSpec:
    type: str  # "ReplaceFullPath" | "ReplacePrefixMatch"
    value: str


@dataclass(frozen=True, slots=True)
class RedirectSpec:
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: PathModifierSpec | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class RewriteSpec:
    hostname: str | None = None
    path: PathModifierSpec | None = None


@dataclass(frozen=True, slots=True)
class BackendTarget:
    """A weighted backend: a service port, or why requests for it get a 500."""

    service: str  # "name.namespace"
    port: int
    weight: int = 1
    request_headers: HeaderEdit | None = None
    response_headers: HeaderEdit | None = None
    error: str | None = None  # set when the backendRef does not resolve


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    service: str
    port: int
    numerator: int = 100
    denominator: int = 100


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """When and how often to send a request again (see gossamer.dev RetryPolicy)."""

    attempts: int = 2  # retries after the first try
    on: tuple[str, ...] = ("connect-failure", "reset", "gateway-error")
    codes: tuple[int, ...] = ()
    per_try_timeout: float | None = None
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    budget_ratio: float = 0.2
    budget_min_per_second: float = 10.0
    budget_ttl: float = 10.0


@dataclass(frozen=True, slots=True)
class OutlierSpec:
    consecutive_failures: int = 5
    failure_rate_percent: int | None = None
    failure_rate_minimum_requests: int = 20
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejected_percent: int = 50


@dataclass(frozen=True, slots=True)
class LimitsSpec:
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None


@dataclass(frozen=True, slots=True)
class FaultSpec:
    delay: float | None = None
    delay_percent: float = 0.0
    abort_status: int | None = None
    abort_percent: float = 0.0


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One HTTPRoute rule, with the filters and backends requests matching it get."""

    route: str  # "namespace/name" of the HTTPRoute
    index: int  # the rule's place in the route
    name: str | None = None
    backends: tuple[BackendTarget, ...] = ()
    request_headers: HeaderEdit | None = None
    response_headers: HeaderEdit | None = None
    redirect: RedirectSpec | None = None
    rewrite: RewriteSpec | None = None
    mirrors: tuple[MirrorSpec, ...] = ()
    timeout: float | None = None  # timeouts.request; None or 0: none
    backend_timeout: float | None = None  # timeouts.backendRequest
    retry: RetrySpec | None = None  # the rule's own `retry` field, merged over the policy
    prefix: str | None = None  # the PathPrefix a ReplacePrefixMatch replaces
    error: str | None = None  # why matching requests get a 500 (an unsupported filter)

    @property
    def label(self) -> str:
        return f"{self.route} rule {self.name or self.index}"


@dataclass(frozen=True, slots=True)
class ServiceRoutes:
    """The routes that apply to one service port for this proxy, merged.

    `matches` is in precedence order: the first that matches a request wins; a request
    that matches none gets a 404.
    """

    service: str  # "name.namespace"
    port: int
    matches: tuple[MatchSpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    routes: tuple[str, ...] = ()  # "namespace/name" of every route merged here
    # The rules of TCPRoutes, oldest route first: an opaque connection takes the first.
    tcp_rules: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """The gossamer.dev policies that apply to calls from this proxy to one service."""

    service: str  # "name.namespace"
    retry: RetrySpec | None = None
    outlier: OutlierSpec | None = None
    limits: LimitsSpec | None = None
    fault: FaultSpec | None = None


T = TypeVar("T")


def load(cls: type[T], data: Any) -> T:
    """Rebuild a dataclass above (and what it nests) from `dataclasses.asdict` output."""
    return typing.cast(T, _load(cls, data))


def _load(tp: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _load(inner[0], data)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_load(args[0], item) for item in data)
        return tuple(_load(a, item) for a, item in zip(args, data, strict=True))
    if isinstance(tp, type) and is_dataclass(tp):
        hints = _hints(tp)
        return tp(
            **{f.name: _load(hints[f.name], data[f.name]) for f in fields(tp) if f.name in data}
        )
    return data


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(tp: type) -> dict[str, Any]:
    hints = _HINTS.get(tp)
    if hints is None:
        hints = _HINTS[tp] = typing.get_type_hints(tp)
    return hints


_RETRY_CODES = {"gateway-error": (502, 503, 504)}


def retry_codes(spec: RetrySpec) -> frozenset[int]:
    """Every response status `spec` retries."""
    codes = set(spec.codes)
    for condition in spec.on:
        codes.update(_RETRY_CODES.get(condition, ()))
        if condition == "5xx":
            codes.update(range(500, 600))
    return frozenset(codes)
