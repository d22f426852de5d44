"""Kinds by any name a user types, validation at the door, and the round trip back."""

from typing import Any

import pytest

from gossamer.errors import FieldError, InvalidResource
from gossamer.resources import (
    KINDS,
    HTTPRoute,
    Service,
    Workload,
    json_schema,
    resolve_kind,
    to_dict,
    validate,
)

# Every kind, as the error lists them: sorted by kind, plural and short names after it.
KNOWN = ", ".join(
    f"{i.kind} ({', '.join([i.plural, *i.short_names])})"
    for i in sorted(KINDS.values(), key=lambda i: i.kind)
)
assert (
    "Service (services, svc), TCPRoute (tcproutes), TrafficControl (trafficcontrols, tc), "
    "Workload (workloads, wl)"
) in KNOWN

SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "echo", "namespace": "shop", "labels": {"app": "echo"}},
    "spec": {
        "selector": {"app": "echo"},
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"},
            {"name": "grpc", "port": 9090, "protocol": "TCP"},
        ],
    },
}
WORKLOAD: dict[str, Any] = {
    "apiVersion": "gossamer.dev/v1alpha1",
    "kind": "Workload",
    "metadata": {"name": "echo-1", "namespace": "shop", "labels": {"app": "echo"}},
    "spec": {
        "address": "10.0.0.7",
        "inboundPort": 4143,
        "serviceAccount": "echo",
        "ports": [{"name": "http", "port": 8080, "appPort": 18080}, {"port": 9090}],
    },
}
HTTPROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "echo-split", "namespace": "shop"},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
        "rules": [
            {
                "matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
                "backendRefs": [{"name": "echo-v2", "port": 80}],
                "timeouts": {"request": "10s", "backendRequest": "2s"},
            },
            {
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"set": [{"name": "x-via", "value": "mesh"}]},
                    }
                ],
                "backendRefs": [
                    {"name": "echo-v1", "port": 80, "weight": 90},
                    {"name": "echo-v2", "port": 80, "weight": 10},
                ],
                "retry": {"codes": [503], "attempts": 2},
            },
        ],
    },
}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("service", "Service"), ("services", "Service"), ("svc", "Service"),
        ("Service", "Service"), ("SVC", "Service"), (" services ", "Service"),
        ("workload", "Workload"), ("workloads", "Workload"), ("wl", "Workload"),
        ("Workloads", "Workload"), ("workloads.gossamer.dev", "Workload"),
        ("httproute", "HTTPRoute"), ("httproutes", "HTTPRoute"), ("HTTPRoute", "HTTPRoute"),
        ("httproutes.gateway.networking.k8s.io", "HTTPRoute"),
    ],
    ids=lambda v: str(v),
)  # fmt: skip
def test_kind_aliases_resolve_as_kubectl_reads_them(name: str, kind: str) -> None:
    assert resolve_kind(name) is KINDS[kind]


def test_kind_info_describes_the_api_resource() -> None:
    info = resolve_kind("svc")
    assert (info.kind, info.api_version, info.plural, info.short_names, info.namespaced) == (
        "Service",
        "v1",
        "services",
        ("svc",),
        True,
    )
    assert (info.group, info.version) == ("", "v1")
    route = resolve_kind("httproutes")
    assert (route.group, route.version) == ("gateway.networking.k8s.io", "v1")


@pytest.mark.parametrize("name", ["pods", "", "service.v1", "routes"], ids=lambda v: repr(v))
def test_unknown_kind_names_list_the_known_kinds(name: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        resolve_kind(name)
    [error] = caught.value.errors
    assert error.path == "kind"
    assert error.reason == (f'unknown kind "{name}"; known kinds: {KNOWN}')


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}},
            FieldError("kind", f'unknown kind "Pod"; known kinds: {KNOWN}'),
        ),
        (
            {"apiVersion": "v1", "kind": "service", "metadata": {"name": "p"}},
            FieldError("kind", 'unknown kind "service" (did you mean "Service"?); known kinds: '
                       + KNOWN),
        ),
        (
            {"apiVersion": "v1", "metadata": {"name": "p"}},
            FieldError("kind", f"required; known kinds: {KNOWN}"),
        ),
        (
            {"apiVersion": "apps/v1", "kind": "Service", "metadata": {"name": "p"}},
            FieldError("apiVersion", 'must be v1 for kind Service, not "apps/v1"'),
        ),
        (
            {"kind": "Workload", "metadata": {"name": "p"}},
            FieldError("apiVersion", "required (kind Workload is gossamer.dev/v1alpha1)"),
        ),
    ],
    ids=["unknown kind", "kind in the wrong case", "no kind", "wrong apiVersion", "no apiVersion"],
)  # fmt: skip
def test_unknown_type_is_rejected_before_the_fields(
    obj: dict[str, Any], expected: FieldError
) -> None:
    with pytest.raises(InvalidResource) as caught:
        validate(obj)
    assert caught.value.errors == [expected]


