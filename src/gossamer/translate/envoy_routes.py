"""HTTPRoute and GRPCRoute rules (a snapshot's `routes`) as Envoy routes.

One Envoy route per `MatchSpec`, in the snapshot's precedence order (Envoy takes the
first route that matches, as the Gossamer proxy does); a request that matches none gets
Envoy's 404, as from the Gossamer proxy. What the Gateway API says and Envoy has are
close; the differences are in decision 0071.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gossamer.translate.routetypes import (
    FaultSpec,
    HeaderEdit,
    MatchSpec,
    RetrySpec,
    RuleSpec,
    ServicePolicy,
    ServiceRoutes,
)

__all__ = [
    "FAULT_FILTER",
    "UNRESOLVED_CLUSTER",
    "default_route",
    "duration",
    "retry_policy",
    "routes_for",
]

FAULT_FILTER = "envoy.filters.http.fault"
_FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"

ClusterName = Callable[[str, int], str]


def duration(seconds: float) -> str:
    """Protobuf JSON's Duration: seconds with up to nine decimals."""
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _path_match(m: MatchSpec) -> dict[str, Any]:
    if m.path_type == "Exact":
        return {"path": m.path}
    if m.path_type == "RegularExpression":
        return {"safe_regex": {"regex": m.path}}
    path = m.path.rstrip("/")
    # By path element (`/v1` matches `/v1` and `/v1/x`, not `/v10`), as the spec says.
    return {"path_separated_prefix": path} if path else {"prefix": "/"}


def _match(m: MatchSpec) -> dict[str, Any]:
    out = _path_match(m)
    headers = [{"name": h.name, "string_match": _value_match(h.type, h.value)} for h in m.headers]
    if m.method:
        headers.append({"name": ":method", "string_match": {"exact": m.method}})
    if headers:
        out["headers"] = headers
    if m.query:
        out["query_parameters"] = [
            {"name": q.name, "string_match": _value_match(q.type, q.value)} for q in m.query
        ]
    return out


def _value_match(kind: str, value: str) -> dict[str, Any]:
    if kind == "RegularExpression":
        return {"safe_regex": {"regex": value}}
    return {"exact": value}


