"""The object model: Kubernetes-shaped resources, validated once, at the door.

    objects = parse_documents(text, source="app.yaml")    # YAML/JSON → dicts
    resources = [validate(obj) for obj in objects]        # dicts → typed, defaulted models
    to_dict(resources[0])                                 # back to the wire shape

Errors are `gossamer.errors.InvalidResource`, carrying every `FieldError` found, each
with a path such as `spec.ports[0].port`. The nested models of each kind live in
`gossamer.resources.service`, `.workload`, `.httproute` and `.meta`.
"""

from gossamer.resources._authority import ServiceRef, resolve_authority
from gossamer.resources._documents import parse_documents
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
from gossamer.resources.httproute import HTTPRoute, HTTPRouteSpec, parse_duration
from gossamer.resources.meta import ObjectMeta
from gossamer.resources.service import Service, ServiceSpec
from gossamer.resources.workload import Workload, WorkloadSpec

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
    "is_dns1035_label",
    "is_dns1123_label",
    "is_dns1123_subdomain",
    "json_schema",
    "parse_documents",
    "parse_duration",
    "resolve_authority",
    "resolve_kind",
    "to_dict",
    "validate",
    "validate_label_key",
    "validate_label_value",
]
