"""What a workload sends the host proxy: every malformed registration is refused with
the field it got wrong, never a crash."""

from __future__ import annotations

from typing import Any

import pytest

from gossamer.host.proxy import BadRegistration, Registration

GOOD: dict[str, Any] = {
    "name": "web-1",
    "namespace": "shop",
    "serviceAccount": "web",
    "labels": {"app": "web"},
    "ports": [{"port": 8080, "appPort": 18080, "name": "http", "appProtocol": "http"}],
    "inbound": "10.0.0.5:4143",
    "outbound": "127.0.0.1:4140",
    "admin": "0.0.0.0:4191",
    "address": "10.0.0.5",
    "dns": "127.0.0.1:15053",
    "serviceCidr": "198.19.0.0/16",
}


def test_a_registration_reads_as_the_flags_of_a_sidecar() -> None:
    reg = Registration.from_json(GOOD)
    assert reg.key == ("shop", "web-1")
    assert (reg.inbound, reg.outbound, reg.admin) == (
        ("10.0.0.5", 4143), ("127.0.0.1", 4140), ("0.0.0.0", 4191)
    )  # fmt: skip
    assert [(p.port, p.app_port, p.name, p.app_protocol) for p in reg.ports] == [
        (8080, 18080, "http", "http")
    ]
    assert reg.dns == ("127.0.0.1", 15053) and reg.service_cidr == "198.19.0.0/16"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"name": None}, "name: required"),
        ({"name": ""}, "name: required"),
        ({"namespace": 7}, "namespace: required"),
        ({"inbound": "nowhere"}, "inbound: 'nowhere' is not HOST:PORT"),
        ({"outbound": None}, "outbound: required"),
        ({"admin": "h:99999"}, "admin: 'h:99999' is not HOST:PORT"),
        ({"labels": {"app": 1}}, "labels: must map strings to strings"),
        ({"labels": ["app"]}, "labels: must map strings to strings"),
        ({"ports": [{"appPort": 1}]}, "ports[0]: needs port"),
        ({"ports": [{"port": "x"}]}, "ports[0]: needs port"),
        ({"ports": [7]}, "ports[0]: needs port"),
        ({"ports": [{"port": 0}]}, "ports[0]: ports must be 1-65535"),
        ({"dns": "53"}, "dns: '53' is not HOST:PORT"),
        ({"serviceCidr": "not a network"}, "serviceCidr: 'not a network' is not an IPv4"),
    ],
    ids=lambda v: str(v),
)
def test_a_malformed_registration_is_refused_naming_the_field(
    change: dict[str, Any], error: str
) -> None:
    with pytest.raises(BadRegistration, match=None) as err:
        Registration.from_json({**GOOD, **change})
    assert str(err.value).startswith(error), str(err.value)


@pytest.mark.parametrize("raw", [None, [], "web", 3], ids=["null", "list", "string", "number"])
def test_a_registration_that_is_no_object_is_refused(raw: Any) -> None:
    with pytest.raises(BadRegistration, match="must be a JSON object"):
        Registration.from_json(raw)