def _header_edit(edit: HeaderEdit | None, prefix: str) -> dict[str, Any]:
    """A Gateway API header modifier as Envoy's `*_headers_to_add` / `_to_remove`."""
    if edit is None:
        return {}
    add = [
        {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for k, v in edit.set
    ]
    add += [
        {"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}
        for k, v in edit.add
    ]
    out: dict[str, Any] = {}
    if add:
        out[f"{prefix}_headers_to_add"] = add
    if edit.remove:
        out[f"{prefix}_headers_to_remove"] = list(edit.remove)
    return out


_RETRY_ON = {
    "connect-failure": "connect-failure",
    "reset": "reset",
    "gateway-error": "gateway-error",
    "5xx": "5xx",
    "refused-stream": "refused-stream",
}


def retry_policy(spec: RetrySpec) -> dict[str, Any]:
    """RetryPolicy or a rule's `retry`. gRPC's UNAVAILABLE is retried where 503 is, as
    the Gossamer proxy does. The budget is a cluster setting (see `cluster_limits`)."""
    on = [_RETRY_ON[c] for c in spec.on if c in _RETRY_ON]
    if spec.codes:
        on.append("retriable-status-codes")
    if "gateway-error" in spec.on or "5xx" in spec.on or 503 in spec.codes:
        on.append("unavailable")
    out: dict[str, Any] = {
        "retry_on": ",".join(dict.fromkeys(on)) or "connect-failure",
        "num_retries": spec.attempts,
        "retry_back_off": {
            "base_interval": duration(spec.backoff_base),
            "max_interval": duration(max(spec.backoff_max, spec.backoff_base)),
        },
    }
    if spec.codes:
        out["retriable_status_codes"] = list(spec.codes)
    if spec.per_try_timeout:
        out["per_try_timeout"] = duration(spec.per_try_timeout)
    return out


def _fault(spec: FaultSpec) -> dict[str, Any] | None:
    config: dict[str, Any] = {"@type": _FAULT_TYPE}
    if spec.delay is not None and spec.delay_percent > 0:
        config["delay"] = {
            "fixed_delay": duration(spec.delay),
            "percentage": _percent(spec.delay_percent),
        }
    if spec.abort_status is not None and spec.abort_percent > 0:
        config["abort"] = {
            "http_status": spec.abort_status,
            "percentage": _percent(spec.abort_percent),
        }
    return config if len(config) > 1 else None


def _percent(value: float) -> dict[str, Any]:
    # In millionths: FaultPolicy takes fractions of a percent.
    return {"numerator": round(value * 10_000), "denominator": "MILLION"}


def _action(rule: RuleSpec, policy: ServicePolicy | None, cluster: ClusterName) -> dict[str, Any]:
    """What a request matching `rule` gets: a redirect, a direct 500 naming why, or a
    route to its weighted backends with the rule's filters."""
    out: dict[str, Any] = {}
    if rule.error is not None:
        return {"direct_response": {"status": 500, "body": {"inline_string": rule.error}}}
    if rule.redirect is not None:
        return {"redirect": _redirect(rule)}
    live = [b for b in rule.backends if b.error is None]
    if not live:
        why = next((b.error for b in rule.backends if b.error), "the rule has no backend")
        return {"direct_response": {"status": 500, "body": {"inline_string": why}}}
    route: dict[str, Any] = {}
    if len(rule.backends) == 1:
        route["cluster"] = cluster(live[0].service, live[0].port)
    else:
        # A backend that does not resolve keeps its weight and answers 500, as the
        # spec asks; Envoy has no per-backend direct response, so it goes to a cluster
        # with no endpoints (503, `no healthy upstream`).
        route["weighted_clusters"] = {
            "clusters": [
                {
                    "name": cluster(b.service, b.port) if b.error is None else _UNRESOLVED_CLUSTER,
                    "weight": b.weight,
                    **_header_edit(b.request_headers, "request"),
                    **_header_edit(b.response_headers, "response"),
                }
                for b in rule.backends
                if b.weight > 0
            ]
        }
    if rule.rewrite is not None:
        if rule.rewrite.hostname:
            route["host_rewrite_literal"] = rule.rewrite.hostname
        path = rule.rewrite.path
        if path is not None and path.type == "ReplacePrefixMatch":
            route["prefix_rewrite"] = path.value if path.value != "/" or not rule.prefix else "/"
        elif path is not None:
            route["regex_rewrite"] = {"pattern": {"regex": "^.*$"}, "substitution": path.value}
    route["timeout"] = duration(rule.timeout) if rule.timeout else "0s"
    retry = rule.retry or (policy.retry if policy else None)
    if retry is not None and retry.attempts > 0:
        route["retry_policy"] = retry_policy(retry)
        if rule.backend_timeout:
            route["retry_policy"]["per_try_timeout"] = duration(rule.backend_timeout)
    elif rule.backend_timeout:
        route["retry_policy"] = {
            "retry_on": "connect-failure",
            "num_retries": 0,
            "per_try_timeout": duration(rule.backend_timeout),
        }
    if rule.mirrors:
        route["request_mirror_policies"] = [
            {
                "cluster": cluster(m.service, m.port),
                "runtime_fraction": {
                    "default_value": {
                        "numerator": round(m.numerator * 1_000_000 / m.denominator),
                        "denominator": "MILLION",
                    }
                },
            }
            for m in rule.mirrors
        ]
    out["route"] = route
    return out


_UNRESOLVED_CLUSTER = "unresolved-backend"


def _redirect(rule: RuleSpec) -> dict[str, Any]:
    spec = rule.redirect
    assert spec is not None
    out: dict[str, Any] = {}
    if spec.scheme:
        out["scheme_redirect"] = spec.scheme
    if spec.hostname:
        out["host_redirect"] = spec.hostname
    if spec.port:
        out["port_redirect"] = spec.port
    if spec.path is not None:
        if spec.path.type == "ReplaceFullPath":
            out["path_redirect"] = spec.path.value
        else:
            out["prefix_rewrite"] = spec.path.value
    out["response_code"] = {
        301: "MOVED_PERMANENTLY",
        302: "FOUND",
        303: "SEE_OTHER",
        307: "TEMPORARY_REDIRECT",
        308: "PERMANENT_REDIRECT",
    }.get(spec.status_code, "FOUND")
    return out


def _with_fault(route: dict[str, Any], policy: ServicePolicy | None) -> dict[str, Any]:
    if policy is not None and policy.fault is not None and "route" in route:
        fault = _fault(policy.fault)
        if fault is not None:
            route["typed_per_filter_config"] = {FAULT_FILTER: fault}
    return route


def routes_for(
    routes: ServiceRoutes, policy: ServicePolicy | None, cluster: ClusterName
) -> list[dict[str, Any]]:
    """The Envoy routes for one service port's merged HTTPRoutes, first match first."""
    out = []
    for m in routes.matches:
        rule = routes.rules[m.rule]
        route: dict[str, Any] = {
            "name": f"{rule.label} match {m.index}",
            "match": _match(m),
            **_action(rule, policy, cluster),
            **_header_edit(rule.request_headers, "request"),
            **_header_edit(rule.response_headers, "response"),
        }
        out.append(_with_fault(route, policy))
    return out


def default_route(
    service: str, port: int, policy: ServicePolicy | None, cluster: ClusterName
) -> dict[str, Any]:
    """A service port without routes: every request to its endpoints."""
    route: dict[str, Any] = {"cluster": cluster(service, port), "timeout": "0s"}
    if policy is not None and policy.retry is not None and policy.retry.attempts > 0:
        route["retry_policy"] = retry_policy(policy.retry)
    return _with_fault({"name": "default", "match": {"prefix": "/"}, "route": route}, policy)


UNRESOLVED_CLUSTER = _UNRESOLVED_CLUSTER
