from __future__ import annotations

import pytest
from cryptography import x509

from gossamer.errors import IdentityError
from gossamer.identity import SpiffeId, spiffe_id_from_certificate

from .helpers import make_cert, p256


def test_a_spiffe_id_renders_as_its_uri() -> None:
    assert str(SpiffeId("example.org", "shop", "api")) == "spiffe://example.org/ns/shop/sa/api"


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://example.org/ns/default/sa/web",
        "spiffe://cluster.local/ns/kube-system/sa/coredns",
        "spiffe://td_1.example-2/ns/My.Namespace/sa/Service_Account-3",
    ],
    ids=["plain", "kubernetes names", "every allowed character"],
)
def test_parse_round_trips_gossamer_ids(uri: str) -> None:
    assert str(SpiffeId.parse(uri)) == uri


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("https://example.org/ns/default/sa/web", "must start with 'spiffe://'"),
        ("SPIFFE://example.org/ns/default/sa/web", "must start with 'spiffe://'"),
        ("spiffe://Example.org/ns/default/sa/web", "only lowercase letters"),
        ("spiffe://example.org:8443/ns/default/sa/web", "only lowercase letters"),
        ("spiffe://user@example.org/ns/default/sa/web", "only lowercase letters"),
        ("spiffe:///ns/default/sa/web", "trust domain is empty"),
        ("spiffe://example.org", "has no path"),
        ("spiffe://example.org/", "expected /ns/<namespace>/sa/<service-account>"),
        ("spiffe://example.org/ns/default", "expected /ns/<namespace>/sa/<service-account>"),
        ("spiffe://example.org/ns/default/sa/web/x", "expected /ns/"),
        ("spiffe://example.org/namespace/default/sa/web", "expected /ns/"),
        ("spiffe://example.org/ns//sa/web", "namespace is empty"),
        ("spiffe://example.org/ns/default/sa/", "service account is empty"),
        ("spiffe://example.org/ns/../sa/web", "namespace '..' is not allowed"),
        ("spiffe://example.org/ns/default/sa/we b", "service account 'we b' may contain only"),
        ("spiffe://example.org/ns/default/sa/web?x=1", "query or fragment"),
        ("spiffe://example.org/ns/default/sa/web#frag", "query or fragment"),
    ],
    ids=[
        "https scheme",
        "uppercase scheme",
        "uppercase trust domain",
        "port in trust domain",
        "userinfo in trust domain",
        "empty trust domain",
        "no path",
        "root path",
        "no service account",
        "extra segment",
        "wrong keyword",
        "empty namespace",
        "empty service account",
        "dot-dot namespace",
        "space in service account",
        "query",
        "fragment",
    ],
)
def test_parse_refuses_anything_but_the_gossamer_form_and_says_why(uri: str, reason: str) -> None:
    with pytest.raises(ValueError, match="SPIFFE ID") as e:
        SpiffeId.parse(uri)
    assert reason in str(e.value)


def test_constructing_an_invalid_id_is_refused() -> None:
    with pytest.raises(ValueError, match="trust domain 'EXAMPLE' may contain only"):
        SpiffeId("EXAMPLE", "default", "web")


def _cert_with(names: list[x509.GeneralName] | None) -> x509.Certificate:
    return make_cert("leaf", p256(), ca=False, sans=names)


def test_the_spiffe_id_is_read_from_the_certificate_uri_san() -> None:
    cert = _cert_with(
        [
            x509.DNSName("web.default.svc"),
            x509.UniformResourceIdentifier("https://example.org/other"),
            x509.UniformResourceIdentifier("spiffe://example.org/ns/default/sa/web"),
        ]
    )
    assert spiffe_id_from_certificate(cert) == SpiffeId("example.org", "default", "web")


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (None, "has no subjectAltName"),
        ([x509.DNSName("web")], "exactly one spiffe:// URI SAN, found 0"),
        (
            [
                x509.UniformResourceIdentifier("spiffe://example.org/ns/a/sa/a"),
                x509.UniformResourceIdentifier("spiffe://example.org/ns/b/sa/b"),
            ],
            "exactly one spiffe:// URI SAN, found 2",
        ),
        (
            [x509.UniformResourceIdentifier("spiffe://example.org/workload/web")],
            "unusable SPIFFE ID",
        ),
    ],
    ids=["no san", "no spiffe uri", "two spiffe uris", "spiffe uri of another shape"],
)
def test_a_certificate_without_exactly_one_usable_spiffe_id_is_refused(
    names: list[x509.GeneralName] | None, reason: str
) -> None:
    with pytest.raises(IdentityError, match=reason):
        spiffe_id_from_certificate(_cert_with(names))
