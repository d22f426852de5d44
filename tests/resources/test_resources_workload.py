"""gossamer.dev/v1alpha1 Workload: one instance, registered by its proxy."""

from typing import Any

import pytest

from gossamer.errors import InvalidResource
from gossamer.resources import Workload, to_dict, validate


def _workload(name: str = "echo-1", **spec: Any) -> dict[str, Any]:
    spec = {"address": "10.0.0.7", "inboundPort": 4143, **spec}
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "echo"}},
        "spec": spec,
    }


def _errors(obj: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidResource) as caught:
        validate(obj)
    return [str(e) for e in caught.value.errors]


def test_defaults_are_filled() -> None:
    workload = validate(_workload(ports=[{"port": 8080, "name": "http"}]))
    assert isinstance(workload, Workload)
    assert workload.spec.service_account == "default"
    assert workload.spec.ports[0].app_port == 8080
    assert to_dict(workload)["spec"] == {
        "address": "10.0.0.7",
        "inboundPort": 4143,
        "serviceAccount": "default",
        "ports": [{"name": "http", "port": 8080, "appPort": 8080}],
    }


def test_a_workload_may_have_no_ports() -> None:
    workload = validate(_workload())
    assert isinstance(workload, Workload)
    assert workload.spec.ports == []


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("10.0.0.7", "10.0.0.7"),
        ("2001:DB8::1", "2001:db8::1"),
        ("vm-1.example.com", "vm-1.example.com"),
        ("VM-1.Example.com", "vm-1.example.com"),
        ("localhost", "localhost"),
    ],
    ids=["IPv4", "IPv6, normalized", "a DNS name", "a DNS name, lowercased", "a single label"],
)
def test_address_is_an_ip_or_a_dns_name(address: str, stored: str) -> None:
    workload = validate(_workload(address=address))
    assert isinstance(workload, Workload)
    assert workload.spec.address == stored


@pytest.mark.parametrize(
    "address",
    ["", "10.0.0.256", "[::1]", "host_name", "http://vm-1", "vm-1.example.com:8080", "1.2.3"],
    ids=[
        "empty", "IPv4 out of range", "bracketed IPv6", "underscore", "a URL", "with a port",
        "all-numeric name",
    ],
)  # fmt: skip
def test_address_rejects_anything_else(address: str) -> None:
    assert _errors(_workload(address=address)) == [
        "spec.address: must be an IPv4 or IPv6 address, or a DNS name (e.g. vm-1.example.com)"
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"inboundPort": 0}, ["spec.inboundPort: must be 1-65535"]),
        ({"inboundPort": "4143"}, ["spec.inboundPort: must be an integer"]),
        ({"serviceAccount": "Web_SA"}, ["spec.serviceAccount: must be a valid DNS-1123 subdomain"]),
        ({"ports": [{"port": 70000}]}, ["spec.ports[0].port: must be 1-65535"]),
        ({"ports": [{"port": 80, "appPort": 0}]}, ["spec.ports[0].appPort: must be 1-65535"]),
        ({"ports": [{"port": 80, "name": "123"}]}, ["spec.ports[0].name: must be a valid port"]),
        (
            {"ports": [{"port": 80, "name": "http"}, {"port": 81, "name": "http"}]},
            ['spec.ports[1].name: duplicate name "http" (ports[0])'],
        ),
        (
            {"ports": [{"port": 80}, {"port": 80, "appPort": 81}]},
            ["spec.ports[1].port: duplicate port 80 (ports[0])"],
        ),
        ({"weight": 1}, ["spec.weight: unknown field"]),
    ],
    ids=[
        "inbound port zero", "inbound port as a string", "service account with underscore",
        "port out of range", "app port zero", "port name without a letter",
        "port names repeated", "port numbers repeated", "unknown field",
    ],
)  # fmt: skip
def test_spec_errors_name_the_field_path(spec: dict[str, Any], expected: list[str]) -> None:
    errors = _errors(_workload(**spec))
    assert len(errors) == len(expected), errors
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(start)


def test_address_and_inbound_port_are_required() -> None:
    obj = _workload()
    obj["spec"] = {}
    assert _errors(obj) == ["spec.address: required", "spec.inboundPort: required"]


def test_workload_names_are_dns1123_subdomains() -> None:
    assert validate(_workload(name="echo-1.vm")).metadata.name == "echo-1.vm"
    assert _errors(_workload(name="Echo"))[0].startswith(
        "metadata.name: must be a valid DNS-1123 subdomain"
    )
