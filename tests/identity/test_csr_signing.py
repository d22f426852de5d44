"""What a workload may and may not get by sending a CSR."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gossamer.errors import IdentityError
from gossamer.identity import CertificateAuthority, generate_private_key, make_csr
from gossamer.identity.csr import load_private_key

from .helpers import API, T0, WEB, PrivateKey, leaf_of, make_cert, p256


def _csr(
    names: list[x509.GeneralName] | None,
    key: PrivateKey | None = None,
    extensions: list[x509.ExtensionType] | None = None,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "whatever I like")])
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for extension in extensions or []:
        builder = builder.add_extension(extension, critical=True)
    return builder.sign(key or p256(), hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _uri(identity: object) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(str(identity))


def _broken_signature() -> bytes:
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(generate_private_key(), WEB)).public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-1] ^= 0x01  # the last byte belongs to the ECDSA signature's s value
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def _certificate_not_csr() -> bytes:
    return make_cert("not a csr", p256(), ca=False).public_bytes(serialization.Encoding.PEM)


REFUSED: list[tuple[str, Callable[[], bytes], str]] = [
    (
        "another identity",
        lambda: make_csr(generate_private_key(), API),
        "CSR asks for uri:spiffe://example.org/ns/shop/sa/api but the identity granted is "
        "spiffe://example.org/ns/default/sa/web",
    ),
    (
        "its identity and another",
        lambda: _csr([_uri(WEB), _uri(API)]),
        "CSR asks for uri:spiffe://example.org/ns/shop/sa/api",
    ),
    (
        "a dns name",
        lambda: _csr([_uri(WEB), x509.DNSName("foo")]),
        "CSR asks for dns:foo but the identity granted is spiffe://example.org/ns/default/sa/web",
    ),
    (
        "an ip address",
        lambda: _csr([x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]),
        "CSR asks for ip:10.0.0.1",
    ),
    (
        "an email address",
        lambda: _csr([x509.RFC822Name("root@example.org")]),
        "CSR asks for email:root@example.org",
    ),
    (
        "a directory name",
        lambda: _csr([x509.DirectoryName(x509.Name([]))]),
        "CSR asks for directory name",
    ),
    (
        "an rsa key",
        lambda: _csr([_uri(WEB)], key=rsa.generate_private_key(65537, 2048)),
        "CSR carries an RSA-2048 key; only ECDSA P-256 keys are accepted",
    ),
    (
        "a p-384 key",
        lambda: _csr([_uri(WEB)], key=ec.generate_private_key(ec.SECP384R1())),
        "CSR carries an ECDSA secp384r1 key",
    ),
    ("a broken signature", _broken_signature, "CSR signature does not verify"),
    ("garbage pem", lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n", "malformed CSR"),
    ("empty input", lambda: b"", "malformed CSR"),
    ("a certificate instead of a csr", _certificate_not_csr, "malformed CSR"),
]


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in REFUSED], ids=[i for i, _, _ in REFUSED]
)
def test_a_csr_asking_for_more_than_the_granted_identity_is_refused_with_the_reason(
    ca: CertificateAuthority, make: Callable[[], bytes], reason: str
) -> None:
    with pytest.raises(IdentityError) as e:
        ca.sign_csr(make(), WEB, now=T0)
    assert reason in str(e.value)


@pytest.mark.parametrize(
    "names",
    [[_uri(WEB)], None],
    ids=["its own spiffe id", "no san at all"],
)
def test_a_csr_is_signed_as_the_granted_identity(
    ca: CertificateAuthority, names: list[x509.GeneralName] | None
) -> None:
    csr = _csr(names)

    issued = ca.sign_csr(csr, WEB, now=T0)

    san = leaf_of(issued).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [_uri(WEB)]


def test_what_a_csr_asks_for_beyond_its_name_is_ignored(ca: CertificateAuthority) -> None:
    csr = _csr([_uri(WEB)], extensions=[x509.BasicConstraints(ca=True, path_length=None)])

    leaf = leaf_of(ca.sign_csr(csr, WEB, now=T0))

    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.subject.rfc4514_string() == "O=example.org"


def test_a_csr_may_be_given_as_text(ca: CertificateAuthority) -> None:
    csr = make_csr(generate_private_key(), WEB).decode()

    assert ca.sign_csr(csr, WEB, now=T0).spiffe_id == WEB


def test_make_csr_carries_the_identity_and_the_keys_public_half() -> None:
    key_pem = generate_private_key()

    csr = x509.load_pem_x509_csr(make_csr(key_pem, WEB))

    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [_uri(WEB)]
    assert csr.public_key() == load_private_key(key_pem).public_key()


def test_generated_keys_are_p256_pkcs8() -> None:
    key_pem = generate_private_key()

    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = load_private_key(key_pem)
    assert isinstance(key.curve, ec.SECP256R1)


def test_a_csr_cannot_be_made_with_an_rsa_key() -> None:
    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

    with pytest.raises(IdentityError, match="ECDSA P-256 key is needed"):
        make_csr(rsa_pem, WEB)
