"""Pure translation of MeshPolicy `spec.telemetry`: the tracing and access log settings
that apply to one workload, as the `telemetry` part of its proxy's snapshot.

Scope is the MeshPolicy's (and so PeerAuthentication's and Istio Telemetry's): the root
namespace for the whole mesh, a namespace, or the workloads a selector picks. Each
setting — the tracing endpoint, sampler and sampler argument, and whether access logs
are on — is taken from the most specific policy that sets it, the oldest winning a tie,
exactly as the mTLS mode is (`gossamer.translate.authz.security_for`). The proxy applies
them where its own environment does not set the same thing (`DataPlane`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gossamer.translate.authz import SecurityIndex, _applies, _specificity

__all__ = ["TelemetryView", "otel_settings", "telemetry_for"]


@dataclass(frozen=True, slots=True)
class TelemetryView:
    """The telemetry part of a snapshot; None: no MeshPolicy sets it."""

    tracing_endpoint: str | None = None
    tracing_sampler: str | None = None
    tracing_sampler_arg: float | None = None
    access_log: bool | None = None
    # The MeshPolicies ("ns/name") that set each setting, for explaining.
    sources: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def from_dict(data: Mapping[str, Any] | None) -> TelemetryView:
        if not data:
            return TelemetryView()
        arg = data.get("tracing_sampler_arg")
        return TelemetryView(
            tracing_endpoint=data.get("tracing_endpoint"),
            tracing_sampler=data.get("tracing_sampler"),
            tracing_sampler_arg=None if arg is None else float(arg),
            access_log=data.get("access_log"),
            sources=tuple((str(k), str(v)) for k, v in data.get("sources", ())),
        )


# (setting, where it is in spec.telemetry)
_SETTINGS = (
    ("tracing_endpoint", ("tracing", "endpoint")),
    ("tracing_sampler", ("tracing", "sampler")),
    ("tracing_sampler_arg", ("tracing", "samplerArg")),
    ("access_log", ("accessLog", "enabled")),
)


def telemetry_for(index: SecurityIndex, namespace: str, labels: Mapping[str, str]) -> TelemetryView:
    """The telemetry settings that apply to a workload in `namespace` with `labels`."""
    found: dict[str, Any] = {}
    level_of: dict[str, int] = {}
    source: dict[str, str] = {}
    for mp in index.mesh:  # oldest first: a later one must be more specific to win
        telemetry = mp.spec.get("telemetry")
        if not telemetry or not _applies(mp, index, namespace, labels):
            continue
        level = _specificity(mp, namespace)
        for setting, (block, key) in _SETTINGS:
            value = (telemetry.get(block) or {}).get(key)
            if value is not None and level > level_of.get(setting, -1):
                found[setting], level_of[setting] = value, level
                source[setting] = f"{mp.namespace}/{mp.name}"
    arg = found.get("tracing_sampler_arg")
    return TelemetryView(
        tracing_endpoint=found.get("tracing_endpoint"),
        tracing_sampler=found.get("tracing_sampler"),
        tracing_sampler_arg=None if arg is None else float(arg),
        access_log=found.get("access_log"),
        sources=tuple(sorted(source.items())),
    )


def _traces_url(endpoint: str) -> str:
    """An endpoint with no path is a collector's base URL: spans go to /v1/traces."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def otel_settings(view: TelemetryView, env: Mapping[str, str]) -> dict[str, str]:
    """The OTEL_* settings a proxy uses: its environment `env`, and for what that does
    not set, the mesh config's `view`. The environment wins: an endpoint in it (either
    variable) overrides the mesh's endpoint, a sampler in it the mesh's sampler and
    its argument."""
    settings = dict(env)
    if view.tracing_endpoint and not any(
        env.get(k, "").strip()
        for k in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        settings["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = _traces_url(view.tracing_endpoint)
    if "OTEL_TRACES_SAMPLER" not in env:
        if view.tracing_sampler:
            settings["OTEL_TRACES_SAMPLER"] = view.tracing_sampler
        if view.tracing_sampler_arg is not None and "OTEL_TRACES_SAMPLER_ARG" not in env:
            settings["OTEL_TRACES_SAMPLER_ARG"] = repr(view.tracing_sampler_arg)
    return settings
