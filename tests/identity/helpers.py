"""Builders shared by the identity tests: fixed clock, certificates, a TLS pump."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gossamer.identity import (
    CertificateAuthority,
    IssuedCertificate,
    SpiffeId,
    generate_private_key,
    make_csr,
)

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TD = "example.org"
WEB = SpiffeId(TD, "default", "web")
API = SpiffeId(TD, "shop", "api")
OPENSSL = "/usr/bin/openssl"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def issue(
    ca: CertificateAuthority,
    identity: SpiffeId,
    now: datetime | None = T0,
    ttl: timedelta = timedelta(hours=24),
) -> tuple[bytes, IssuedCertificate]:
    key = generate_private_key()
    return key, ca.sign_csr(make_csr(key, identity), identity, ttl=ttl, now=now)


def leaf_of(issued: IssuedCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.certificate_pem.encode())


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    cn: str,
    key: PrivateKey,
    *,
    issuer: x509.Certificate | None = None,
    issuer_key: PrivateKey | None = None,
    ca: bool = True,
    pathlen: int | None = None,
    key_cert_sign: bool = True,
    not_before: datetime = T0 - timedelta(days=1),
    not_after: datetime = T0 + timedelta(days=365),
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """A certificate as an operator's own tooling might make it; self-signed by default."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=pathlen if ca else None), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca and key_cert_sign,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *args],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@dataclass
class Handshake:
    server: ssl.SSLObject
    client: ssl.SSLObject
    server_error: ssl.SSLError | None
    client_error: ssl.SSLError | None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Handshake:
    """A full TLS handshake between two contexts over memory BIOs, without sockets."""
    to_server, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(to_server, from_server, server_side=True)
    client = client_ctx.wrap_bio(to_client, from_client, server_side=False)
    errors: dict[str, ssl.SSLError | None] = {"server": None, "client": None}
    done = {"server": False, "client": False}
    for _ in range(20):
        for side, obj in (("client", client), ("server", server)):
            if done[side] or errors[side]:
                continue
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                errors[side] = e
        moved = from_client.pending or from_server.pending
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if (all(done.values()) or any(errors.values())) and not moved:
            break
    return Handshake(server, client, errors["server"], errors["client"])
