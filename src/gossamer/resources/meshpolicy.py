"""`gossamer.dev/v1alpha1 MeshPolicy`: what the standards leave to each mesh — the mTLS
mode (Istio's PeerAuthentication) and the authorization default when no ALLOW policy
applies.

    apiVersion: gossamer.dev/v1alpha1
    kind: MeshPolicy
    metadata: {name: default, namespace: gossamer-system}   # the root namespace: mesh-wide
    spec:
      mtls: {mode: STRICT}                  # STRICT | PERMISSIVE | UNSET (inherit)
      defaultAction: ALLOW_AUTHENTICATED    # ALLOW_ALL | ALLOW_AUTHENTICATED | DENY_ALL

Scope works as for PeerAuthentication: a policy in the root namespace applies to the
whole mesh, one without a selector to its namespace, one with a selector to the
workloads it selects; each field is taken from the most specific policy that sets it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from gossamer.resources._base import Model
from gossamer.resources.authorizationpolicy import WorkloadSelector
from gossamer.resources.meta import ObjectMeta

__all__ = ["MeshPolicy", "MeshPolicySpec", "MutualTLS"]


class MutualTLS(Model):
    mode: Literal["UNSET", "STRICT", "PERMISSIVE"] = "UNSET"
    """STRICT: only mTLS from mesh peers. PERMISSIVE: plaintext is accepted too (for
    clients outside the mesh during a migration) and labelled `tls="false"`."""


class MeshPolicySpec(Model):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    default_action: Literal["ALLOW_ALL", "ALLOW_AUTHENTICATED", "DENY_ALL"] | None = None
    """What happens to a request when no ALLOW AuthorizationPolicy applies to the
    workload (DENY policies are checked first either way)."""


class MeshPolicy(Model):
    api_version: Literal["gossamer.dev/v1alpha1"] = "gossamer.dev/v1alpha1"
    kind: Literal["MeshPolicy"] = "MeshPolicy"
    metadata: ObjectMeta
    spec: MeshPolicySpec = Field(default_factory=MeshPolicySpec)
    status: dict[str, Any] | None = None
