"""The object model: Kubernetes-shaped resources, validated once, at the door.

    objects = parse_documents(text, source="app.yaml")    # YAML/JSON → dicts
    resources = [validate(obj) for obj in objects]        # dicts → typed, defaulted models
    to_dict(resources[0])                                 # back to the wire shape

Errors are `gossamer.errors.InvalidResource`, carrying every `FieldError` found, each
with a path such as `spec.ports[0].port`. The nested models of each kind live in
`gossamer.resources.service`, `.workload`, `.httproute` and `.meta`.
"""

from typing import TYPE_CHECKING, Any

from gossamer._lazy import load_export

if TYPE_CHECKING:
    from gossamer.resources._authority import (
        ServiceRef,
        resolve_authority,
    )
    from gossamer.resources._documents import (
        decode_text,
        load_json,
        parse_documents,
    )
    from gossamer.resources._kinds import (
        KINDS,
        KindInfo,
        Resource,
        json_schema,
        resolve_kind,
        to_dict,
        validate,
    )
    from gossamer.resources._names import (
        is_dns1035_label,
        is_dns1123_label,
        is_dns1123_subdomain,
        validate_label_key,
        validate_label_value,
    )
    from gossamer.resources.httproute import (
        HTTPRoute,
        HTTPRouteSpec,
        parse_duration,
    )
    from gossamer.resources.meta import (
        ObjectMeta,
    )
    from gossamer.resources.service import (
        Service,
        ServiceSpec,
    )
    from gossamer.resources.workload import (
        Workload,
        WorkloadSpec,
    )

_EXPORTS = {
    "ServiceRef": "gossamer.resources._authority",
    "resolve_authority": "gossamer.resources._authority",
    "decode_text": "gossamer.resources._documents",
    "load_json": "gossamer.resources._documents",
    "parse_documents": "gossamer.resources._documents",
    "KINDS": "gossamer.resources._kinds",
    "KindInfo": "gossamer.resources._kinds",
    "Resource": "gossamer.resources._kinds",
    "json_schema": "gossamer.resources._kinds",
    "resolve_kind": "gossamer.resources._kinds",
    "to_dict": "gossamer.resources._kinds",
    "validate": "gossamer.resources._kinds",
    "is_dns1035_label": "gossamer.resources._names",
    "is_dns1123_label": "gossamer.resources._names",
    "is_dns1123_subdomain": "gossamer.resources._names",
    "validate_label_key": "gossamer.resources._names",
    "validate_label_value": "gossamer.resources._names",
    "HTTPRoute": "gossamer.resources.httproute",
    "HTTPRouteSpec": "gossamer.resources.httproute",
    "parse_duration": "gossamer.resources.httproute",
    "ObjectMeta": "gossamer.resources.meta",
    "Service": "gossamer.resources.service",
    "ServiceSpec": "gossamer.resources.service",
    "Workload": "gossamer.resources.workload",
    "WorkloadSpec": "gossamer.resources.workload",
}

__all__ = [
    "KINDS",
    "HTTPRoute",
    "HTTPRouteSpec",
    "KindInfo",
    "ObjectMeta",
    "Resource",
    "Service",
    "ServiceRef",
    "ServiceSpec",
    "Workload",
    "WorkloadSpec",
    "decode_text",
    "is_dns1035_label",
    "is_dns1123_label",
    "is_dns1123_subdomain",
    "json_schema",
    "load_json",
    "parse_documents",
    "parse_duration",
    "resolve_authority",
    "resolve_kind",
    "to_dict",
    "validate",
    "validate_label_key",
    "validate_label_value",
]


def __getattr__(name: str) -> Any:
    return load_export(__name__, _EXPORTS, name, globals())
