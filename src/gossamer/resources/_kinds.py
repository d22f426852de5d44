"""The kinds Gossamer knows, how users name them, and validation at the door."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

from pydantic import ValidationError

from gossamer.errors import FieldError, InvalidResource
from gossamer.resources._errors import field_errors
from gossamer.resources._limits import limit_errors
from gossamer.resources.authorizationpolicy import AuthorizationPolicy
from gossamer.resources.grpcroute import GRPCRoute
from gossamer.resources.host import Host
from gossamer.resources.httproute import HTTPRoute
from gossamer.resources.meshpolicy import MeshPolicy
from gossamer.resources.policies import (
    CircuitBreakerPolicy,
    FaultPolicy,
    OutlierPolicy,
    RetryPolicy,
)
from gossamer.resources.service import Service
from gossamer.resources.tcproute import TCPRoute
from gossamer.resources.trafficcontrol import TrafficControl
from gossamer.resources.workload import Workload

Resource: TypeAlias = (
    Service
    | Workload
    | HTTPRoute
    | GRPCRoute
    | TCPRoute
    | AuthorizationPolicy
    | MeshPolicy
    | RetryPolicy
    | OutlierPolicy
    | CircuitBreakerPolicy
    | FaultPolicy
    | TrafficControl
    | Host
)


@dataclass(frozen=True)
class KindInfo:
    """A kind as the API and the CLI name it (Kubernetes' APIResource, in short)."""

    kind: str
    api_version: str
    plural: str
    short_names: tuple[str, ...]
    namespaced: bool

    @property
    def group(self) -> str:
        """The API group; "" for the core group (Service)."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


_MODELS: Mapping[str, type[Resource]] = {
    "Service": Service,
    "Workload": Workload,
    "HTTPRoute": HTTPRoute,
    "GRPCRoute": GRPCRoute,
    "TCPRoute": TCPRoute,
    "AuthorizationPolicy": AuthorizationPolicy,
    "MeshPolicy": MeshPolicy,
    "RetryPolicy": RetryPolicy,
    "OutlierPolicy": OutlierPolicy,
    "CircuitBreakerPolicy": CircuitBreakerPolicy,
    "FaultPolicy": FaultPolicy,
    "TrafficControl": TrafficControl,
    "Host": Host,
}

KINDS: Mapping[str, KindInfo] = MappingProxyType(
    {
        "Service": KindInfo("Service", "v1", "services", ("svc",), namespaced=True),
        "Workload": KindInfo(
            "Workload", "gossamer.dev/v1alpha1", "workloads", ("wl",), namespaced=True
        ),
        "HTTPRoute": KindInfo(
            "HTTPRoute", "gateway.networking.k8s.io/v1", "httproutes", (), namespaced=True
        ),
        "GRPCRoute": KindInfo(
            "GRPCRoute", "gateway.networking.k8s.io/v1", "grpcroutes", (), namespaced=True
        ),
        "TCPRoute": KindInfo(
            "TCPRoute", "gateway.networking.k8s.io/v1alpha2", "tcproutes", (), namespaced=True
        ),
        "AuthorizationPolicy": KindInfo(
            "AuthorizationPolicy",
            "security.istio.io/v1",
            "authorizationpolicies",
            ("ap",),
            namespaced=True,
        ),
        "MeshPolicy": KindInfo(
            "MeshPolicy", "gossamer.dev/v1alpha1", "meshpolicies", ("mp",), namespaced=True
        ),
        "RetryPolicy": KindInfo(
            "RetryPolicy", "gossamer.dev/v1alpha1", "retrypolicies", (), namespaced=True
        ),
        "OutlierPolicy": KindInfo(
            "OutlierPolicy", "gossamer.dev/v1alpha1", "outlierpolicies", (), namespaced=True
        ),
        "CircuitBreakerPolicy": KindInfo(
            "CircuitBreakerPolicy",
            "gossamer.dev/v1alpha1",
            "circuitbreakerpolicies",
            (),
            namespaced=True,
        ),
        "FaultPolicy": KindInfo(
            "FaultPolicy", "gossamer.dev/v1alpha1", "faultpolicies", (), namespaced=True
        ),
        "TrafficControl": KindInfo(
            "TrafficControl", "gossamer.dev/v1alpha1", "trafficcontrols", ("tc",), namespaced=True
        ),
        # Per-host mode's node authorization (gossamer.controlplane.hosts).
        "Host": KindInfo("Host", "gossamer.dev/v1alpha1", "hosts", (), namespaced=True),
    }
)
"""Every kind, by its `kind` name."""

# Older versions with the same schema, read as the current one (the Kubernetes API server
# serves HTTPRoute at both, and much published YAML still says v1beta1).
_OTHER_API_VERSIONS: Mapping[str, tuple[str, ...]] = {
    "HTTPRoute": ("gateway.networking.k8s.io/v1beta1",),
    "AuthorizationPolicy": ("security.istio.io/v1beta1",),
}


def _names(info: KindInfo) -> list[str]:
    names = [info.kind.lower(), info.plural, *info.short_names]
    if info.group:
        names += [f"{name}.{info.group}" for name in (info.kind.lower(), info.plural)]
    return names


_BY_NAME: Mapping[str, KindInfo] = {name: info for info in KINDS.values() for name in _names(info)}


def _known_kinds() -> str:
    return ", ".join(
        f"{info.kind} ({', '.join([info.plural, *info.short_names])})"
        for info in sorted(KINDS.values(), key=lambda i: i.kind)
    )


def resolve_kind(name: str) -> KindInfo:
    """The kind a user means by `name`, as kubectl reads it: the kind, its plural or a
    short name, in any case (`svc`, `Services`, `HTTPRoute`), or `plural.group`.

    Raises InvalidResource with a FieldError at path "kind" that lists the known kinds.
    """
    info = _BY_NAME.get(name.strip().lower())
    if info is None:
        raise InvalidResource(
            [FieldError("kind", f'unknown kind "{name}"; known kinds: {_known_kinds()}')]
        )
    return info


def _subject(obj: Mapping[str, Any]) -> str:
    kind = obj.get("kind")
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    namespace = metadata.get("namespace", "default")
    name = metadata.get("name")
    # Named only by what could be valid: the subject heads every error message.
    kind = kind if isinstance(kind, str) and len(kind) <= 63 else "object"
    namespace = namespace if isinstance(namespace, str) and len(namespace) <= 63 else "?"
    name = name if isinstance(name, str) and len(name) <= 253 else "?"
    return f"{kind} {namespace}/{name}"


def _check_type(obj: Mapping[str, Any]) -> tuple[type[Resource] | None, list[FieldError]]:
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind is None:
        return None, [FieldError("kind", f"required; known kinds: {_known_kinds()}")]
    if not isinstance(kind, str) or kind not in KINDS:
        hint = ""
        if isinstance(kind, str) and (near := _BY_NAME.get(kind.lower())) is not None:
            hint = f' (did you mean "{near.kind}"?)'
        return None, [
            FieldError(
                "kind", f"unknown kind {_json_repr(kind)}{hint}; known kinds: {_known_kinds()}"
            )
        ]
    info = KINDS[kind]
    if api_version is None:
        return None, [FieldError("apiVersion", f"required (kind {kind} is {info.api_version})")]
    if api_version != info.api_version and api_version not in _OTHER_API_VERSIONS.get(kind, ()):
        return None, [
            FieldError(
                "apiVersion",
                f"must be {info.api_version} for kind {kind}, not {_json_repr(api_version)}",
            )
        ]
    return _MODELS[kind], []


def _json_repr(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def validate(obj: Mapping[str, Any]) -> Resource:
    """The typed resource `obj` describes, with Kubernetes' defaults filled in.

    Raises InvalidResource, subject like "Service default/echo", carrying every error
    found, each with its field path ("spec.ports[0].port") and a short reason. An object
    beyond the bounds in `gossamer.resources._limits` (size, string length, nesting) is
    refused with those errors alone, before its fields are checked.
    """
    if not isinstance(obj, Mapping):
        raise InvalidResource([FieldError("", "must be a mapping with apiVersion and kind")])
    subject = _subject(obj)
    # Bounds first: what follows (and the error messages, which quote values) then
    # works on an object of bounded size.
    if too_large := limit_errors(obj):
        raise InvalidResource(too_large, subject)
    model, errors = _check_type(obj)
    if model is None:
        raise InvalidResource(errors, subject)
    data = dict(obj)
    data["apiVersion"] = KINDS[data["kind"]].api_version
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidResource(field_errors(exc, model), subject) from None


def to_dict(resource: Resource) -> dict[str, Any]:
    """The plain Kubernetes-shaped dict (camelCase), defaults included, empty fields left
    out; `to_dict(validate(d))` is a fixed point of `validate` then `to_dict`."""
    return resource.model_dump(mode="json", by_alias=True)


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a kind (any name `resolve_kind` accepts), field names as on the
    wire. It uses `$defs`/`$ref`, which a CRD's openAPIV3Schema must have inlined."""
    return _MODELS[resolve_kind(kind).kind].model_json_schema(by_alias=True)