@pytest.mark.parametrize(
    ("obj", "subject"),
    [
        ({**SERVICE, "spec": {}}, "Service shop/echo"),
        ({"apiVersion": "v1", "kind": "Service", "spec": {}}, "Service default/?"),
        ({"kind": 3}, "object default/?"),
    ],
    ids=["named", "no metadata", "kind not a string"],
)
def test_errors_name_the_object(obj: dict[str, Any], subject: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        validate(obj)
    assert caught.value.subject == subject


def test_a_non_mapping_is_not_an_object() -> None:
    with pytest.raises(InvalidResource) as caught:
        validate(["not", "an", "object"])  # type: ignore[arg-type]
    assert caught.value.errors == [FieldError("", "must be a mapping with apiVersion and kind")]


def test_metadata_must_be_a_mapping_with_a_name() -> None:
    with pytest.raises(InvalidResource) as caught:
        validate({**SERVICE, "metadata": "echo"})
    assert [str(e) for e in caught.value.errors] == ["metadata: must be a mapping"]
    with pytest.raises(InvalidResource) as caught:
        validate({**SERVICE, "metadata": {"namespace": "shop"}})
    assert [str(e) for e in caught.value.errors] == ["metadata.name: required"]


@pytest.mark.parametrize(
    ("obj", "model"),
    [(SERVICE, Service), (WORKLOAD, Workload), (HTTPROUTE, HTTPRoute)],
    ids=["Service", "Workload", "HTTPRoute"],
)
def test_round_trip_is_stable_and_idempotent(obj: dict[str, Any], model: type) -> None:
    resource = validate(obj)
    assert isinstance(resource, model)
    once = to_dict(resource)
    assert validate(once) == resource
    assert to_dict(validate(once)) == once
    # Nothing written but what was given or defaulted: every given field survives.
    assert _contains(once, obj)


def _contains(big: Any, small: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and _contains(big[k], v) for k, v in small.items()
        )
    if isinstance(small, list):
        return (
            isinstance(big, list)
            and len(big) == len(small)
            and all(_contains(b, s) for b, s in zip(big, small, strict=True))
        )
    return bool(big == small)


def test_empty_collections_are_left_out_like_omitempty() -> None:
    obj = {
        **SERVICE,
        "metadata": {"name": "echo", "labels": {}, "annotations": {}},
        "spec": {"selector": {}, "ports": [{"port": 80}], "clusterIPs": []},
        "status": {},
    }
    assert to_dict(validate(obj)) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {"ports": [{"protocol": "TCP", "port": 80, "targetPort": 80}], "type": "ClusterIP"},
    }


def test_validated_resources_are_immutable() -> None:
    service = validate(SERVICE)
    with pytest.raises(ValueError, match="frozen"):
        service.metadata.name = "other"  # type: ignore[misc]


def test_models_can_be_built_in_python_by_field_name() -> None:
    service = Service.model_validate(
        {"metadata": {"name": "echo"}, "spec": {"ports": [{"port": 80, "target_port": 8080}]}}
    )
    assert to_dict(service)["spec"]["ports"][0]["targetPort"] == 8080
    assert validate(to_dict(service)) == service


@pytest.mark.parametrize(
    "kind", ["Service", "wl", "httproutes"], ids=["Service", "Workload", "HTTPRoute"]
)
def test_json_schema_uses_wire_names_and_forbids_unknown_fields(kind: str) -> None:
    schema = json_schema(kind)
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"metadata", "spec"}


def test_json_schema_carries_ranges_and_patterns() -> None:
    defs = json_schema("svc")["$defs"]
    port = defs["ServicePort"]["properties"]["port"]
    assert (port["minimum"], port["maximum"]) == (1, 65535)
    assert defs["ServicePort"]["properties"]["protocol"]["default"] == "TCP"
    namespace = defs["ServiceMeta"]["properties"]["namespace"]
    assert namespace["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    route = json_schema("httproute")["$defs"]
    assert route["HTTPRouteTimeouts"]["properties"]["request"]["anyOf"][0]["pattern"] == (
        "^([0-9]{1,5}(h|m|s|ms)){1,4}$"
    )
