"""Authorization, evaluated: Istio's AuthorizationPolicy semantics as a pure function.

`compile_security(view)` turns the `security` part of a snapshot into an `Authorizer`
once per snapshot; `Authorizer.check(request)` decides one request (or one TCP
connection) with no I/O, no regex and no allocation beyond the decision. The proxy's
inbound side and `gossamer authz explain` call the same two functions.

The order, as Istio documents it:

1. any DENY policy with a matching rule → denied by that policy;
2. no ALLOW policy → the mesh default (MeshPolicy `defaultAction`, ALLOW_ALL unless set);
3. an ALLOW policy with a matching rule → allowed by that policy;
4. otherwise → denied.

AUDIT policies never change the decision; the ones that match are listed in it.

Within a rule, `from`, `to` and `when` must all match (those present); within `from`
(or `to`) any one entry; within an entry every field set; within a field any value,
and for a `not*` field no value. Values match exactly, by prefix (`abc*`), suffix
(`*abc`) or presence (`*`: any non-empty value); an absent attribute (no principal on
a plaintext connection) matches no value and so passes every `not*` field.

Plain TCP has no method, path, host, headers or request principal. As in Istio, a rule
that uses such fields never matches in an ALLOW policy (the rule is dropped), while in
DENY and AUDIT policies those fields are ignored (the rule matches more): for TCP,
leaving out what cannot be checked never lets more through.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gossamer.translate.authz import AuthorizationPolicyView, SecurityView

__all__ = ["Authorizer", "Decision", "Request", "compile_security"]

SPIFFE: Final = "spiffe://"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(slots=True)
class Request:
    """What a decision looks at. For TCP leave the HTTP fields at None (`tcp=True`).

    `principal` is the peer's SPIFFE ID without `spiffe://` (Istio's principal form), or
    None for a plaintext peer; `namespace` is the namespace in it.
    """

    principal: str | None
    port: int
    source_ip: str = ""
    tcp: bool = False
    method: str | None = None
    path: str | None = None  # without the query string, as Istio's url_path
    host: str | None = None
    headers: Mapping[str, str] | Callable[[str], str | None] | None = None  # lowercased names
    sni: str | None = None
    destination_ip: str | None = None
    namespace: str | None = field(default=None)
    _ip: IPAddress | bool | None = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.namespace is None and self.principal is not None:
            parts = self.principal.split("/")
            if len(parts) == 5 and parts[1] == "ns":
                self.namespace = parts[2]

    def header(self, name: str) -> str | None:
        headers = self.headers
        if headers is None:
            return None
        if callable(headers):
            return headers(name)
        return headers.get(name)

    def ip(self) -> IPAddress | None:
        if self._ip is False:
            try:
                self._ip = ipaddress.ip_address(self.source_ip.split("%", 1)[0])
            except ValueError:
                self._ip = None
        return self._ip if not isinstance(self._ip, bool) else None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # what `gossamer-error` and the log line say when denied
    policy: str | None = None  # "ns/name" of the policy that decided, if one did
    rule: int | None = None  # the index of its rule that matched
    audited: tuple[str, ...] = ()  # AUDIT policies ("ns/name[rule]") that matched

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "policy": self.policy,
            "rule": self.rule,
            "reason": self.reason,
            "audited": list(self.audited),
        }


# ---- value matchers -------------------------------------------------------------------

Predicate = Callable[[Request], bool]


@dataclass(frozen=True, slots=True)
class _Strings:
    """Exact, prefix, suffix and presence matches, compiled to set and tuple lookups."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    presence: bool

    @staticmethod
    def of(values: Sequence[str], fold: bool = False) -> _Strings:
        exact, prefixes, suffixes, presence = set(), [], [], False
        for v in values:
            v = v.lower() if fold else v
            if v == "*":
                presence = True
            elif v.startswith("*"):
                suffixes.append(v[1:])
            elif v.endswith("*"):
                prefixes.append(v[:-1])
            else:
                exact.add(v)
        return _Strings(frozenset(exact), tuple(prefixes), tuple(suffixes), presence)

    def __call__(self, value: str | None) -> bool:
        if not value:  # absent or empty matches nothing, not even presence
            return False
        return (
            self.presence
            or value in self.exact
            or (bool(self.prefixes) and value.startswith(self.prefixes))
            or (bool(self.suffixes) and value.endswith(self.suffixes))
        )


def _ip_blocks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _in_blocks(blocks: tuple[IPNetwork, ...], ip: IPAddress | None) -> bool:
    return ip is not None and any(ip in b for b in blocks)


def _field(
    spec: Mapping[str, Any],
    name: str,
    attribute: Callable[[Request], str | None],
    fold: bool = False,
) -> list[Predicate]:
    out: list[Predicate] = []
    if values := spec.get(name):
        m = _Strings.of(values, fold)
        out.append(lambda r: m(attribute(r)))
    not_name = "not" + name[0].upper() + name[1:]
    if values := spec.get(not_name):
        n = _Strings.of(values, fold)
        out.append(lambda r: not n(attribute(r)))
    return out


