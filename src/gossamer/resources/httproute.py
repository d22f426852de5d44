"""`gateway.networking.k8s.io/v1 HTTPRoute`, with the CRD's validation rules and defaults.

Class and field names follow the Go types in gateway-api's `apis/v1/httproute_types.go`
and `shared_types.go`, so the upstream documentation reads straight onto this module.
Every CEL rule of the standard channel is enforced here, with the checks of the former
webhook that the CRD cannot express (one action per header name; a header or query
parameter matched once per match). From the
experimental channel: `retry`, rule names unique, parentRef `port` in the distinctness
rule, and the printable-value rule on header values (it keeps CR/LF out of headers the
proxy will write). `sessionPersistence` is kept as written, unchecked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from gossamer.resources._base import (
    Between,
    DNS1123Label,
    Loc,
    Model,
    PortNumber,
    each,
    first_seen,
    raise_problems,
    rule,
)
from gossamer.resources._names import (
    DNS1123_SUBDOMAIN_PATTERN,
    DNS1123_SUBDOMAIN_REASON,
    is_dns1123_subdomain,
)
from gossamer.resources.meta import ObjectMeta

__all__ = [
    "BackendObjectReference",
    "Fraction",
    "HTTPBackendRef",
    "HTTPCORSFilter",
    "HTTPHeader",
    "HTTPHeaderFilter",
    "HTTPHeaderMatch",
    "HTTPPathMatch",
    "HTTPPathModifier",
    "HTTPQueryParamMatch",
    "HTTPRequestMirrorFilter",
    "HTTPRequestRedirectFilter",
    "HTTPRoute",
    "HTTPRouteFilter",
    "HTTPRouteMatch",
    "HTTPRouteRetry",
    "HTTPRouteRule",
    "HTTPRouteSpec",
    "HTTPRouteTimeouts",
    "HTTPURLRewriteFilter",
    "LocalObjectReference",
    "ParentReference",
    "parse_duration",
]

GATEWAY_GROUP = "gateway.networking.k8s.io"

# --- Durations (GEP-2257) ---------------------------------------------------------------

_DURATION = re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_REASON = (
    "must be a duration: 1 to 4 parts, each up to 5 digits and a unit h, m, s or ms "
    "(e.g. 10s, 1h30m, 500ms)"
)


def parse_duration(value: str) -> float:
    """Seconds in a Gateway API duration (`1h30m`, `500ms`, `0s`).

    Raises ValueError for anything outside that format (GEP-2257), including Go
    duration forms such as `1.5s` or `-1s` that the Gateway API does not allow.
    """
    if _DURATION.fullmatch(value) is None:
        raise ValueError(f"{value!r} {_DURATION_REASON}")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


Duration = Annotated[
    str,
    rule(
        lambda v: _DURATION.fullmatch(v) is not None,
        _DURATION_REASON,
        pattern=f"^{_DURATION.pattern}$",
    ),
]

# --- Names and hostnames -----------------------------------------------------------------

_KIND = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
_HEADER_VALUE = re.compile(r"[!-~]+([\t ]?[!-~]+)*")
_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+")
_CORS_ORIGIN = re.compile(
    r"\*|https?://(((\*\.)?([a-zA-Z0-9\-]+\.)*[a-zA-Z0-9-]+|\*)(:[0-9]{1,5})?)"
)


def _is_group(value: str) -> bool:
    return value == "" or is_dns1123_subdomain(value)


def _is_kind(value: str) -> bool:
    return len(value) <= 63 and _KIND.fullmatch(value) is not None


def _is_header_name(value: str) -> bool:
    return len(value) <= 256 and _HEADER_NAME.fullmatch(value) is not None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_hostname(value: str) -> bool:
    host = value.removeprefix("*.")
    return is_dns1123_subdomain(host) and not _is_ip(host)


_SUBDOMAIN = f"^{DNS1123_SUBDOMAIN_PATTERN}$"

Group = Annotated[
    str,
    rule(
        _is_group,
        "must be empty (the core API group) or a DNS-1123 subdomain (e.g. gossamer.dev)",
        pattern=f"^$|{_SUBDOMAIN}",
        maxLength=253,
    ),
]
Kind = Annotated[
    str,
    rule(
        _is_kind,
        "must be a kind: a letter, then letters, digits and '-', ending with a letter or "
        "digit, at most 63 characters",
        pattern=f"^{_KIND.pattern}$",
        minLength=1,
        maxLength=63,
    ),
]
ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253)]
SectionName = Annotated[
    str,
    rule(is_dns1123_subdomain, DNS1123_SUBDOMAIN_REASON, pattern=_SUBDOMAIN, maxLength=253),
]
Hostname = Annotated[
    str,
    rule(
        _is_hostname,
        "must be a lowercase RFC 1123 hostname (not an IP address), optionally with a "
        "leading '*.' wildcard label, at most 253 characters",
        pattern=rf"^(\*\.)?{DNS1123_SUBDOMAIN_PATTERN}$",
        maxLength=253,
    ),
]
PreciseHostname = Annotated[
    str,
    rule(
        is_dns1123_subdomain,
        "must be a lowercase RFC 1123 hostname, at most 253 characters",
        pattern=_SUBDOMAIN,
        maxLength=253,
    ),
]
HeaderName = Annotated[
    str,
    rule(
        _is_header_name,
        "must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~, at most 256 characters",
        pattern=f"^{_HEADER_NAME.pattern}$",
        minLength=1,
        maxLength=256,
    ),
]
HeaderValue = Annotated[
    str,
    StringConstraints(min_length=1, max_length=4096),
    rule(
        lambda v: _HEADER_VALUE.fullmatch(v) is not None,
        "must be printable US-ASCII, words separated by at most one space or tab",
        pattern=f"^{_HEADER_VALUE.pattern}$",
    ),
]
HTTPMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


def _regex_problem(pattern: str) -> str | None:
    # The data plane matches with Python's `re`; a pattern it cannot compile is
    # refused here rather than failing on a proxy later.
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"must be a valid regular expression: {exc}"
    return None


# --- References ---------------------------------------------------------------------------


class ParentReference(Model):
    """What the route attaches to. For the mesh (GAMMA) that is a Service:
    `group: ""`, `kind: Service`; `sectionName` names a Service port, `port` numbers one."""

    group: Group = GATEWAY_GROUP
    kind: Kind = "Gateway"
    namespace: DNS1123Label | None = None
    name: ObjectName
    section_name: SectionName | None = None
    port: PortNumber | None = None


class BackendObjectReference(Model):
    group: Group = ""
    kind: Kind = "Service"
    name: ObjectName
    namespace: DNS1123Label | None = None
    port: PortNumber | None = None

    @model_validator(mode="after")
    def _service_needs_port(self) -> BackendObjectReference:
        if self.group == "" and self.kind == "Service" and self.port is None:
            raise_problems([(("port",), "required for a Service backend")])
        return self


class LocalObjectReference(Model):
    group: Group
    kind: Kind
    name: ObjectName


# --- Matches ------------------------------------------------------------------------------

_BAD_PATH_SEQUENCES = ("//", "/./", "/../", "%2f", "%2F", "#")
_BAD_PATH_SUFFIXES = ("/..", "/.")


class HTTPPathMatch(Model):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = Field(default="/", max_length=1024)

    @model_validator(mode="after")
    def _check_value(self) -> HTTPPathMatch:
        found: list[tuple[Loc, str]] = []
        if self.type == "RegularExpression":
            if problem := _regex_problem(self.value):
                found.append((("value",), problem))
        else:
            if not self.value.startswith("/"):
                found.append((("value",), "must be an absolute path (start with '/')"))
            for sequence in _BAD_PATH_SEQUENCES:
                if sequence in self.value:
                    found.append((("value",), f"must not contain '{sequence}'"))
            for suffix in _BAD_PATH_SUFFIXES:
                if self.value.endswith(suffix):
                    found.append((("value",), f"must not end with '{suffix}'"))
            if _PATH_CHARS.fullmatch(self.value) is None:
                found.append(
                    (
                        ("value",),
                        "must contain only path characters (letters, digits, "
                        "-/._~!$&'()*+,;=:@ and %-escapes)",
                    )
                )
        raise_problems(found)
        return self


class HTTPHeaderMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    """Compared case-insensitively."""
    value: HeaderValue

    @model_validator(mode="after")
    def _check_regex(self) -> HTTPHeaderMatch:
        if self.type == "RegularExpression" and (problem := _regex_problem(self.value)):
            raise_problems([(("value",), problem)])
        return self


class HTTPQueryParamMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    """Compared exactly (query parameter names are case-sensitive)."""
    value: str = Field(min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _check_regex(self) -> HTTPQueryParamMatch:
        if self.type == "RegularExpression" and (problem := _regex_problem(self.value)):
            raise_problems([(("value",), problem)])
        return self


def _header_match_problems(headers: list[HTTPHeaderMatch]) -> list[tuple[Loc, str]]:
    return [
        ((i, "name"), f'duplicate header "{headers[i].name}" (headers[{j}])')
        for i, j in first_seen([h.name.lower() for h in headers])
    ]


def _query_match_problems(params: list[HTTPQueryParamMatch]) -> list[tuple[Loc, str]]:
    return [
        ((i, "name"), f'duplicate query parameter "{params[i].name}" (queryParams[{j}])')
        for i, j in first_seen([q.name for q in params])
    ]


class HTTPRouteMatch(Model):
    """All of path, headers, query parameters and method must match (AND)."""

    path: HTTPPathMatch = Field(default_factory=HTTPPathMatch)
    headers: Annotated[list[HTTPHeaderMatch], each(_header_match_problems)] = Field(
        default_factory=list, max_length=16
    )
    query_params: Annotated[list[HTTPQueryParamMatch], each(_query_match_problems)] = Field(
        default_factory=list, max_length=16
    )
    method: HTTPMethod | None = None


# --- Filters ------------------------------------------------------------------------------


class HTTPHeader(Model):
    name: HeaderName
    value: HeaderValue


class HTTPHeaderFilter(Model):
    """Set, add or remove headers; one action per header name (names compare without case)."""

    set: list[HTTPHeader] = Field(default_factory=list, max_length=16)
    add: list[HTTPHeader] = Field(default_factory=list, max_length=16)
    remove: list[str] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _one_action_per_header(self) -> HTTPHeaderFilter:
        found: list[tuple[Loc, str]] = []
        first: dict[str, str] = {}
        actions: list[tuple[Loc, str]] = [
            *((("set", i, "name"), h.name) for i, h in enumerate(self.set)),
            *((("add", i, "name"), h.name) for i, h in enumerate(self.add)),
            *((("remove", i), name) for i, name in enumerate(self.remove)),
        ]
        for loc, name in actions:
            where = f"{loc[0]}[{loc[1]}]"
            if (earlier := first.setdefault(name.lower(), where)) != where:
                found.append((loc, f'header "{name}" already has an action ({earlier})'))
        raise_problems(found)
        return self


class HTTPPathModifier(Model):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = Field(default=None, max_length=1024)
    replace_prefix_match: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _value_matches_type(self) -> HTTPPathModifier:
        found: list[tuple[Loc, str]] = []
        if self.type == "ReplaceFullPath":
            if self.replace_full_path is None:
                found.append((("replaceFullPath",), "required when type is ReplaceFullPath"))
            if self.replace_prefix_match is not None:
                found.append(
                    (("replacePrefixMatch",), "must not be set when type is ReplaceFullPath")
                )
        else:
            if self.replace_prefix_match is None:
                found.append((("replacePrefixMatch",), "required when type is ReplacePrefixMatch"))
            if self.replace_full_path is not None:
                found.append(
                    (("replaceFullPath",), "must not be set when type is ReplacePrefixMatch")
                )
        raise_problems(found)
        return self


class HTTPRequestRedirectFilter(Model):
    scheme: Literal["http", "https"] | None = None
    hostname: PreciseHostname | None = None
    path: HTTPPathModifier | None = None
    port: PortNumber | None = None
    status_code: Literal[301, 302, 303, 307, 308] = 302


class HTTPURLRewriteFilter(Model):
    hostname: PreciseHostname | None = None
    path: HTTPPathModifier | None = None


class Fraction(Model):
    numerator: Annotated[int, Between(0, 2**31 - 1)]
    denominator: Annotated[int, Between(1, 2**31 - 1)] = 100

    @model_validator(mode="after")
    def _at_most_one(self) -> Fraction:
        if self.numerator > self.denominator:
            raise_problems([(("numerator",), "must not be greater than denominator")])
        return self


class HTTPRequestMirrorFilter(Model):
    """Copies of requests go to `backendRef`; with neither percent nor fraction, all of them."""

    backend_ref: BackendObjectReference
    percent: Annotated[int, Between(0, 100)] | None = None
    fraction: Fraction | None = None

    @model_validator(mode="after")
    def _percent_or_fraction(self) -> HTTPRequestMirrorFilter:
        if self.percent is not None and self.fraction is not None:
            raise_problems([(("fraction",), "must not be set together with percent")])
        return self


_CORS_METHODS = Literal[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "*"
]


class HTTPCORSFilter(Model):
    allow_origins: list[
        Annotated[
            str,
            rule(
                lambda v: len(v) <= 253 and _CORS_ORIGIN.fullmatch(v) is not None,
                "must be '*' or an http(s) origin such as https://*.example.com:8443",
            ),
        ]
    ] = Field(default_factory=list, max_length=64)
    allow_credentials: bool | None = None
    allow_methods: list[_CORS_METHODS] = Field(default_factory=list, max_length=9)
    allow_headers: list[HeaderName] = Field(default_factory=list, max_length=64)
    expose_headers: list[HeaderName] = Field(default_factory=list, max_length=64)
    max_age: Annotated[int, Between(1, 2**31 - 1)] = 5

    @model_validator(mode="after")
    def _wildcard_alone(self) -> HTTPCORSFilter:
        found: list[tuple[Loc, str]] = []
        for field, values in (
            ("allowOrigins", self.allow_origins),
            ("allowMethods", self.allow_methods),
            ("allowHeaders", self.allow_headers),
        ):
            if "*" in values and len(values) > 1:
                found.append(((field,), "'*' must be the only entry when it is used"))
        raise_problems(found)
        return self


FilterType = Literal[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "ExtensionRef",
    "CORS",
]

# Each filter type and the one field that carries its configuration.
_FILTER_FIELDS: dict[str, str] = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
}
# Mirrors may go to several backends and extensions may stack; the rest act once.
_REPEATABLE_FILTERS = frozenset({"RequestMirror", "ExtensionRef"})


class HTTPRouteFilter(Model):
    """A union on `type`: exactly the field named for the type is set."""

    type: FilterType
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = None
    cors: HTTPCORSFilter | None = None
    extension_ref: LocalObjectReference | None = None

    @model_validator(mode="after")
    def _config_matches_type(self) -> HTTPRouteFilter:
        raise_problems(config_matches_type(self, self.type, _FILTER_FIELDS))
        return self


def config_matches_type(
    model: Model, type_: str, fields_by_type: dict[str, str]
) -> list[tuple[Loc, str]]:
    """A filter is a union on `type`: the field named for its type is set, no other.

    Shared by HTTPRoute's and GRPCRoute's filters, whose unions differ only in members.
    """
    found: list[tuple[Loc, str]] = []
    wanted = fields_by_type[type_]
    for name, info in type(model).model_fields.items():
        if name == "type":
            continue
        alias = info.alias or name
        is_set = getattr(model, name) is not None
        if alias == wanted and not is_set:
            found.append(((alias,), f"required when type is {type_}"))
        elif alias != wanted and is_set:
            found.append(((alias,), f"must not be set when type is {type_}"))
    return found


def _path_modifiers(f: HTTPRouteFilter) -> list[tuple[Loc, HTTPPathModifier]]:
    found: list[tuple[Loc, HTTPPathModifier]] = []
    if f.request_redirect is not None and f.request_redirect.path is not None:
        found.append((("requestRedirect", "path"), f.request_redirect.path))
    if f.url_rewrite is not None and f.url_rewrite.path is not None:
        found.append((("urlRewrite", "path"), f.url_rewrite.path))
    return found


def _filter_list_problems(
    filters: Sequence[HTTPRouteFilter], matches: Sequence[HTTPRouteMatch], at: Loc
) -> list[tuple[Loc, str]]:
    """The rules on a list of filters (a rule's, or a backendRef's); `at` is its path."""
    found: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    for i, f in enumerate(filters):
        if f.type in seen and f.type not in _REPEATABLE_FILTERS:
            found.append(
                ((*at, i, "type"), f"{f.type} filter cannot be repeated ({at[-1]}[{seen[f.type]}])")
            )
        seen.setdefault(f.type, i)
        for loc, modifier in _path_modifiers(f):
            # Which prefix to replace is only clear when there is one prefix to match.
            one_prefix = len(matches) == 1 and matches[0].path.type == "PathPrefix"
            if modifier.type == "ReplacePrefixMatch" and not one_prefix:
                found.append(
                    (
                        (*at, i, *loc, "replacePrefixMatch"),
                        "needs the rule to have exactly one match, of path type PathPrefix",
                    )
                )
    if "RequestRedirect" in seen and "URLRewrite" in seen:
        found.append(
            (
                (*at, seen["URLRewrite"], "type"),
                "URLRewrite cannot be combined with RequestRedirect",
            )
        )
    return found


# --- Rules --------------------------------------------------------------------------------


class HTTPBackendRef(BackendObjectReference):
    """Where matching requests go; `weight` is this backend's share (weight / sum of weights)."""

    weight: Annotated[int, Between(0, 1_000_000)] = 1
    filters: list[HTTPRouteFilter] = Field(default_factory=list, max_length=16)


