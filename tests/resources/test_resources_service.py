"""v1 Service: the mesh reads its selector and ports; the rest of Kubernetes' shape applies."""

from typing import Any

import pytest

from gossamer.errors import FieldError, InvalidResource
from gossamer.resources import Service, to_dict, validate


def _service(name: str = "echo", **spec: Any) -> dict[str, Any]:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def _errors(obj: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidResource) as caught:
        validate(obj)
    return [str(e) for e in caught.value.errors]


def test_defaults_are_filled_as_kubernetes_fills_them() -> None:
    service = validate(_service(selector={"app": "echo"}, ports=[{"port": 80}]))
    assert isinstance(service, Service)
    assert service.metadata.namespace == "default"
    port = service.spec.ports[0]
    assert (port.protocol, port.target_port, port.name) == ("TCP", 80, None)
    assert service.spec.type == "ClusterIP"
    assert to_dict(service) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {
            "selector": {"app": "echo"},
            "ports": [{"protocol": "TCP", "port": 80, "targetPort": 80}],
            "type": "ClusterIP",
        },
    }


@pytest.mark.parametrize(
    ("target_port", "expected"),
    [(8080, 8080), ("http", "http"), ("grpc-web", "grpc-web")],
    ids=["a number", "a name", "a name with a dash"],
)
def test_target_port_is_a_number_or_a_workload_port_name(
    target_port: int | str, expected: int | str
) -> None:
    service = validate(_service(ports=[{"port": 80, "targetPort": target_port}]))
    assert isinstance(service, Service)
    assert service.spec.ports[0].target_port == expected


PORT_ERRORS = [
    ({"port": 0}, "spec.ports[0].port: must be 1-65535"),
    ({"port": 65536}, "spec.ports[0].port: must be 1-65535"),
    ({"port": "80"}, "spec.ports[0].port: must be an integer"),
    ({"port": 80.5}, "spec.ports[0].port: must be an integer"),
    ({"port": True}, "spec.ports[0].port: must be an integer"),
    ({}, "spec.ports[0].port: required"),
    ({"port": 80, "targetPort": 0}, "spec.ports[0].targetPort: must be 1-65535"),
    ({"port": 80, "targetPort": 70000}, "spec.ports[0].targetPort: must be 1-65535"),
    ({"port": 80, "targetPort": "8080"}, "spec.ports[0].targetPort: must be a port number"),
    ({"port": 80, "targetPort": "Http"}, "spec.ports[0].targetPort: must be a port number"),
    ({"port": 80, "targetPort": "a-very-long-port-name"}, "spec.ports[0].targetPort: must be"),
    ({"port": 80, "targetPort": True}, "spec.ports[0].targetPort: must be a port number"),
    ({"port": 80, "protocol": "HTTP"}, "spec.ports[0].protocol: must be 'TCP', 'UDP' or 'SCTP'"),
    ({"port": 80, "name": "HTTP"}, "spec.ports[0].name: must be a valid DNS-1123 label"),
    ({"port": 80, "appProtocol": "not valid"}, "spec.ports[0].appProtocol: name part must"),
    ({"port": 80, "bogus": 1}, "spec.ports[0].bogus: unknown field"),
]


@pytest.mark.parametrize(
    ("port", "expected"),
    PORT_ERRORS,
    ids=[
        "port zero", "port above 65535", "port as a string", "port as a float",
        "port as a boolean", "port missing", "targetPort zero", "targetPort above 65535",
        "targetPort digits as a string", "targetPort name with uppercase",
        "targetPort name over 15 characters", "targetPort a boolean", "unknown protocol",
        "uppercase port name", "appProtocol with a space", "unknown port field",
    ],
)  # fmt: skip
def test_port_errors_name_the_field_path(port: dict[str, Any], expected: str) -> None:
    errors = _errors(_service(ports=[port]))
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


def test_port_out_of_range_names_the_field_path() -> None:
    with pytest.raises(InvalidResource) as caught:
        validate(_service(ports=[{"port": 80, "name": "http"}, {"port": 0, "name": "x"}]))
    assert caught.value.errors == [FieldError("spec.ports[1].port", "must be 1-65535")]
    assert caught.value.subject == "Service default/echo"
    assert str(caught.value) == "Service default/echo: spec.ports[1].port: must be 1-65535"


def test_all_errors_are_reported_at_once() -> None:
    obj = _service(
        name="Echo",
        selector={"app": "echo", "bad key!": "x"},
        ports=[{"port": 0, "targetPort": -1}, {"port": 80, "protocol": "ICMP", "extra": 1}],
        typo=True,
    )
    obj["metadata"]["namespace"] = "No_Such"
    assert _errors(obj) == [
        "metadata.name: must be a valid DNS-1035 label: lowercase alphanumerics and '-', "
        "starting with a letter and ending with an alphanumeric, at most 63 characters",
        "metadata.namespace: must be a valid DNS-1123 label: lowercase alphanumerics and '-', "
        "starting and ending with an alphanumeric, at most 63 characters",
        'spec.selector["bad key!"]: invalid key: name part must consist of alphanumeric '
        "characters, '-', '_' or '.', and start and end with an alphanumeric character",
        "spec.ports[0].port: must be 1-65535",
        "spec.ports[0].targetPort: must be 1-65535",
        "spec.ports[1].protocol: must be 'TCP', 'UDP' or 'SCTP'",
        "spec.ports[1].extra: unknown field",
        "spec.typo: unknown field",
    ]


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        (
            [{"port": 80}, {"port": 81}],
            [
                "spec.ports[0].name: required when there is more than one port",
                "spec.ports[1].name: required when there is more than one port",
            ],
        ),
        (
            [{"port": 80, "name": "web"}, {"port": 81, "name": "web"}],
            ['spec.ports[1].name: duplicate name "web" (ports[0])'],
        ),
        (
            [{"port": 80, "name": "a"}, {"port": 80, "name": "b", "targetPort": 81}],
            ["spec.ports[1].port: duplicate port 80/TCP (ports[0])"],
        ),
    ],
    ids=["names missing", "names repeated", "port and protocol repeated"],
)
def test_several_ports_need_unique_names_and_numbers(
    ports: list[dict[str, Any]], expected: list[str]
) -> None:
    assert _errors(_service(ports=ports)) == expected