def _ip_field(spec: Mapping[str, Any], name: str) -> list[Predicate]:
    out: list[Predicate] = []
    if values := spec.get(name):
        blocks = _ip_blocks(values)
        out.append(lambda r: _in_blocks(blocks, r.ip()))
    not_name = "not" + name[0].upper() + name[1:]
    if values := spec.get(not_name):
        not_blocks = _ip_blocks(values)
        out.append(lambda r: not _in_blocks(not_blocks, r.ip()))
    return out


def _principal(r: Request) -> str | None:
    return r.principal


def _namespace(r: Request) -> str | None:
    return r.namespace


def _no_request_principal(r: Request) -> str | None:
    # No RequestAuthentication (JWT) in Gossamer: a request principal is never present.
    return None


def _method(r: Request) -> str | None:
    return r.method


def _path(r: Request) -> str | None:
    return r.path


def _host(r: Request) -> str | None:
    return r.host.lower() if r.host is not None else None


_HTTP_SOURCE_FIELDS: Final = ("requestPrincipals", "notRequestPrincipals")
_HTTP_OPERATION_FIELDS: Final = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")


def _source(spec: Mapping[str, Any], tcp: bool) -> list[Predicate]:
    preds = _field(spec, "principals", _principal)
    preds += _field(spec, "namespaces", _namespace)
    preds += _ip_field(spec, "ipBlocks")
    # No trusted proxies in front of a Gossamer proxy: the remote IP is the peer's.
    preds += _ip_field(spec, "remoteIpBlocks")
    if not tcp:
        preds += _field(spec, "requestPrincipals", _no_request_principal)
    return preds


def _operation(spec: Mapping[str, Any], tcp: bool) -> list[Predicate]:
    preds: list[Predicate] = []
    if ports := spec.get("ports"):
        allowed = frozenset(int(p) for p in ports)
        preds.append(lambda r: r.port in allowed)
    if ports := spec.get("notPorts"):
        refused = frozenset(int(p) for p in ports)
        preds.append(lambda r: r.port not in refused)
    if not tcp:
        preds += _field(spec, "hosts", _host, fold=True)
        preds += _field(spec, "methods", _method)
        preds += _field(spec, "paths", _path)
    return preds


def _condition_attribute(key: str) -> tuple[Callable[[Request], str | None], bool]:
    """The attribute a condition key reads, and whether it is HTTP only."""
    if key.startswith("request.headers["):
        name = key[len("request.headers[") : -1].lower()
        return (lambda r: r.header(name)), True
    if key == "source.principal":
        return _principal, False
    if key == "source.namespace":
        return _namespace, False
    if key == "destination.port":
        return (lambda r: str(r.port)), False
    if key == "connection.sni":
        return (lambda r: r.sni), False
    if key.startswith("request.auth."):
        return _no_request_principal, True
    raise ValueError(key)  # IP keys are handled by the caller; others fail validation


def _condition(spec: Mapping[str, Any], tcp: bool) -> Predicate | None:
    """One `when` entry; None when it is HTTP-only and this is TCP."""
    key = spec["key"]
    values, not_values = spec.get("values") or (), spec.get("notValues") or ()
    if key in ("source.ip", "remote.ip", "destination.ip"):
        blocks, not_blocks = _ip_blocks(values), _ip_blocks(not_values)

        def ip_of(r: Request) -> IPAddress | None:
            if key != "destination.ip":
                return r.ip()
            try:
                return ipaddress.ip_address(r.destination_ip or "")
            except ValueError:
                return None

        def ip_condition(r: Request) -> bool:
            ip = ip_of(r)
            return (not blocks or _in_blocks(blocks, ip)) and not _in_blocks(not_blocks, ip)

        return ip_condition
    attribute, http_only = _condition_attribute(key)
    if http_only and tcp:
        return None
    m, n = _Strings.of(values), _Strings.of(not_values)

    def condition(r: Request) -> bool:
        value = attribute(r)
        return (not values or m(value)) and not (not_values and n(value))

    return condition


def has_http_fields(rule: Mapping[str, Any]) -> bool:
    """Whether a rule names anything only HTTP carries (methods, paths, hosts, request
    principals, headers): an ALLOW rule like that matches no TCP connection (Istio).
    The Envoy RBAC translation asks the same (gossamer.translate.envoy_rbac)."""
    for f in rule.get("from") or ():
        if any(f["source"].get(k) for k in _HTTP_SOURCE_FIELDS):
            return True
    for t in rule.get("to") or ():
        if any(t["operation"].get(k) for k in _HTTP_OPERATION_FIELDS):
            return True
    return any(
        c["key"].startswith(("request.headers[", "request.auth.")) for c in rule.get("when") or ()
    )


