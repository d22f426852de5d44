"""identity.der reads what `cryptography` reads, for the fields the proxy uses; and
identity.keygen makes a key and CSR the CA accepts, in a child process."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from gossamer.errors import IdentityError
from gossamer.identity import CertificateAuthority
from gossamer.identity.bundle import chain_fingerprints
from gossamer.identity.der import CertificateFacts, read_pem_certificates
from gossamer.identity.keygen import new_key_and_csr_in_child

from .helpers import T0, TD, WEB, issue


def test_the_fields_match_what_cryptography_reads(ca: CertificateAuthority) -> None:
    _, issued = issue(ca, WEB)
    chain = read_pem_certificates(issued.chain_pem)
    expected = x509.load_pem_x509_certificates(issued.chain_pem.encode())

    assert len(chain) == 2
    for facts, cert in zip(chain, expected, strict=True):
        assert facts.not_before == cert.not_valid_before_utc
        assert facts.not_after == cert.not_valid_after_utc
        assert facts.issuer == cert.issuer.public_bytes()
        assert facts.subject == cert.subject.public_bytes()
    leaf, intermediate = chain
    assert leaf.uris == (str(WEB),)
    assert intermediate.uris == ()
    ski = expected[1].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert intermediate.subject_key_id == ski.digest
    assert leaf.authority_key_id == ski.digest


def test_the_fingerprint_is_the_root_fingerprint_the_ca_gives(ca: CertificateAuthority) -> None:
    (root,) = read_pem_certificates(ca.trust_bundle_pem())

    assert root.fingerprint == ca.root_fingerprint()
    assert read_pem_certificates(root.pem())[0].der == root.der


def test_the_issuer_and_root_of_a_chain_are_found_among_other_roots(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other", TD, now=T0)
    _, issued = issue(ca, WEB)
    bundle = other.trust_bundle_pem() + ca.trust_bundle_pem()

    issuer, root = chain_fingerprints(issued.chain_pem, bundle)

    assert issuer == read_pem_certificates(issued.chain_pem)[1].fingerprint
    assert root == ca.root_fingerprint()
    assert chain_fingerprints(issued.chain_pem, other.trust_bundle_pem())[1] == ""


@pytest.mark.parametrize(
    ("pem", "error"),
    [
        ("<html>502 Bad Gateway</html>", "holds no PEM certificate"),
        ("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", "not base64"),
        (
            "-----BEGIN CERTIFICATE-----\n"
            + base64.b64encode(b"\x30\x05\x02\x01\x01").decode()
            + "\n-----END CERTIFICATE-----\n",
            r"not valid DER X\.509",
        ),
    ],
)
def test_what_is_not_a_certificate_is_an_identity_error(pem: str, error: str) -> None:
    with pytest.raises(IdentityError, match=error):
        read_pem_certificates(pem)


def test_a_truncated_certificate_is_an_identity_error(ca: CertificateAuthority) -> None:
    (root,) = read_pem_certificates(ca.trust_bundle_pem())

    for cut in (1, 10, len(root.der) // 2, len(root.der) - 1):
        with pytest.raises(IdentityError, match=r"not valid DER X\.509"):
            CertificateFacts.from_der(root.der[:cut])


def test_a_key_and_csr_made_in_a_child_process_are_signed_by_the_ca(
    ca: CertificateAuthority,
) -> None:
    key, csr = asyncio.run(new_key_and_csr_in_child(WEB))

    issued = ca.sign_csr(csr, WEB, now=T0)
    assert read_pem_certificates(issued.certificate_pem)[0].uris == (str(WEB),)
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_the_proxy_process_does_not_load_cryptography() -> None:
    code = (
        "import sys, gossamer.cli.main, gossamer.cli.proxy, gossamer.proxy.agent.session, "
        "gossamer.proxy.dataplane; print('cryptography' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
