"""`security.istio.io/v1 AuthorizationPolicy`: who may call what, Istio's shape and rules.

Field names follow Istio's `security/v1beta1/authorization.proto`, so its reference
page reads straight onto this module. What Gossamer does not do is refused at the door
rather than silently ignored: the CUSTOM action and `provider` (no external
authorizers). Values are checked harder than Istio does where a value could never
match (a principal written with `spiffe://`, a path without a leading `/`, a `*` in
the middle of a value, which Istio would compare literally), because a policy that
silently matches nothing is the most dangerous kind of typo.

Match forms, for every string list except `ipBlocks`, `ports` and a condition's `key`:
exact `abc`, prefix `abc*`, suffix `*abc`, presence `*` (any non-empty value).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from gossamer.resources._base import LabelMap, Model, invalid, raise_problems
from gossamer.resources._limits import MAX_POLICY_RULES, MAX_RULE_PARTS, MAX_VALUES
from gossamer.resources._names import is_dns1123_label
from gossamer.resources.meta import ObjectMeta

__all__ = [
    "AuthorizationPolicy",
    "AuthorizationPolicySpec",
    "Condition",
    "Operation",
    "PolicyTargetReference",
    "Rule",
    "RuleFrom",
    "RuleTo",
    "Source",
    "WorkloadSelector",
    "condition_key_problem",
]

_SEGMENT = r"[A-Za-z0-9._-]+"
_PRINCIPAL = re.compile(rf"[a-z0-9._-]+/ns/{_SEGMENT}/sa/{_SEGMENT}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _wildcard_problem(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if value == "*":
        return None
    if "*" in value[1:-1] or (value.startswith("*") and value.endswith("*")):
        return (
            f'"{value}": "*" may only start (suffix match) or end (prefix match) a value, '
            "or be the whole value (presence match)"
        )
    return None


def _match_value(value: str) -> str:
    if (problem := _wildcard_problem(value)) is not None:
        raise invalid(problem)
    return value


def _principal_problem(value: str) -> str | None:
    if (problem := _wildcard_problem(value)) is not None:
        return problem
    if value.startswith("spiffe://"):
        return f'write principals without "spiffe://": "{value.removeprefix("spiffe://")}"'
    if "*" in value:
        return "must not contain whitespace" if any(c.isspace() for c in value) else None
    if not _PRINCIPAL.fullmatch(value):
        return (
            f'"{value}" is not a principal: expected TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT '
            '(e.g. "cluster.local/ns/default/sa/web"), or a prefix/suffix match with "*"'
        )
    return None


def _principal(value: str) -> str:
    if (problem := _principal_problem(value)) is not None:
        raise invalid(problem)
    return value


def _namespace(value: str) -> str:
    _match_value(value)
    if "*" not in value and not is_dns1123_label(value):
        raise invalid(f'"{value}" is not a namespace name (a DNS-1123 label)')
    return value


def _ip_block_problem(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f'"{value}" is not an IP address or CIDR block (e.g. 10.0.0.0/8, 192.168.1.7)'
    return None


def _ip_block(value: str) -> str:
    if (problem := _ip_block_problem(value)) is not None:
        raise invalid(problem)
    return value


def _port_problem(value: str) -> str | None:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        return f'"{value}" is not a port: a number 1-65535, as a string ("8080")'
    return None


def _port(value: str) -> str:
    if (problem := _port_problem(value)) is not None:
        raise invalid(problem)
    return value


def _path(value: str) -> str:
    _match_value(value)
    if not value.startswith(("/", "*")):
        raise invalid(f'"{value}" must start with "/" (or "*" for a suffix match)')
    return value


Value = Annotated[str, AfterValidator(_match_value)]
Principal = Annotated[str, AfterValidator(_principal)]
Namespace = Annotated[str, AfterValidator(_namespace)]
IPBlock = Annotated[str, AfterValidator(_ip_block)]
Port = Annotated[str, AfterValidator(_port)]
Path = Annotated[str, AfterValidator(_path)]


class WorkloadSelector(Model):
    match_labels: LabelMap = Field(default_factory=dict)


class PolicyTargetReference(Model):
    """Istio allows Gateways here too; Gossamer has none, so only a Service."""

    group: Literal["", "core"] = ""
    kind: Literal["Service"]
    name: Annotated[str, Field(min_length=1)]
    namespace: str | None = None


class Source(Model):
    principals: list[Principal] = Field(default_factory=list, max_length=MAX_VALUES)
    not_principals: list[Principal] = Field(default_factory=list, max_length=MAX_VALUES)
    request_principals: list[Value] = Field(default_factory=list, max_length=MAX_VALUES)
    not_request_principals: list[Value] = Field(default_factory=list, max_length=MAX_VALUES)
    namespaces: list[Namespace] = Field(default_factory=list, max_length=MAX_VALUES)
    not_namespaces: list[Namespace] = Field(default_factory=list, max_length=MAX_VALUES)
    ip_blocks: list[IPBlock] = Field(default_factory=list, max_length=MAX_VALUES)
    not_ip_blocks: list[IPBlock] = Field(default_factory=list, max_length=MAX_VALUES)
    remote_ip_blocks: list[IPBlock] = Field(default_factory=list, max_length=MAX_VALUES)
    not_remote_ip_blocks: list[IPBlock] = Field(default_factory=list, max_length=MAX_VALUES)

    @model_validator(mode="after")
    def _not_empty(self) -> Source:
        if not any(getattr(self, name) for name in type(self).model_fields):
            raise invalid("must set at least one field (to match any source, leave `from` out)")
        return self


class Operation(Model):
    hosts: list[Value] = Field(default_factory=list, max_length=MAX_VALUES)
    not_hosts: list[Value] = Field(default_factory=list, max_length=MAX_VALUES)
    ports: list[Port] = Field(default_factory=list, max_length=MAX_VALUES)
    not_ports: list[Port] = Field(default_factory=list, max_length=MAX_VALUES)
    methods: list[Value] = Field(default_factory=list, max_length=MAX_VALUES)
    not_methods: list[Value] = Field(default_factory=list, max_length=MAX_VALUES)
    paths: list[Path] = Field(default_factory=list, max_length=MAX_VALUES)
    not_paths: list[Path] = Field(default_factory=list, max_length=MAX_VALUES)

    @model_validator(mode="after")
    def _not_empty(self) -> Operation:
        if not any(getattr(self, name) for name in type(self).model_fields):
            raise invalid("must set at least one field (to match any operation, leave `to` out)")
        return self


class RuleFrom(Model):
    source: Source


class RuleTo(Model):
    operation: Operation


# The condition keys Gossamer can evaluate, and how each one's values are checked.
_HEADER_KEY = re.compile(r"request\.headers\[(.*)\]")
_CLAIMS_KEY = re.compile(r"request\.auth\.claims\[(.+)\]")
_PLAIN_KEYS = {
    "source.ip": _ip_block_problem,
    "remote.ip": _ip_block_problem,
    "destination.ip": _ip_block_problem,
    "source.namespace": None,
    "source.principal": _principal_problem,
    "destination.port": _port_problem,
    "connection.sni": None,
    "request.auth.principal": None,
    "request.auth.audiences": None,
    "request.auth.presenter": None,
}


def condition_key_problem(key: str) -> str | None:
    """Why `key` is not a condition key Gossamer knows, or None."""
    if key in _PLAIN_KEYS or _CLAIMS_KEY.fullmatch(key):
        return None
    if (m := _HEADER_KEY.fullmatch(key)) is not None:
        if not _HEADER_NAME.fullmatch(m.group(1)):
            return f'"{m.group(1)}" is not an HTTP header name'
        return None
    known = ", ".join(["request.headers[NAME]", *_PLAIN_KEYS, "request.auth.claims[NAME]"])
    return f'unknown condition key "{key}"; known keys: {known}'


class Condition(Model):
    key: str
    values: list[str] = Field(default_factory=list, max_length=MAX_VALUES)
    not_values: list[str] = Field(default_factory=list, max_length=MAX_VALUES)

    @model_validator(mode="after")
    def _check(self) -> Condition:
        found: list[tuple[tuple[str | int, ...], str]] = []
        if (problem := condition_key_problem(self.key)) is not None:
            found.append((("key",), problem))
        else:
            check = _PLAIN_KEYS.get(self.key)
            for field in ("values", "not_values"):
                for i, value in enumerate(getattr(self, field)):
                    problem = _wildcard_problem(value) or (check(value) if check else None)
                    if problem is not None:
                        found.append(((_camel(field), i), problem))
        if not self.values and not self.not_values:
            found.append(((), f'set values or notValues for key "{self.key}"'))
        raise_problems(found)
        return self


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(p.title() for p in rest)


class Rule(Model):
    """A rule matches when every part present matches: any `from`, any `to`, all `when`."""

    from_: list[RuleFrom] = Field(default_factory=list, alias="from", max_length=MAX_RULE_PARTS)
    to: list[RuleTo] = Field(default_factory=list, max_length=MAX_RULE_PARTS)
    when: list[Condition] = Field(default_factory=list, max_length=MAX_RULE_PARTS)


class ExtensionProvider(Model):
    name: str


class AuthorizationPolicySpec(Model):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] = Field(
        default_factory=list, max_length=MAX_RULE_PARTS
    )
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: ExtensionProvider | None = None
    rules: list[Rule] = Field(default_factory=list, max_length=MAX_POLICY_RULES)
    """No rules: the policy never matches (an ALLOW policy then allows nothing);
    one empty rule `{}` matches every request."""

    @model_validator(mode="after")
    def _check(self) -> AuthorizationPolicySpec:
        found: list[tuple[tuple[str | int, ...], str]] = []
        if self.action == "CUSTOM":
            found.append(
                (
                    ("action",),
                    "CUSTOM is not supported (Gossamer has no external authorizers); "
                    "use ALLOW, DENY or AUDIT",
                )
            )
        if self.provider is not None and self.action != "CUSTOM":
            found.append((("provider",), "only allowed with action CUSTOM"))
        if self.selector is not None and (self.target_ref or self.target_refs):
            found.append((("selector",), "set either selector or targetRefs, not both"))
        if self.target_ref is not None and self.target_refs:
            found.append((("targetRef",), "set either targetRef or targetRefs, not both"))
        raise_problems(found)
        return self


class AuthorizationPolicy(Model):
    api_version: Literal["security.istio.io/v1"] = "security.istio.io/v1"
    kind: Literal["AuthorizationPolicy"] = "AuthorizationPolicy"
    metadata: ObjectMeta
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _same_namespace_targets(self) -> AuthorizationPolicy:
        refs = list(self.spec.target_refs)
        if self.spec.target_ref is not None:
            refs.append(self.spec.target_ref)
        found: list[tuple[tuple[str | int, ...], str]] = []
        for i, ref in enumerate(refs):
            if ref.namespace is not None and ref.namespace != self.metadata.namespace:
                loc: tuple[str | int, ...] = (
                    ("spec", "targetRefs", i, "namespace")
                    if i < len(self.spec.target_refs)
                    else ("spec", "targetRef", "namespace")
                )
                found.append(
                    (loc, f"must be the policy's own namespace ({self.metadata.namespace})")
                )
        raise_problems(found)
        return self
