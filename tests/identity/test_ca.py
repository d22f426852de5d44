from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gossamer.errors import IdentityError
from gossamer.identity import CertificateAuthority, SpiffeId, certificate_fingerprint
from gossamer.identity.ca import INTERMEDIATE_RENEW_BEFORE

from .helpers import T0, TD, WEB, issue, leaf_of, mode, openssl

E = TypeVar("E", bound=x509.ExtensionType)
CA_FILES = ("root.crt", "root.key", "intermediate.crt", "intermediate.key", "bundle.crt")


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    # Under umask 0 a key written with open() and then chmod() would be world-readable
    # for a moment; only files created with their final mode pass these tests.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# ---- creating and loading -----------------------------------------------------------


@pytest.mark.usefixtures("permissive_umask")
def test_a_new_ca_dir_is_private_and_its_keys_are_owner_only(ca_dir: Path) -> None:
    CertificateAuthority.load_or_create(ca_dir, TD, now=T0)

    assert sorted(p.name for p in ca_dir.iterdir()) == sorted(CA_FILES)
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / "root.key") == 0o600
    assert mode(ca_dir / "intermediate.key") == 0o600
    assert mode(ca_dir / "root.crt") == 0o644


def test_the_root_is_a_ten_year_self_signed_ca_named_for_the_trust_domain(
    ca: CertificateAuthority,
) -> None:
    root = ca.root_cert
    assert root.subject.rfc4514_string() == "CN=Gossamer Root CA (example.org),O=Gossamer"
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)
    constraints = ext(root, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca and constraints.value.path_length == 1
    usage = ext(root, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert ext(root, x509.SubjectKeyIdentifier).value.digest
    assert ca.root_expires_at == T0 + timedelta(days=3650)


def test_the_intermediate_is_a_one_year_pathlen_zero_ca_signed_by_the_root(
    ca: CertificateAuthority,
) -> None:
    inter = ca.intermediate_cert
    inter.verify_directly_issued_by(ca.root_cert)
    constraints = ext(inter, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca and constraints.value.path_length == 0
    assert ext(inter, x509.KeyUsage).value.key_cert_sign
    root_ski = ext(ca.root_cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(inter, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski
    assert ca.intermediate_expires_at == T0 + timedelta(days=365)


def test_the_trust_bundle_is_the_root_and_is_written_beside_it(
    ca: CertificateAuthority, ca_dir: Path
) -> None:
    bundle = x509.load_pem_x509_certificates(ca.trust_bundle_pem().encode())
    assert bundle == [ca.root_cert]
    assert (ca_dir / "bundle.crt").read_text() == ca.trust_bundle_pem()
    assert ca.root_fingerprint() == certificate_fingerprint(ca.root_cert)


def test_load_or_create_is_idempotent(ca: CertificateAuthority, ca_dir: Path) -> None:
    before = {name: (ca_dir / name).read_bytes() for name in CA_FILES}

    again = CertificateAuthority.load_or_create(ca_dir, TD, now=T0 + timedelta(days=1))

    assert again.root_fingerprint() == ca.root_fingerprint()
    assert again.intermediate_cert == ca.intermediate_cert
    assert {name: (ca_dir / name).read_bytes() for name in CA_FILES} == before


def test_a_ca_whose_root_key_is_kept_offline_loads_and_signs(
    ca: CertificateAuthority, ca_dir: Path
) -> None:
    (ca_dir / "root.key").unlink()

    offline = CertificateAuthority.load_or_create(ca_dir, TD, now=T0)

    assert not offline.has_root_key
    assert offline.root_fingerprint() == ca.root_fingerprint()
    _, issued = issue(offline, WEB)
    leaf_of(issued).verify_directly_issued_by(ca.intermediate_cert)


@pytest.mark.parametrize(
    ("keep", "reason"),
    [
        (["root.crt"], "holds root.crt but not intermediate.crt, intermediate.key"),
        (
            ["intermediate.crt", "intermediate.key"],
            "holds intermediate.crt, intermediate.key but not root.crt; if a first start "
            "was interrupted, remove those files",
        ),
        (["root.crt", "intermediate.crt"], "but not intermediate.key"),
    ],
    ids=["only the root", "only the intermediate", "intermediate key missing"],
)
def test_a_partial_ca_dir_is_refused_rather_than_overwritten(
    ca: CertificateAuthority, ca_dir: Path, keep: list[str], reason: str
) -> None:
    for name in ("root.crt", "intermediate.crt", "intermediate.key"):
        if name not in keep:
            (ca_dir / name).unlink()
    kept = {name: (ca_dir / name).read_bytes() for name in keep}

    with pytest.raises(IdentityError, match=reason):
        CertificateAuthority.load_or_create(ca_dir, TD, now=T0)

    assert {name: (ca_dir / name).read_bytes() for name in keep} == kept


def test_a_ca_dir_created_for_another_trust_domain_is_refused(
    ca: CertificateAuthority, ca_dir: Path
) -> None:
    with pytest.raises(IdentityError, match=r"created for trust domain 'example.org', not 'b.org'"):
        CertificateAuthority.load_or_create(ca_dir, "b.org", now=T0)


def test_a_root_key_that_is_not_the_roots_is_refused(
    ca: CertificateAuthority, ca_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    CertificateAuthority.load_or_create(other, TD, now=T0)
    (ca_dir / "root.key").write_bytes((other / "root.key").read_bytes())

    with pytest.raises(IdentityError, match=r"root key .* does not match the root"):
        CertificateAuthority.load_or_create(ca_dir, TD, now=T0)


def test_an_intermediate_key_that_is_not_the_intermediates_is_refused(
    ca: CertificateAuthority, ca_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    CertificateAuthority.load_or_create(other, TD, now=T0)
    (ca_dir / "intermediate.key").write_bytes((other / "intermediate.key").read_bytes())

    with pytest.raises(IdentityError, match=r"intermediate key .* does not match intermediate"):
        CertificateAuthority.load_or_create(ca_dir, TD, now=T0)


# ---- renewal ------------------------------------------------------------------------


def test_an_intermediate_near_expiry_is_renewed_on_load_when_the_root_key_is_present(
    ca: CertificateAuthority, ca_dir: Path
) -> None:
    later = ca.intermediate_expires_at - INTERMEDIATE_RENEW_BEFORE + timedelta(hours=1)

    renewed = CertificateAuthority.load_or_create(ca_dir, TD, now=later)

    assert renewed.intermediate_cert != ca.intermediate_cert
    assert renewed.intermediate_expires_at == later + timedelta(days=365)
    assert renewed.root_fingerprint() == ca.root_fingerprint()
    on_disk = x509.load_pem_x509_certificate((ca_dir / "intermediate.crt").read_bytes())
    assert on_disk == renewed.intermediate_cert
    assert mode(ca_dir / "intermediate.key") == 0o600


def test_a_long_running_ca_renews_its_intermediate_when_signing(
    ca: CertificateAuthority,
) -> None:
    old = ca.intermediate_cert
    later = ca.intermediate_expires_at - timedelta(days=1)

    _, issued = issue(ca, WEB, now=later)

    assert ca.intermediate_cert != old
    assert issued.not_after == later + timedelta(hours=24)
    leaf_of(issued).verify_directly_issued_by(ca.intermediate_cert)


def test_renewing_requires_the_root_key(ca: CertificateAuthority, ca_dir: Path) -> None:
    (ca_dir / "root.key").unlink()
    offline = CertificateAuthority.load_or_create(ca_dir, TD, now=T0)

    with pytest.raises(IdentityError, match="root key is kept offline"):
        offline.renew_intermediate(now=T0)


def test_an_expired_intermediate_with_the_root_offline_is_refused_on_load(
    ca: CertificateAuthority, ca_dir: Path
) -> None:
    (ca_dir / "root.key").unlink()

    with pytest.raises(IdentityError, match=r"intermediate certificate .* expired at 2031-01-01"):
        CertificateAuthority.load_or_create(ca_dir, TD, now=T0 + timedelta(days=400))


def test_signing_with_an_expired_intermediate_and_the_root_offline_is_refused(
    ca: CertificateAuthority, ca_dir: Path
) -> None:
    (ca_dir / "root.key").unlink()
    offline = CertificateAuthority.load_or_create(ca_dir, TD, now=T0)

    with pytest.raises(IdentityError, match=r"intermediate certificate expired at .* root key"):
        issue(offline, WEB, now=T0 + timedelta(days=400))


# ---- the leaves it issues -----------------------------------------------------------


def test_a_leaf_carries_the_mesh_workload_profile(ca: CertificateAuthority) -> None:
    _, issued = issue(ca, WEB)
    leaf = leaf_of(issued)

    assert leaf.subject == x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, TD)])
    assert leaf.issuer == ca.intermediate_cert.subject
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("spiffe://example.org/ns/default/sa/web")]
    constraints = ext(leaf, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = ext(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    inter_ski = ext(ca.intermediate_cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == inter_ski
    assert ext(leaf, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        leaf.public_key()
    )
    leaf.verify_directly_issued_by(ca.intermediate_cert)


def test_an_issued_certificate_reports_what_the_leaf_says(ca: CertificateAuthority) -> None:
    _, issued = issue(ca, WEB)
    leaf = leaf_of(issued)

    assert issued.spiffe_id == WEB
    assert issued.not_before == T0 - timedelta(minutes=1) == leaf.not_valid_before_utc
    assert issued.not_after == T0 + timedelta(hours=24) == leaf.not_valid_after_utc
    assert int(issued.serial, 16) == leaf.serial_number
    assert (
        issued.chain_pem
        == issued.certificate_pem
        + ca.intermediate_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    assert issued.trust_bundle_pem == ca.trust_bundle_pem()


def test_serials_are_random_and_at_most_128_bits(ca: CertificateAuthority) -> None:
    serials = {int(issue(ca, WEB)[1].serial, 16) for _ in range(8)}

    assert len(serials) == 8
    assert all(0 < s < 2**128 for s in serials)


def test_the_ttl_sets_the_lifetime(ca: CertificateAuthority) -> None:
    _, issued = issue(ca, WEB, ttl=timedelta(hours=1))

    assert issued.not_after == T0 + timedelta(hours=1)


def test_a_leaf_never_outlives_its_intermediate(ca: CertificateAuthority, ca_dir: Path) -> None:
    # With the root offline the CA cannot renew, so leaves shrink to fit the intermediate.
    (ca_dir / "root.key").unlink()
    offline = CertificateAuthority.load_or_create(ca_dir, TD, now=T0)
    late = offline.intermediate_expires_at - timedelta(hours=2)

    _, issued = issue(offline, WEB, now=late, ttl=timedelta(hours=24))

    assert issued.not_after == offline.intermediate_expires_at
    assert leaf_of(issued).not_valid_after_utc == offline.intermediate_expires_at


def test_an_identity_from_another_trust_domain_is_not_issued(ca: CertificateAuthority) -> None:
    other = SpiffeId("evil.org", "default", "web")

    with pytest.raises(IdentityError, match=r"trust domain 'evil.org', but this CA issues only"):
        issue(ca, other)


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1)], ids=["zero", "negative"])
def test_a_ttl_that_is_not_positive_is_refused(ca: CertificateAuthority, ttl: timedelta) -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        issue(ca, WEB, ttl=ttl)


def test_a_clock_without_a_timezone_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        issue(ca, WEB, now=T0.replace(tzinfo=None))


def test_a_server_identity_carries_the_spiffe_id_and_the_given_dns_and_ip_names(
    ca: CertificateAuthority,
) -> None:
    identity = SpiffeId(TD, "gossamer-system", "control-plane")

    key_pem, issued = ca.issue_server_identity(
        identity, ["gossamer.example.org", "localhost"], ["127.0.0.1", "::1"], now=T0
    )

    leaf = leaf_of(issued)
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(identity)]
    assert san.get_values_for_type(x509.DNSName) == ["gossamer.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == leaf.public_key()


# ---- checked by a real peer: the openssl CLI ----------------------------------------


def _write_chain(tmp_path: Path, ca: CertificateAuthority, leaf_pem: str) -> tuple[str, ...]:
    root, inter, leaf = tmp_path / "root.pem", tmp_path / "inter.pem", tmp_path / "leaf.pem"
    root.write_text(ca.trust_bundle_pem())
    inter.write_bytes(ca.intermediate_cert.public_bytes(serialization.Encoding.PEM))
    leaf.write_text(leaf_pem)
    return str(root), str(inter), str(leaf)


@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_an_issued_leaf_verifies_with_openssl(
    ca: CertificateAuthority, tmp_path: Path, purpose: str
) -> None:
    _, issued = issue(ca, WEB)
    root, inter, leaf = _write_chain(tmp_path, ca, issued.certificate_pem)
    at = str(int((T0 + timedelta(hours=1)).timestamp()))

    result = openssl(
        "verify", "-x509_strict", "-purpose", purpose, "-attime", at,
        "-CAfile", root, "-untrusted", inter, leaf,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{leaf}: OK"


def test_openssl_refuses_a_leaf_after_it_expires(ca: CertificateAuthority, tmp_path: Path) -> None:
    _, issued = issue(ca, WEB)
    root, inter, leaf = _write_chain(tmp_path, ca, issued.certificate_pem)
    at = str(int((T0 + timedelta(hours=25)).timestamp()))

    result = openssl("verify", "-attime", at, "-CAfile", root, "-untrusted", inter, leaf)

    assert result.returncode != 0
    assert "certificate has expired" in result.stdout + result.stderr


def test_openssl_shows_the_spiffe_uri_san(ca: CertificateAuthority) -> None:
    _, issued = issue(ca, WEB)

    result = openssl("x509", "-noout", "-text", input=issued.certificate_pem.encode())

    assert result.returncode == 0, result.stderr
    assert "URI:spiffe://example.org/ns/default/sa/web" in result.stdout
    assert "CA:FALSE" in result.stdout
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in result.stdout


def test_leaves_from_a_renewed_intermediate_verify_against_the_same_bundle(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    _, before = issue(ca, WEB)
    ca.renew_intermediate(now=T0)
    _, after = issue(ca, WEB)
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(ca.trust_bundle_pem())
    at = str(int((T0 + timedelta(hours=1)).timestamp()))

    for issued in (before, after):
        chain = tmp_path / "chain.pem"
        leaf = tmp_path / "leaf.pem"
        chain.write_text(issued.chain_pem)
        leaf.write_text(issued.certificate_pem)
        result = openssl(
            "verify", "-attime", at, "-CAfile", str(bundle), "-untrusted", str(chain), str(leaf)
        )
        assert result.returncode == 0, result.stderr
