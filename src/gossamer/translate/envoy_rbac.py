"""AuthorizationPolicy for Envoy: a snapshot's `security` part as RBAC filter configs.

The same Istio semantics `gossamer.authz.engine` applies in Gossamer's own proxy, as
Istio itself lays them out for Envoy (decision 0072):

- AUDIT policies: an RBAC filter with action LOG. Envoy never denies for it; a match
  sets the dynamic metadata `envoy.common.access_log_hint`, which an access log can
  filter on. That is all Envoy's RBAC can do for AUDIT.
- DENY policies: an RBAC filter with action DENY; any rule that matches denies (403).
- ALLOW policies: an RBAC filter with action ALLOW; a request no rule matches is
  denied. With no ALLOW policy, the mesh default decides: ALLOW_ALL adds no filter,
  DENY_ALL an ALLOW filter with no policy, ALLOW_AUTHENTICATED one that allows any
  authenticated peer.

Rules become RBAC policies named `NS/NAME[i]`; `from` becomes principals, `to`
permissions, and `when` conditions are ANDed into the permission (or the principal,
for source keys). For a TCP connection, as in the engine, an ALLOW rule with HTTP-only
fields never matches and a DENY rule's HTTP-only fields are left out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gossamer.authz.engine import has_http_fields
from gossamer.translate.authz import AuthorizationPolicyView, SecurityView

__all__ = ["http_rbac_filters", "network_rbac_filters"]

HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"

_ANY: dict[str, Any] = {"any": True}
_NOTHING: dict[str, Any] = {"not_id": {"any": True}}


def _string_match(value: str, fold: bool = False) -> dict[str, Any]:
    """Istio's string forms: `*` (present), `*suffix`, `prefix*`, exact."""
    extra = {"ignore_case": True} if fold else {}
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.startswith("*"):
        return {"suffix": value[1:], **extra}
    if value.endswith("*"):
        return {"prefix": value[:-1], **extra}
    return {"exact": value, **extra}


