"""HTTPRoute rules compiled for the hot path, and the filters they apply.

`Router` is built once per snapshot from a `ServiceRoutes` (matches already in the
specification's precedence order, see gossamer.translate.routes): patterns compiled,
values encoded to bytes, header names lowercased. `Router.match` then walks the
matches in order and returns the first rule whose match fits the request, with no
compiling and, unless a match looks at headers or query parameters, no allocation.

The path functions (`path_matches`, `replace_prefix`, `redirect_location`) are pure
and follow the Gateway API's tables exactly; the tests run the spec's cases on them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar
from urllib.parse import parse_qsl

from gossamer.proxy.policy.resilience import RetryPolicy
from gossamer.translate.routetypes import (
    BackendTarget,
    HeaderEdit,
    MatchSpec,
    PathModifierSpec,
    RedirectSpec,
    RuleSpec,
    ServiceRoutes,
)

Headers = list[tuple[bytes, bytes]]
B = TypeVar("B")

EXACT: Final = 0
PREFIX: Final = 1
REGEX: Final = 2
_KINDS: Final = {"Exact": EXACT, "PathPrefix": PREFIX, "RegularExpression": REGEX}
_WELL_KNOWN_PORTS: Final = {"http": 80, "https": 443}


# ---- paths ------------------------------------------------------------------------------


def path_matches(kind: int, value: bytes, path: bytes, pattern: re.Pattern[bytes] | None) -> bool:
    """Whether `path` (no query) matches.

    PathPrefix compares whole path elements: `/abc` matches `/abc`, `/abc/` and
    `/abc/def` but not `/abcd`; a trailing `/` in the prefix is ignored.
    """
    if kind == PREFIX:
        # `value` is stored without its trailing "/" ("" for "/").
        if not path.startswith(value):
            return False
        n = len(value)
        return len(path) == n or path[n] == 47  # "/"
    if kind == EXACT:
        return path == value
    assert pattern is not None
    return pattern.fullmatch(path) is not None


def replace_prefix(path: str, prefix: str, replacement: str) -> str:
    """ReplacePrefixMatch: `prefix` (the rule's PathPrefix) at the start of `path`
    becomes `replacement`, element-wise, as in the spec's table:
    /foo/bar with /foo → /xyz is /xyz/bar; /foo with /foo → "" is /."""
    rest = path[len(prefix.rstrip("/")) :]
    out = replacement.rstrip("/") + rest
    return out or "/"


def modified_path(path: str, modifier: PathModifierSpec | None, prefix: str | None) -> str:
    if modifier is None:
        return path
    if modifier.type == "ReplaceFullPath":
        return modifier.value
    return replace_prefix(path, prefix or "/", modifier.value)


def redirect_location(
    spec: RedirectSpec, host: str, path: str, query: str, listener_port: int, prefix: str | None
) -> str:
    """The Location of a RequestRedirect.

    Scheme and hostname default to the request's (http; the Host without its port).
    The port is the filter's; else the well-known port of the filter's scheme; else the
    port the request was sent to (the Service port, a mesh's "listener"). It is left
    out when it is the scheme's well-known port.
    """
    scheme = spec.scheme or "http"
    hostname = spec.hostname or _strip_port(host)
    if spec.port is not None:
        port = spec.port
    elif spec.scheme is not None:
        port = _WELL_KNOWN_PORTS.get(spec.scheme, listener_port)
    else:
        port = listener_port
    authority = hostname if _WELL_KNOWN_PORTS.get(scheme) == port else f"{hostname}:{port}"
    target = modified_path(path, spec.path, prefix)
    return f"{scheme}://{authority}{target}{'?' + query if query else ''}"


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.index("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# ---- headers ----------------------------------------------------------------------------


class CompiledHeaderEdit:
    """A RequestHeaderModifier or ResponseHeaderModifier, ready to apply to bytes."""

    __slots__ = ("add", "drop", "set")

    def __init__(self, edit: HeaderEdit) -> None:
        self.set = [(n.encode(), v.encode()) for n, v in edit.set]
        self.add = [(n.encode(), v.encode()) for n, v in edit.add]
        # Names whose current values go: removed ones and set ones (set replaces).
        self.drop = frozenset(
            [n.encode().lower() for n in edit.remove] + [n.lower() for n, _ in self.set]
        )

    def apply(self, headers: Headers) -> Headers:
        """The headers after the edit: set replaces, add appends to an existing value
        (comma-separated, as the spec's example: `foo` add `bar` is `foo,bar`)."""
        out = [(n, v) for n, v in headers if n.lower() not in self.drop]
        out.extend(self.set)
        for name, value in self.add:
            lower = name.lower()
            for i, (n, v) in enumerate(out):
                if n.lower() == lower:
                    out[i] = (n, v + b"," + value)
                    break
            else:
                out.append((name, value))
        return out


def chain_edits(*edits: CompiledHeaderEdit | None) -> Callable[[Headers], Headers] | None:
    present = [e for e in edits if e is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0].apply

    def apply(headers: Headers) -> Headers:
        for e in present:
            headers = e.apply(headers)
        return headers

    return apply


# ---- matching ---------------------------------------------------------------------------


class CompiledMatch(Generic[B]):
    __slots__ = ("headers", "kind", "method", "path", "pattern", "query", "rule", "spec")

    def __init__(self, spec: MatchSpec, rule: CompiledRule[B]) -> None:
        self.spec = spec
        self.rule = rule
        self.kind = _KINDS[spec.path_type]
        self.path = spec.path.encode()
        if self.kind == PREFIX:
            self.path = self.path.rstrip(b"/")
        self.pattern = re.compile(self.path) if self.kind == REGEX else None
        self.method = spec.method.encode() if spec.method else None
        self.headers = tuple(
            (h.name.encode(), h.value.encode() if h.type == "Exact" else None,
             re.compile(h.value.encode()) if h.type != "Exact" else None)
            for h in spec.headers
        )  # fmt: skip
        self.query = tuple(
            (q.name, q.value if q.type == "Exact" else None,
             re.compile(q.value) if q.type != "Exact" else None)
            for q in spec.query
        )  # fmt: skip


class CompiledBackend(Generic[B]):
    __slots__ = ("error", "request_edit", "response_edit", "spec", "target", "weight")

    def __init__(
        self, spec: BackendTarget, target: B | None, weight: int, error: str | None
    ) -> None:
        self.spec = spec
        self.target = target
        self.weight = weight
        self.error = error
        self.request_edit: CompiledHeaderEdit | None = None
        self.response_edit: CompiledHeaderEdit | None = None


class CompiledRule(Generic[B]):
    """One rule: its filters compiled, its backends resolved to `B` (the proxy's Route)."""

    __slots__ = (
        "backends",
        "cumulative",
        "label",
        "mirrors",
        "request_edit",
        "response_edit",
        "retry",
        "rng",
        "spec",
        "total",
    )

    def __init__(
        self,
        spec: RuleSpec,
        resolve: Callable[[str, int], B | None],
        rng: random.Random,
    ) -> None:
        self.spec = spec
        self.label = spec.label
        self.rng = rng
        self.retry: RetryPolicy | None = None  # the rule's own `retry`, set by the table
        self.request_edit = (
            CompiledHeaderEdit(spec.request_headers) if spec.request_headers else None
        )
        self.response_edit = (
            CompiledHeaderEdit(spec.response_headers) if spec.response_headers else None
        )
        self.backends: list[CompiledBackend[B]] = []
        for b in spec.backends:
            target = resolve(b.service, b.port) if b.error is None else None
            error = b.error
            if error is None and target is None:
                error = f"backend {b.service}:{b.port} is not known to this proxy"
            cb: CompiledBackend[B] = CompiledBackend(b, target, b.weight, error)
            if b.request_headers is not None:
                cb.request_edit = CompiledHeaderEdit(b.request_headers)
            if b.response_headers is not None:
                cb.response_edit = CompiledHeaderEdit(b.response_headers)
            self.backends.append(cb)
        self.cumulative: list[int] = []
        total = 0
        for cb in self.backends:
            total += cb.weight
            self.cumulative.append(total)
        self.total = total
        self.mirrors: list[tuple[B, float]] = []
        for m in spec.mirrors:
            target = resolve(m.service, m.port)
            if target is not None and m.numerator > 0:
                self.mirrors.append((target, m.numerator / m.denominator))

    def pick(self) -> CompiledBackend[B] | None:
        """A backend drawn by weight; None when every weight is 0."""
        total = self.total
        if total <= 0:
            return None
        backends = self.backends
        if len(backends) == 1:
            return backends[0]
        x = self.rng.random() * total
        for cb, upto in zip(backends, self.cumulative, strict=True):
            if x < upto:
                return cb
        return backends[-1]


class Router(Generic[B]):
    """The merged HTTPRoutes of one service port, compiled."""

    __slots__ = ("matches", "needs_headers", "needs_query", "routes", "rules", "spec")

    def __init__(
        self,
        spec: ServiceRoutes,
        resolve: Callable[[str, int], B | None],
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.routes = spec.routes
        r = rng or random.Random()
        self.rules = [CompiledRule(rule, resolve, r) for rule in spec.rules]
        self.matches: list[CompiledMatch[B]] = [
            CompiledMatch(m, self.rules[m.rule]) for m in spec.matches
        ]
        self.needs_headers = any(m.headers for m in self.matches)
        self.needs_query = any(m.query for m in self.matches)

    def match(
        self,
        method: bytes,
        target: bytes,
        host: bytes | None,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> CompiledMatch[B] | None:
        """The first match (in precedence order) that fits the request, or None (404)."""
        q = target.find(b"?")
        path = target if q < 0 else target[:q]
        header_map: dict[bytes, bytes] | None = None
        query_map: dict[str, str] | None = None
        for m in self.matches:
            if m.method is not None and m.method != method:
                continue
            if not path_matches(m.kind, m.path, path, m.pattern):
                continue
            if m.headers:
                if header_map is None:
                    header_map = _header_map(headers, host)
                if not _headers_match(m.headers, header_map):
                    continue
            if m.query:
                if query_map is None:
                    query_map = _query_map(target[q + 1 :] if q >= 0 else b"")
                if not _query_match(m.query, query_map):
                    continue
            return m
        return None


def _header_map(headers: Sequence[tuple[bytes, bytes]], host: bytes | None) -> dict[bytes, bytes]:
    # A repeated header reads as its values joined with ", " (RFC 9110 5.3).
    out: dict[bytes, bytes] = {}
    for name, value in headers:
        lower = name.lower()
        seen = out.get(lower)
        out[lower] = value if seen is None else seen + b", " + value
    if host is not None:
        out[b"host"] = host
    return out


def _headers_match(
    wanted: tuple[tuple[bytes, bytes | None, re.Pattern[bytes] | None], ...],
    have: dict[bytes, bytes],
) -> bool:
    for name, exact, pattern in wanted:
        value = have.get(name)
        if value is None:
            return False
        if exact is not None:
            if value != exact:
                return False
        elif pattern is not None and pattern.fullmatch(value) is None:
            return False
    return True


def _query_map(raw: bytes) -> dict[str, str]:
    # The first value of a repeated parameter counts (the spec leaves repeats undefined).
    out: dict[str, str] = {}
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        out.setdefault(name, value)
    return out


def _query_match(
    wanted: tuple[tuple[str, str | None, re.Pattern[str] | None], ...], have: dict[str, str]
) -> bool:
    for name, exact, pattern in wanted:
        value = have.get(name)
        if value is None:
            return False
        if exact is not None:
            if value != exact:
                return False
        elif pattern is not None and pattern.fullmatch(value) is None:
            return False
    return True


def why_not(
    m: CompiledMatch[B],
    method: bytes,
    target: bytes,
    host: bytes | None,
    headers: Sequence[tuple[bytes, bytes]],
) -> str | None:
    """Why `m` does not fit the request (None when it does): for `gossamer routes`."""
    q = target.find(b"?")
    path = target if q < 0 else target[:q]
    spec = m.spec
    if m.method is not None and m.method != method:
        return f"method is {method.decode()}, not {spec.method}"
    if not path_matches(m.kind, m.path, path, m.pattern):
        return f"path {path.decode('latin-1')} does not match {spec.path_type} {spec.path}"
    have = _header_map(headers, host)
    for h in spec.headers:
        if not _headers_match(tuple(x for x in m.headers if x[0] == h.name.encode()), have):
            got = have.get(h.name.encode())
            shown = "absent" if got is None else repr(got.decode("latin-1"))
            return f"header {h.name} is {shown}, wanted {h.type} {h.value!r}"
    query = _query_map(target[q + 1 :] if q >= 0 else b"")
    for qp in spec.query:
        if not _query_match(tuple(x for x in m.query if x[0] == qp.name), query):
            value = query.get(qp.name, "absent")
            return f"query parameter {qp.name} is {value!r}, wanted {qp.type} {qp.value!r}"
    return None


def describe_match(spec: MatchSpec) -> str:
    parts = [f"{spec.path_type} {spec.path}"]
    if spec.method:
        parts.append(f"method {spec.method}")
    parts += [
        f"header {h.name} {'=' if h.type == 'Exact' else '~'} {h.value}" for h in spec.headers
    ]
    parts += [f"query {q.name} {'=' if q.type == 'Exact' else '~'} {q.value}" for q in spec.query]
    return ", ".join(parts)
