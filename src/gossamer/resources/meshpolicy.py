"""`gossamer.dev/v1alpha1 MeshPolicy`: what the standards leave to each mesh — the mTLS
mode (Istio's PeerAuthentication), the authorization default when no ALLOW policy
applies, and telemetry (Istio's Telemetry: tracing and access logs).

    apiVersion: gossamer.dev/v1alpha1
    kind: MeshPolicy
    metadata: {name: default, namespace: gossamer-system}   # the root namespace: mesh-wide
    spec:
      mtls: {mode: STRICT}                  # STRICT | PERMISSIVE | UNSET (inherit)
      defaultAction: ALLOW_AUTHENTICATED    # ALLOW_ALL | ALLOW_AUTHENTICATED | DENY_ALL
      telemetry:
        tracing: {endpoint: "http://jaeger:4318", sampler: traceidratio, samplerArg: 0.1}
        accessLog: {enabled: true}          # JSON lines on the proxy's standard output

Scope works as for PeerAuthentication: a policy in the root namespace applies to the
whole mesh, one without a selector to its namespace, one with a selector to the
workloads it selects; each field is taken from the most specific policy that sets it.
The proxy's own environment (OTEL_*, GOSSAMER_ACCESS_LOG) wins over `telemetry`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from gossamer.resources._base import Model, invalid
from gossamer.resources.authorizationpolicy import WorkloadSelector
from gossamer.resources.meta import ObjectMeta

__all__ = ["AccessLogging", "MeshPolicy", "MeshPolicySpec", "MutualTLS", "Telemetry", "Tracing"]


class MutualTLS(Model):
    mode: Literal["UNSET", "STRICT", "PERMISSIVE"] = "UNSET"
    """STRICT: only mTLS from mesh peers. PERMISSIVE: plaintext is accepted too (for
    clients outside the mesh during a migration) and labelled `tls="false"`."""


def _otlp_endpoint(value: str) -> str:
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises on a bad port
    except ValueError as err:
        raise invalid(f"must be an http or https URL: {err}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise invalid("must be an http or https URL, e.g. http://otel-collector:4318")
    return value


def _ratio(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise invalid("must be 0-1")
    return value


class Tracing(Model):
    endpoint: Annotated[str, AfterValidator(_otlp_endpoint)] | None = None
    """The collector's OTLP/HTTP traces URL, as OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; one
    with no path gets `/v1/traces`. Tracing is on where an endpoint applies."""
    sampler: (
        Literal[
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ]
        | None
    ) = None
    """As OTEL_TRACES_SAMPLER (default parentbased_always_on)."""
    sampler_arg: Annotated[float, AfterValidator(_ratio)] | None = None
    """As OTEL_TRACES_SAMPLER_ARG: the ratio for the traceidratio samplers."""


class AccessLogging(Model):
    enabled: bool | None = None
    """JSON lines, one per request, on the proxy's standard output."""


class Telemetry(Model):
    tracing: Tracing | None = None
    access_log: AccessLogging | None = None


class OutboundTrafficPolicy(Model):
    mode: Literal["ALLOW_ANY", "REGISTRY_ONLY"] = "ALLOW_ANY"
    """What a captured app's connection to an address outside the mesh gets: passed
    through as plain TCP (ALLOW_ANY), or refused (REGISTRY_ONLY), as in Istio. Either
    way it is counted (gossamer_outside_mesh_connections_total)."""


class MeshPolicySpec(Model):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    telemetry: Telemetry | None = None
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    default_action: Literal["ALLOW_ALL", "ALLOW_AUTHENTICATED", "DENY_ALL"] | None = None
    """What happens to a request when no ALLOW AuthorizationPolicy applies to the
    workload (DENY policies are checked first either way)."""


class MeshPolicy(Model):
    api_version: Literal["gossamer.dev/v1alpha1"] = "gossamer.dev/v1alpha1"
    kind: Literal["MeshPolicy"] = "MeshPolicy"
    metadata: ObjectMeta
    spec: MeshPolicySpec = Field(default_factory=MeshPolicySpec)
    status: dict[str, Any] | None = None
