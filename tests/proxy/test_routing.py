"""Host names to services, the Kubernetes way, and route tables built from snapshots."""

from __future__ import annotations

import pytest

from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.policy.balancer import EndpointLoad
from gossamer.proxy.policy.routing import NoRoute, Route, RouteTable
from gossamer.resources import ServiceRef, resolve_authority
from gossamer.translate.snapshot import Endpoint, ProxySelf, ServicePort, ServiceView, Snapshot

AUTHORITIES = [
    ("echo", ServiceRef("echo", "web", None)),
    ("echo:8080", ServiceRef("echo", "web", 8080)),
    ("echo.default", ServiceRef("echo", "default", None)),
    ("echo.default:81", ServiceRef("echo", "default", 81)),
    ("echo.default.svc", ServiceRef("echo", "default", None)),
    ("echo.default.svc.cluster.local", ServiceRef("echo", "default", None)),
    ("echo.default.svc.cluster.local.:9", ServiceRef("echo", "default", 9)),
    ("ECHO.Default", ServiceRef("echo", "default", None)),
    ("echo.default.svc.other.domain", None),
    ("example.com.au", None),
    ("10.0.0.1:80", None),
    ("[::1]:80", None),
    ("echo:0", None),
    ("echo:99999", None),
    ("echo:http", None),
    ("", None),
    ("-bad-.default", None),
    ("localhost:8080", None),
]


@pytest.mark.parametrize(
    ("authority", "ref"), AUTHORITIES, ids=[a or "empty" for a, _ in AUTHORITIES]
)
def test_authorities_the_proxy_routes_by_resolve_the_kubernetes_way(
    authority: str, ref: ServiceRef | None
) -> None:
    assert resolve_authority(authority, "web") == ref


def _snapshot(*services: ServiceView, interests: tuple[str, ...] = ()) -> Snapshot:
    return Snapshot(
        proxy=ProxySelf("web-1", "web", "web", "spiffe://td/ns/web/sa/web", services=("web",)),
        trust_domain="td",
        trust_bundle="",
        services=services,
        interests=interests,
    )


def _endpoint(name: str, port: int) -> Endpoint:
    return Endpoint(name, "default", "10.0.0.1", 4143, port, "spiffe://td/ns/default/sa/echo")


def _table(snapshot: Snapshot) -> RouteTable[Endpoint]:
    return RouteTable(snapshot, "cluster.local", Metrics(), lambda e: (e, EndpointLoad()))


ECHO = ServiceView("echo", "default", (ServicePort(80, endpoints=(_endpoint("echo-1", 8080),)),))
SINGLE = ServiceView("single", "default", (ServicePort(9000, endpoints=(_endpoint("s-1", 9),)),))
MULTI = ServiceView("multi", "default", (ServicePort(81), ServicePort(82)))


def test_a_known_service_routes_to_its_port_endpoints() -> None:
    route = _table(_snapshot(ECHO)).lookup_host(b"echo.default")
    assert isinstance(route, Route)
    assert route.label == "echo.default:80"
    assert route.balancer.items == (_endpoint("echo-1", 8080),)


def test_without_a_port_a_service_with_one_port_uses_it() -> None:
    route = _table(_snapshot(SINGLE)).lookup_host(b"single.default")
    assert isinstance(route, Route)
    assert route.port == 9000


def test_without_a_port_a_service_with_several_uses_80() -> None:
    found = _table(_snapshot(MULTI)).lookup_host(b"multi.default")
    assert isinstance(found, NoRoute)
    assert "has no port 80" in found.reason


def test_an_unknown_service_not_yet_asked_about_is_an_interest() -> None:
    assert _table(_snapshot(ECHO)).lookup_host(b"other.default:80") == "other.default"


def test_an_unknown_service_the_control_plane_answered_for_has_no_route() -> None:
    found = _table(_snapshot(ECHO, interests=("other.default",))).lookup_host(b"other.default")
    assert found == NoRoute(503, "no route for host other.default")


def test_a_host_that_names_no_service_has_no_route() -> None:
    found = _table(_snapshot(ECHO)).lookup_host(b"www.example.com")
    assert isinstance(found, NoRoute)
    assert found.reason == "no route for host www.example.com"


def test_the_source_labels_come_from_the_proxys_own_service() -> None:
    table = _table(_snapshot(ECHO))
    assert (table.namespace, table.service) == ("web", "web")
    assert table.src_service_line == b"gossamer-src-service: web\r\n"