class HTTPRouteTimeouts(Model):
    """`0s` turns a timeout off."""

    request: Duration | None = None
    backend_request: Duration | None = None

    @model_validator(mode="after")
    def _backend_within_request(self) -> HTTPRouteTimeouts:
        if self.request is not None and self.backend_request is not None:
            request = parse_duration(self.request)
            if request != 0 and parse_duration(self.backend_request) > request:
                raise_problems(
                    [(("backendRequest",), f"must not be longer than request ({self.request})")]
                )
        return self


def _code_problems(codes: list[int]) -> list[tuple[Loc, str]]:
    return [((i,), f"duplicate code {codes[i]} (codes[{j}])") for i, j in first_seen(codes)]


class HTTPRouteRetry(Model):
    codes: Annotated[list[Annotated[int, Between(400, 599)]], each(_code_problems)] = Field(
        default_factory=list
    )
    attempts: Annotated[int, Between(1, 2**31 - 1)] | None = None
    backoff: Duration | None = None


def _match_everything() -> list[HTTPRouteMatch]:
    return [HTTPRouteMatch()]


class HTTPRouteRule(Model):
    name: SectionName | None = None
    matches: list[HTTPRouteMatch] = Field(default_factory=_match_everything, max_length=64)
    """Any one of these (OR); defaults to a path prefix match on "/", i.e. everything."""
    filters: list[HTTPRouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[HTTPBackendRef] = Field(default_factory=list, max_length=16)
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None
    session_persistence: dict[str, Any] | None = None

    @field_validator("matches", mode="before")
    @classmethod
    def _empty_matches_match_everything(cls, value: Any) -> Any:
        # `matches: []` and no `matches` must mean the same, as in Kubernetes (where the
        # empty list is dropped before defaulting), or a round trip would change routing.
        return _match_everything() if value == [] else value

    @model_validator(mode="after")
    def _check_filters(self) -> HTTPRouteRule:
        found = _filter_list_problems(self.filters, self.matches, ("filters",))
        if self.backend_refs:
            for i, f in enumerate(self.filters):
                if f.type == "RequestRedirect":
                    found.append(
                        (
                            ("filters", i, "type"),
                            "RequestRedirect cannot be used together with backendRefs",
                        )
                    )
        for i, ref in enumerate(self.backend_refs):
            found += _filter_list_problems(ref.filters, self.matches, ("backendRefs", i, "filters"))
        raise_problems(found)
        return self


def _rule_problems(rules: list[HTTPRouteRule]) -> list[tuple[Loc, str]]:
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


def _parent_ref_problems(refs: list[ParentReference]) -> list[tuple[Loc, str]]:
    """Refs to one parent must each pick a distinct part of it, all in the same way."""
    found: list[tuple[Loc, str]] = []
    by_parent: dict[tuple[str, str, str, str], list[int]] = {}
    for i, ref in enumerate(refs):
        by_parent.setdefault((ref.group, ref.kind, ref.namespace or "", ref.name), []).append(i)
    for indexes in by_parent.values():
        parts = [(refs[i].section_name or "", refs[i].port or 0) for i in indexes]
        first_section, first_port = parts[0]
        for i, (section, port) in zip(indexes[1:], parts[1:], strict=True):
            if (section == "") != (first_section == "") or (port == 0) != (first_port == 0):
                found.append(
                    (
                        (i,),
                        f"refers to the same parent as parentRefs[{indexes[0]}]: "
                        "set sectionName (and port) on all refs to one parent, or on none",
                    )
                )
        found += [
            (
                (indexes[k],),
                f"duplicate of parentRefs[{indexes[j]}]: same parent, sectionName and port",
            )
            for k, j in first_seen(parts)
        ]
    return found


class HTTPRouteSpec(Model):
    parent_refs: Annotated[list[ParentReference], each(_parent_ref_problems)] = Field(
        default_factory=list, max_length=32
    )
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    rules: Annotated[list[HTTPRouteRule], each(_rule_problems)] = Field(
        default_factory=lambda: [HTTPRouteRule()], min_length=1, max_length=16
    )


class HTTPRoute(Model):
    api_version: Literal["gateway.networking.k8s.io/v1"] = "gateway.networking.k8s.io/v1"
    kind: Literal["HTTPRoute"] = "HTTPRoute"
    metadata: ObjectMeta
    spec: HTTPRouteSpec
    status: dict[str, Any] | None = None