def test_null_fields_count_as_absent_as_in_kubernetes() -> None:
    obj = _service(ports=[{"port": 80, "targetPort": None, "name": None}], selector=None)
    obj["metadata"].update(creationTimestamp=None, labels=None)
    assert to_dict(validate(obj))["spec"] == {
        "ports": [{"protocol": "TCP", "port": 80, "targetPort": 80}],
        "type": "ClusterIP",
    }
    assert _errors(_service(ports=[{"port": None}])) == ["spec.ports[0].port: required"]


def test_the_same_port_number_may_serve_two_protocols() -> None:
    ports = [{"port": 53, "name": "dns", "protocol": "UDP"}, {"port": 53, "name": "dns-tcp"}]
    assert isinstance(validate(_service(ports=ports)), Service)


def test_ports_are_required_and_may_not_be_empty() -> None:
    assert _errors(_service(ports=[])) == ["spec.ports: must have at least 1 item"]
    obj = _service()
    del obj["spec"]["ports"]
    assert _errors(obj) == ["spec.ports: required"]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("echo", True), ("echo-v2", True), ("2echo", False), ("echo.v2", False), ("a" * 64, False)],
    ids=["a label", "with a dash", "leading digit", "with a dot", "64 characters"],
)
def test_service_name_must_be_a_dns1035_label(name: str, ok: bool) -> None:
    if ok:
        assert validate(_service(name=name)).metadata.name == name
    else:
        assert _errors(_service(name=name))[0].startswith(
            "metadata.name: must be a valid DNS-1035 label"
        )


def test_kubernetes_service_yaml_with_informational_fields_applies() -> None:
    obj = _service(
        type="LoadBalancer",
        clusterIP="10.96.0.10",
        clusterIPs=["10.96.0.10"],
        ipFamilies=["IPv4"],
        ipFamilyPolicy="SingleStack",
        sessionAffinity="None",
        internalTrafficPolicy="Cluster",
        externalTrafficPolicy="Local",
        ports=[{"port": 80, "nodePort": 30080, "appProtocol": "kubernetes.io/h2c"}],
    )
    obj["metadata"].update(
        resourceVersion="42",
        uid="c0ffee",
        generation=3,
        creationTimestamp="2024-01-01T00:00:00Z",
    )
    obj["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    out = to_dict(validate(obj))
    assert out["spec"]["clusterIP"] == "10.96.0.10"
    assert out["spec"]["ports"][0]["nodePort"] == 30080
    assert out["metadata"]["resourceVersion"] == "42"
    assert out["status"] == obj["status"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("ownerReferences", []), ("finalizers", ["x"]), ("generateName", "echo-")],
    ids=["ownerReferences", "finalizers", "generateName"],
)
def test_other_metadata_fields_are_unknown(field: str, value: Any) -> None:
    obj = _service()
    obj["metadata"][field] = value
    assert _errors(obj) == [f"metadata.{field}: unknown field"]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (
            {"app": "-bad-", "ok": "fine"},
            'metadata.labels["app"]: invalid value: must be empty or consist of alphanumeric '
            "characters, '-', '_' or '.', and start and end with an alphanumeric character",
        ),
        ({"x": 3}, 'metadata.labels["x"]: must be a string'),
        ({1: "x"}, 'metadata.labels["1"]: key must be a string'),
        ({"a/b/c": "x"}, 'metadata.labels["a/b/c"]: invalid key: must be a name'),
    ],
    ids=["bad value", "number value", "number key", "two slashes in the key"],
)
def test_label_errors_name_the_label(labels: dict[Any, Any], expected: str) -> None:
    obj = _service()
    obj["metadata"]["labels"] = labels
    errors = _errors(obj)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


def test_annotations_may_hold_any_value_but_not_more_than_256kib() -> None:
    obj = _service()
    obj["metadata"]["annotations"] = {"example.com/note": "any text: at all!"}
    assert validate(obj).metadata.annotations == {"example.com/note": "any text: at all!"}
    obj["metadata"]["annotations"] = {"big": "x" * (256 * 1024)}
    assert _errors(obj) == [
        "metadata.annotations: may not be more than 256KiB in total (is 262147 bytes)"
    ]
    obj["metadata"]["annotations"] = {"Bad Key": ""}
    assert _errors(obj)[0].startswith('metadata.annotations["Bad Key"]: invalid key:')


def test_uniqueness_is_checked_even_when_other_fields_have_errors() -> None:
    obj = _service(name="Echo", ports=[{"port": 80, "name": "a"}, {"port": 81, "name": "a"}])
    errors = _errors(obj)
    assert errors[0].startswith("metadata.name: ")
    assert errors[1:] == ['spec.ports[1].name: duplicate name "a" (ports[0])']
