"""TCPRoute for the mesh: compiled into a service port's routes as rules without matches."""

from __future__ import annotations

from typing import Any

from tests.translate.test_grpcroutes import routes_of
from tests.translate.test_routes import BASE, backend

from gossamer.resources import to_dict, validate


def tcproute(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return to_dict(
        validate(
            {
                "apiVersion": "gateway.networking.k8s.io/v1alpha2",
                "kind": "TCPRoute",
                "metadata": {"name": "split", "namespace": "shop"},
                "spec": {
                    "parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                    "rules": rules,
                },
            }
        )
    )


def test_a_tcproute_gives_its_port_weighted_backends_and_no_request_matches() -> None:
    sr = routes_of([*BASE, tcproute([{"backendRefs": [backend("echo", 3), backend("echo-v2")]}])])
    assert sr.matches == ()
    [rule] = sr.tcp_rules
    assert [(b.service, b.weight) for b in sr.rules[rule].backends] == [
        ("echo.shop", 3),
        ("echo-v2.shop", 1),
    ]


def test_a_tcproute_backend_that_does_not_exist_is_marked_failing() -> None:
    sr = routes_of([*BASE, tcproute([{"backendRefs": [backend("ghost")]}])])
    [b] = sr.rules[sr.tcp_rules[0]].backends
    assert b.error == "backend Service shop/ghost does not exist"
