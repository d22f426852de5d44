"""The workload side of issuance: a private key that never leaves the workload, and a CSR."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gossamer.errors import IdentityError
from gossamer.identity.spiffe import SpiffeId


def generate_private_key() -> bytes:
    """A new ECDSA P-256 key as unencrypted PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(key_pem: bytes | str) -> ec.EllipticCurvePrivateKey:
    """Load a P-256 key; IdentityError names what else it is."""
    data = key_pem.encode("ascii") if isinstance(key_pem, str) else key_pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise IdentityError(f"private key is not an unencrypted PEM key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError(f"private key is {type(key).__name__}; an ECDSA P-256 key is needed")
    return key


def make_csr(key_pem: bytes | str, identity: SpiffeId) -> bytes:
    """A CSR (PEM) for ``identity``, signed by ``key_pem``.

    The subject is left empty: the CA decides every property of the leaf except the
    key, and reads the CSR's SAN only to check it asks for nothing beyond ``identity``.
    """
    key = load_private_key(key_pem)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def main(argv: list[str] | None = None) -> int:
    """`python -m gossamer.identity.csr SPIFFE_ID`: a new key and a CSR for it, as JSON
    on standard output (see identity.keygen: the proxy's way to make them)."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m gossamer.identity.csr SPIFFE_ID", file=sys.stderr)
        return 2
    try:
        identity = SpiffeId.parse(args[0])
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    key = generate_private_key()
    json.dump({"key": key.decode(), "csr": make_csr(key, identity).decode()}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
