"""Which Service an authority names, by the forms Kubernetes DNS answers."""

import pytest

from gossamer.resources import ServiceRef, resolve_authority

CASES = [
    ("echo", ServiceRef("echo", "shop", None)),
    ("echo:8080", ServiceRef("echo", "shop", 8080)),
    ("echo.web", ServiceRef("echo", "web", None)),
    ("echo.web:80", ServiceRef("echo", "web", 80)),
    ("echo.web.svc", ServiceRef("echo", "web", None)),
    ("echo.web.svc:443", ServiceRef("echo", "web", 443)),
    ("echo.web.svc.cluster.local", ServiceRef("echo", "web", None)),
    ("echo.web.svc.cluster.local:9090", ServiceRef("echo", "web", 9090)),
    ("echo.web.svc.cluster.local.", ServiceRef("echo", "web", None)),
    ("echo.web.svc.cluster.local.:9090", ServiceRef("echo", "web", 9090)),
    ("echo.", ServiceRef("echo", "shop", None)),
    ("ECHO.Web.SVC.Cluster.Local", ServiceRef("echo", "web", None)),
    ("echo:0080", ServiceRef("echo", "shop", 80)),
    ("echo:000080", None),
    ("10.0.0.1", None),
    ("10.0.0.1:80", None),
    ("[::1]:80", None),
    ("[::1]", None),
    ("::1", None),
    ("localhost", None),
    ("localhost:8080", None),
    ("LOCALHOST.", None),
    ("echo.web.svc.example.com", None),
    ("echo.web.svc.cluster", None),
    ("echo.web.pod.cluster.local", None),
    ("echo.web.cluster.local", None),
    ("echo:0", None),
    ("echo:65536", None),
    ("echo:http", None),
    ("echo:", None),
    ("echo:-1", None),
    ("echo:\uff18\uff10", None),  # full-width digits
    ("", None),
    (":80", None),
    ("user@echo", None),
    ("2echo", None),
    ("echo.Web_NS", None),
    ("echo..svc", None),
]


@pytest.mark.parametrize(("authority", "expected"), CASES, ids=[a or "(empty)" for a, _ in CASES])
def test_authority_resolves_to_a_service_or_none(
    authority: str, expected: ServiceRef | None
) -> None:
    assert resolve_authority(authority, "shop") == expected


def test_the_cluster_domain_can_be_changed() -> None:
    assert resolve_authority("echo.web.svc.mesh.internal", "shop", "mesh.internal.") == ServiceRef(
        "echo", "web"
    )
    assert resolve_authority("echo.web.svc.cluster.local", "shop", "mesh.internal") is None


def test_service_refs_are_hashable_values() -> None:
    assert len({ServiceRef("echo", "web", 80), ServiceRef("echo", "web", 80)}) == 1