def _or(ids: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Any of `ids`; `kind` is "ids" for principals, "rules" for permissions (the
    names of the Set messages' fields)."""
    return ids[0] if len(ids) == 1 else {f"or_{kind}": {kind: ids}}


def _and(ids: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    if not ids:
        return _ANY
    return ids[0] if len(ids) == 1 else {f"and_{kind}": {kind: ids}}


def _negate(ident: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"not_id" if kind == "ids" else "not_rule": ident}


def _principal(value: str) -> dict[str, Any]:
    # Istio principals are SPIFFE IDs without the scheme.
    if value == "*":
        return {"authenticated": {}}
    if value.startswith("*"):
        match = {"suffix": value[1:]}
    elif value.endswith("*"):
        match = {"prefix": "spiffe://" + value[:-1]}
    else:
        match = {"exact": "spiffe://" + value}
    return {"authenticated": {"principal_name": match}}


def _namespace(value: str) -> dict[str, Any]:
    if value == "*":
        regex = r"spiffe://[^/]+/ns/[^/]+/sa/.*"
    elif value.startswith("*"):
        regex = r"spiffe://[^/]+/ns/[^/]*" + re.escape(value[1:]) + "/sa/.*"
    elif value.endswith("*"):
        regex = r"spiffe://[^/]+/ns/" + re.escape(value[:-1]) + "[^/]*/sa/.*"
    else:
        regex = r"spiffe://[^/]+/ns/" + re.escape(value) + "/sa/.*"
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}}


def _cidr(value: str) -> dict[str, Any]:
    address, _, length = value.partition("/")
    if not length:
        length = "128" if ":" in address else "32"
    return {"address_prefix": address, "prefix_len": int(length)}


def _header(name: str, value: str, fold: bool = False) -> dict[str, Any]:
    return {"header": {"name": name, "string_match": _string_match(value, fold)}}


def _path(value: str) -> dict[str, Any]:
    return {"url_path": {"path": _string_match(value)}}


def _field(spec: Mapping[str, Any], name: str, make: Any, kind: str) -> list[dict[str, Any]]:
    """`name` and `notName` of one source or operation: any value of `name`, and none
    of `notName`."""
    out: list[dict[str, Any]] = []
    if values := spec.get(name):
        out.append(_or([make(v) for v in values], kind))
    not_name = "not" + name[0].upper() + name[1:]
    if values := spec.get(not_name):
        out.append(_negate(_or([make(v) for v in values], kind), kind))
    return out


def _source(spec: Mapping[str, Any], tcp: bool) -> dict[str, Any]:
    ids = _field(spec, "principals", _principal, "ids")
    ids += _field(spec, "namespaces", _namespace, "ids")
    ids += _field(spec, "ipBlocks", lambda v: {"direct_remote_ip": _cidr(v)}, "ids")
    ids += _field(spec, "remoteIpBlocks", lambda v: {"remote_ip": _cidr(v)}, "ids")
    if not tcp and spec.get("requestPrincipals"):
        ids.append(_NOTHING)  # no JWT in Gossamer: a request principal is never present
    return _and(ids, "ids")


def _operation(spec: Mapping[str, Any], tcp: bool) -> dict[str, Any]:
    rules = _field(spec, "ports", lambda v: {"destination_port": int(v)}, "rules")
    if not tcp:
        rules += _field(spec, "hosts", lambda v: _header(":authority", v, fold=True), "rules")
        rules += _field(spec, "methods", lambda v: _header(":method", v), "rules")
        rules += _field(spec, "paths", _path, "rules")
    return _and(rules, "rules")


def _condition(spec: Mapping[str, Any], tcp: bool) -> tuple[str, dict[str, Any]] | None:
    """One `when` entry as ("principal" | "permission", matcher); None when it is
    HTTP-only and this is TCP."""
    key = spec["key"]
    values, not_values = spec.get("values") or (), spec.get("notValues") or ()

    def both(make: Any, kind: str) -> dict[str, Any]:
        ids = []
        if values:
            ids.append(_or([make(v) for v in values], kind))
        if not_values:
            ids.append(_negate(_or([make(v) for v in not_values], kind), kind))
        return _and(ids, kind)

    if key == "source.ip":
        return "principal", both(lambda v: {"direct_remote_ip": _cidr(v)}, "ids")
    if key == "remote.ip":
        return "principal", both(lambda v: {"remote_ip": _cidr(v)}, "ids")
    if key == "destination.ip":
        return "permission", both(lambda v: {"destination_ip": _cidr(v)}, "rules")
    if key == "source.principal":
        return "principal", both(_principal, "ids")
    if key == "source.namespace":
        return "principal", both(_namespace, "ids")
    if key == "destination.port":
        return "permission", both(lambda v: {"destination_port": int(v)}, "rules")
    if key == "connection.sni":
        return "permission", both(lambda v: {"requested_server_name": _string_match(v)}, "rules")
    if tcp:
        return None
    if key.startswith("request.headers["):
        name = key[len("request.headers[") : -1].lower()
        return "permission", both(lambda v: _header(name, v), "rules")
    # request.auth.*: never present without JWT; only notValues can hold.
    return "principal", (_NOTHING if values else _ANY)


def _rule(rule: Mapping[str, Any], tcp: bool) -> dict[str, Any]:
    principals: list[dict[str, Any]] = []
    permissions: list[dict[str, Any]] = []
    if sources := rule.get("from"):
        principals.append(_or([_source(f["source"], tcp) for f in sources], "ids"))
    if operations := rule.get("to"):
        permissions.append(_or([_operation(t["operation"], tcp) for t in operations], "rules"))
    for cond in rule.get("when") or ():
        if (c := _condition(cond, tcp)) is not None:
            (principals if c[0] == "principal" else permissions).append(c[1])
    return {
        "permissions": [_and(permissions, "rules")],
        "principals": [_and(principals, "ids")],
    }


def _policies(views: Sequence[AuthorizationPolicyView], tcp: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for view in views:
        for i, rule in enumerate(view.rules):
            if tcp and view.action == "ALLOW" and has_http_fields(rule):
                continue  # an ALLOW rule that needs HTTP never matches a TCP connection
            out[f"{view.key}[{i}]"] = _rule(rule, tcp)
    return out


def _filters(security: SecurityView, tcp: bool, type_url: str, name: str) -> list[dict[str, Any]]:
    by_action: dict[str, list[AuthorizationPolicyView]] = {"AUDIT": [], "DENY": [], "ALLOW": []}
    for view in security.policies:
        by_action.setdefault(view.action, []).append(view)
    out = []
    prefix = "tcp." if tcp else "http."

    def add(suffix: str, action: str, policies: dict[str, Any]) -> None:
        rules = {"action": action, "policies": policies}
        config: dict[str, Any] = {"@type": type_url, "rules": rules}
        if tcp:
            config["stat_prefix"] = prefix + suffix
        else:
            config["rules_stat_prefix"] = prefix + suffix + "."
        out.append({"name": name, "typed_config": config})

    if by_action["AUDIT"]:
        add("audit", "LOG", _policies(by_action["AUDIT"], tcp))
    if by_action["DENY"]:
        add("deny", "DENY", _policies(by_action["DENY"], tcp))
    if by_action["ALLOW"]:
        add("allow", "ALLOW", _policies(by_action["ALLOW"], tcp))
    elif security.default_action == "DENY_ALL":
        add("allow", "ALLOW", {})
    elif security.default_action == "ALLOW_AUTHENTICATED":
        authenticated = {"permissions": [_ANY], "principals": [{"authenticated": {}}]}
        add("allow", "ALLOW", {"mesh-default/ALLOW_AUTHENTICATED": authenticated})
    return out


def http_rbac_filters(security: SecurityView) -> list[dict[str, Any]]:
    """The HTTP filters, in the order they run: audit, deny, allow."""
    return _filters(security, False, HTTP_RBAC, "envoy.filters.http.rbac")


def network_rbac_filters(security: SecurityView) -> list[dict[str, Any]]:
    """The same for opaque TCP connections (network filters before tcp_proxy)."""
    return _filters(security, True, NETWORK_RBAC, "envoy.filters.network.rbac")