def _any_of(groups: list[list[Predicate]]) -> Predicate:
    def match(r: Request) -> bool:
        for preds in groups:
            for p in preds:
                if not p(r):
                    break
            else:
                return True
        return False

    return match


def _compile_rule(rule: Mapping[str, Any], tcp: bool) -> Predicate:
    parts: list[Predicate] = []
    if sources := rule.get("from"):
        parts.append(_any_of([_source(f["source"], tcp) for f in sources]))
    if operations := rule.get("to"):
        parts.append(_any_of([_operation(t["operation"], tcp) for t in operations]))
    for cond in rule.get("when") or ():
        if (c := _condition(cond, tcp)) is not None:
            parts.append(c)
    if not parts:
        return lambda r: True
    if len(parts) == 1:
        return parts[0]
    return lambda r: all(p(r) for p in parts)


@dataclass(frozen=True, slots=True)
class _CompiledPolicy:
    key: str  # "ns/name"
    http: tuple[tuple[int, Predicate], ...]
    tcp: tuple[tuple[int, Predicate], ...]
    # Made once here rather than per decision.
    denied: str
    allowed: str

    def first_match(self, r: Request) -> int | None:
        for i, pred in self.tcp if r.tcp else self.http:
            if pred(r):
                return i
        return None


def _compile_policy(view: AuthorizationPolicyView) -> _CompiledPolicy:
    http, tcp = [], []
    for i, rule in enumerate(view.rules):
        http.append((i, _compile_rule(rule, tcp=False)))
        if view.action == "ALLOW" and has_http_fields(rule):
            continue  # an ALLOW rule that needs HTTP never matches a TCP connection
        tcp.append((i, _compile_rule(rule, tcp=True)))
    return _CompiledPolicy(
        view.key, tuple(http), tuple(tcp), f"denied by {view.key}", f"allowed by {view.key}"
    )


@dataclass(frozen=True, slots=True)
class Authorizer:
    """The compiled policies for one workload; `check` is what the inbound side calls."""

    deny: tuple[_CompiledPolicy, ...] = ()
    allow: tuple[_CompiledPolicy, ...] = ()
    audit: tuple[_CompiledPolicy, ...] = ()
    default_action: str = "ALLOW_ALL"
    default_from: str | None = None

    @property
    def allows_everything(self) -> bool:
        """True when no request can be denied or audited: the hot path skips `check`."""
        return (
            not self.deny
            and not self.allow
            and not self.audit
            and self.default_action == "ALLOW_ALL"
        )

    def check(self, r: Request) -> Decision:
        audited: tuple[str, ...] = ()
        if self.audit:
            audited = tuple(
                f"{p.key}[{i}]" for p in self.audit if (i := p.first_match(r)) is not None
            )
        for p in self.deny:
            i = p.first_match(r)
            if i is not None:
                return Decision(False, p.denied, p.key, i, audited)
        if not self.allow:
            return self._default(r, audited)
        for p in self.allow:
            i = p.first_match(r)
            if i is not None:
                return Decision(True, p.allowed, p.key, i, audited)
        if len(self.allow) == 1:
            key = self.allow[0].key
            return Decision(False, f"denied by {key}: no rule matches", key, None, audited)
        keys = ", ".join(p.key for p in self.allow)
        return Decision(False, f"denied: no ALLOW policy matches ({keys})", None, None, audited)

    def _default(self, r: Request, audited: tuple[str, ...]) -> Decision:
        action, source = self.default_action, self.default_from
        where = f" ({source})" if source else ""
        if action == "ALLOW_ALL":
            return Decision(True, f"allowed: no ALLOW policy applies{where}", source, None, audited)
        if action == "ALLOW_AUTHENTICATED" and r.principal is not None:
            return Decision(
                True, f"allowed: authenticated peer, mesh default{where}", source, None, audited
            )
        why = "peer has no mesh identity" if action == "ALLOW_AUTHENTICATED" else "no ALLOW policy"
        return Decision(
            False, f"denied by mesh default {action}{where}: {why}", source, None, audited
        )


def compile_security(view: SecurityView) -> Authorizer:
    """Compile once per snapshot; the result is shared by every connection."""
    by_action: dict[str, list[_CompiledPolicy]] = {"ALLOW": [], "DENY": [], "AUDIT": []}
    for policy in view.policies:
        if policy.action in by_action:
            by_action[policy.action].append(_compile_policy(policy))
    return Authorizer(
        deny=tuple(by_action["DENY"]),
        allow=tuple(by_action["ALLOW"]),
        audit=tuple(by_action["AUDIT"]),
        default_action=view.default_action,
        default_from=view.default_from,
    )


def principal_of(spiffe_id: str | None) -> str | None:
    """`spiffe://td/ns/x/sa/y` → `td/ns/x/sa/y` (Istio's principal form)."""
    if spiffe_id is None:
        return None
    return spiffe_id[len(SPIFFE) :] if spiffe_id.startswith(SPIFFE) else spiffe_id
