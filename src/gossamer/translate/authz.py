"""Pure translation of the security kinds: which AuthorizationPolicies and MeshPolicies
apply to one workload, as the `security` part of its proxy's snapshot.

Scope follows Istio. A policy in the root namespace (`gossamer-system`) applies to the
whole mesh — with a selector, to the workloads it selects in every namespace; a policy
without a selector or targetRefs applies to every workload in its namespace; a selector
narrows it to the workloads whose labels match; `targetRefs` to a Service narrow it to
the workloads that Service selects. The proxy then compiles what is here with
`gossamer.authz.compile_security`, and so does `gossamer authz explain`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ROOT_NAMESPACE = "gossamer-system"
DEFAULT_MTLS_MODE = "STRICT"
DEFAULT_ACTION = "ALLOW_ALL"
DEFAULT_OUTBOUND_TRAFFIC = "ALLOW_ANY"

__all__ = [
    "DEFAULT_ACTION",
    "DEFAULT_MTLS_MODE",
    "ROOT_NAMESPACE",
    "AuthorizationPolicyView",
    "SecurityIndex",
    "SecurityView",
    "security_for",
]


@dataclass(frozen=True, slots=True)
class AuthorizationPolicyView:
    """One AuthorizationPolicy that applies, its rules as validated (Istio's camelCase)."""

    namespace: str
    name: str
    action: str  # ALLOW | DENY | AUDIT
    rules: tuple[Mapping[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class SecurityView:
    """The security part of a snapshot: the mTLS mode, the default and the policies."""

    mtls_mode: str = DEFAULT_MTLS_MODE  # STRICT | PERMISSIVE
    default_action: str = DEFAULT_ACTION  # ALLOW_ALL | ALLOW_AUTHENTICATED | DENY_ALL
    # The MeshPolicies ("ns/name") that set the mode and the default, for explaining.
    mtls_from: str | None = None
    default_from: str | None = None
    policies: tuple[AuthorizationPolicyView, ...] = ()
    # Captured traffic to addresses outside the mesh: ALLOW_ANY (passed through as
    # plain TCP) or REGISTRY_ONLY (refused), and the MeshPolicy that set it.
    outbound_traffic: str = DEFAULT_OUTBOUND_TRAFFIC
    outbound_from: str | None = None

    @staticmethod
    def from_dict(data: Mapping[str, Any] | None) -> SecurityView:
        if not data:
            return SecurityView()
        return SecurityView(
            mtls_mode=data.get("mtls_mode", DEFAULT_MTLS_MODE),
            default_action=data.get("default_action", DEFAULT_ACTION),
            mtls_from=data.get("mtls_from"),
            default_from=data.get("default_from"),
            policies=tuple(
                AuthorizationPolicyView(
                    namespace=p["namespace"],
                    name=p["name"],
                    action=p["action"],
                    rules=tuple(p.get("rules", ())),
                )
                for p in data.get("policies", ())
            ),
            outbound_traffic=data.get("outbound_traffic", DEFAULT_OUTBOUND_TRAFFIC),
            outbound_from=data.get("outbound_from"),
        )


@dataclass(frozen=True, slots=True)
class _Policy:
    namespace: str
    name: str
    order: tuple[str, str]  # (creationTimestamp, name): the oldest wins a tie, as in Istio
    selector: Mapping[str, str] | None
    target_services: tuple[str, ...]
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class SecurityIndex:
    """The security kinds of the store, indexed once per change (part of MeshView)."""

    authorization: tuple[_Policy, ...] = ()
    mesh: tuple[_Policy, ...] = ()
    # Services by (namespace, name) → selector, for targetRefs.
    service_selectors: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)

    @staticmethod
    def from_objects(objects: Iterable[Mapping[str, Any]]) -> SecurityIndex:
        authorization: list[_Policy] = []
        mesh: list[_Policy] = []
        selectors: dict[tuple[str, str], Mapping[str, str]] = {}
        for obj in objects:
            kind = obj["kind"]
            if kind not in ("AuthorizationPolicy", "MeshPolicy", "Service"):
                continue
            meta = obj["metadata"]
            ns, name = meta.get("namespace", "default"), meta["name"]
            spec = obj.get("spec") or {}
            if kind == "Service":
                selectors[(ns, name)] = dict(spec.get("selector") or {})
                continue
            selector = spec.get("selector")
            refs = list(spec.get("targetRefs") or ())
            if spec.get("targetRef"):
                refs.append(spec["targetRef"])
            policy = _Policy(
                namespace=ns,
                name=name,
                order=(str(meta.get("creationTimestamp") or ""), name),
                selector=dict(selector.get("matchLabels") or {}) if selector else None,
                target_services=tuple(r["name"] for r in refs if r.get("kind") == "Service"),
                spec=spec,
            )
            (authorization if kind == "AuthorizationPolicy" else mesh).append(policy)
        return SecurityIndex(
            tuple(sorted(authorization, key=lambda p: (p.namespace, p.name))),
            tuple(sorted(mesh, key=lambda p: p.order)),
            selectors,
        )


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _applies(
    policy: _Policy, index: SecurityIndex, namespace: str, labels: Mapping[str, str]
) -> bool:
    if policy.namespace != namespace and policy.namespace != ROOT_NAMESPACE:
        return False
    if policy.target_services:
        # A targetRef names a Service in the policy's own namespace (checked at apply).
        if policy.namespace != namespace:
            return False
        for svc in policy.target_services:
            selector = index.service_selectors.get((policy.namespace, svc))
            if selector and _labels_match(selector, labels):
                return True
        return False
    if policy.selector is not None:
        return _labels_match(policy.selector, labels)
    return True


def _specificity(policy: _Policy, namespace: str) -> int:
    """Workload (selector) 2 > namespace 1 > mesh (root namespace, no selector) 0."""
    if policy.selector:
        return 2
    return 1 if policy.namespace == namespace and namespace != ROOT_NAMESPACE else 0


def security_for(index: SecurityIndex, namespace: str, labels: Mapping[str, str]) -> SecurityView:
    """What applies to a workload in `namespace` with `labels` (pure)."""
    mtls_mode, mtls_from = DEFAULT_MTLS_MODE, None
    default_action, default_from = DEFAULT_ACTION, None
    outbound, outbound_from = DEFAULT_OUTBOUND_TRAFFIC, None
    mtls_level = default_level = outbound_level = -1
    for mp in index.mesh:  # oldest first: a later one must be more specific to win
        if not _applies(mp, index, namespace, labels):
            continue
        level = _specificity(mp, namespace)
        mode = (mp.spec.get("mtls") or {}).get("mode", "UNSET")
        if mode != "UNSET" and level > mtls_level:
            mtls_mode, mtls_from, mtls_level = mode, f"{mp.namespace}/{mp.name}", level
        action = mp.spec.get("defaultAction")
        if action and level > default_level:
            default_action, default_from = action, f"{mp.namespace}/{mp.name}"
            default_level = level
        mode = (mp.spec.get("outboundTrafficPolicy") or {}).get("mode")
        if mode and level > outbound_level:
            outbound, outbound_from, outbound_level = mode, f"{mp.namespace}/{mp.name}", level
    policies = tuple(
        AuthorizationPolicyView(
            namespace=p.namespace,
            name=p.name,
            action=str(p.spec.get("action", "ALLOW")),
            rules=tuple(p.spec.get("rules") or ()),
        )
        for p in index.authorization
        if _applies(p, index, namespace, labels)
    )
    return SecurityView(
        mtls_mode, default_action, mtls_from, default_from, policies, outbound, outbound_from
    )
