"""The CA's mark on a certificate issued through a host (node authorization, decision 0064)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gossamer.identity import CertificateAuthority, generate_private_key, make_csr
from gossamer.identity.ca import HOST_ISSUED_OID, issued_through_host
from gossamer.identity.csr import load_private_key

from .helpers import T0, WEB, leaf_of, openssl, p256


def test_a_certificate_issued_through_a_host_names_the_host(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    issued = ca.sign_csr(make_csr(key, WEB), WEB, now=T0, through_host="node-a")
    leaf = leaf_of(issued)
    assert issued_through_host(leaf) == "node-a"
    mark = leaf.extensions.get_extension_for_oid(HOST_ISSUED_OID)
    assert mark.critical is False  # other TLS stacks must accept the certificate
    leaf.verify_directly_issued_by(ca.intermediate_cert)


def test_a_certificate_issued_to_a_sidecar_carries_no_mark(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    leaf = leaf_of(ca.sign_csr(make_csr(key, WEB), WEB, now=T0))
    assert issued_through_host(leaf) is None


def test_a_long_host_name_round_trips(ca: CertificateAuthority) -> None:
    host = "h" * 300  # past 127 bytes: the DER length takes its long form
    key = generate_private_key()
    leaf = leaf_of(ca.sign_csr(make_csr(key, WEB), WEB, now=T0, through_host=host))
    assert issued_through_host(leaf) == host


def test_a_csr_cannot_ask_for_the_mark(ca: CertificateAuthority) -> None:
    """The CA copies nothing but the SPIFFE ID from a CSR: a mark asked for is dropped."""
    key = load_private_key(generate_private_key())
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(WEB))])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(san, critical=False)
        .add_extension(x509.UnrecognizedExtension(HOST_ISSUED_OID, b"\x0c\x06node-a"), False)
        .sign(key, hashes.SHA256())
    )
    leaf = leaf_of(ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), WEB, now=T0))
    assert issued_through_host(leaf) is None


def test_openssl_reads_and_verifies_a_marked_certificate(
    live_ca: CertificateAuthority, tmp_path: Path
) -> None:
    key = generate_private_key()
    issued = live_ca.sign_csr(make_csr(key, WEB), WEB, through_host="node-a")
    (tmp_path / "leaf.pem").write_text(issued.certificate_pem)
    (tmp_path / "chain.pem").write_text(issued.chain_pem)
    (tmp_path / "bundle.pem").write_text(issued.trust_bundle_pem)
    shown = openssl("x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-text")
    assert shown.returncode == 0, shown.stderr
    assert HOST_ISSUED_OID.dotted_string in shown.stdout
    verified = openssl(
        "verify",
        "-CAfile",
        str(tmp_path / "bundle.pem"),
        "-untrusted",
        str(tmp_path / "chain.pem"),
        "-purpose",
        "sslclient",
        str(tmp_path / "leaf.pem"),
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize("raw", [b"", b"\x04\x02ab", b"\x0c"])
def test_any_mark_counts_even_one_that_does_not_parse(raw: bytes) -> None:
    """A certificate is marked by the OID: a value this code cannot read still refuses."""
    key = p256()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=1))
        .add_extension(x509.UnrecognizedExtension(HOST_ISSUED_OID, raw), critical=False)
        .sign(key, hashes.SHA256())
    )
    assert issued_through_host(cert) is not None
