"""Trust bundles (the root certificates a workload trusts) and CA fingerprints."""

from __future__ import annotations

import hashlib
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from gossamer.errors import IdentityError

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex without separators."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def normalize_fingerprint(fingerprint: str) -> str:
    """Accept ``AB:CD:...`` (as ``openssl x509 -fingerprint`` prints it) or plain hex."""
    value = fingerprint.replace(":", "").strip().lower()
    if not _FINGERPRINT.fullmatch(value):
        raise ValueError(
            f"CA fingerprint {fingerprint!r} is not a SHA-256 hex digest (64 hex digits)"
        )
    return value


def certificates_to_pem(certs: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certs)


def load_bundle(bundle_pem: str | bytes) -> list[x509.Certificate]:
    """Parse a PEM trust bundle; IdentityError if it holds no certificate or is not PEM."""
    data = bundle_pem.encode("ascii") if isinstance(bundle_pem, str) else bundle_pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise IdentityError(f"trust bundle is not PEM certificates: {e}") from None
    return certs


def pinned_root(bundle_pem: str | bytes, ca_fingerprint: str) -> str:
    """The PEM of the one root in ``bundle_pem`` whose SHA-256 equals ``ca_fingerprint``.

    Only that root is returned, not the whole bundle: a bundle fetched over an
    unauthenticated channel could carry the genuine root beside an attacker's, and
    trusting the whole of it would trust the attacker's too.
    """
    want = normalize_fingerprint(ca_fingerprint)
    certs = load_bundle(bundle_pem)
    for cert in certs:
        if certificate_fingerprint(cert) == want:
            return certificates_to_pem([cert])
    raise IdentityError(
        f"no root certificate in the trust bundle has the pinned fingerprint {want}; "
        "the control plane's CA is not the one the join token was created for "
        "(create a new join token, or check the control plane address)"
    )


def chain_fingerprints(chain_pem: str | bytes, bundle_pem: str | bytes) -> tuple[str, str]:
    """(issuer, root) fingerprints of a leaf's chain: the certificate that signed the leaf
    (the intermediate, second in the chain) and the root of ``bundle_pem`` that signed
    that. Empty strings for what cannot be found. A CA rotation waits on these."""
    certs = load_bundle(chain_pem)
    if len(certs) < 2:
        return "", ""
    issuer = certs[1]
    root = ""
    for candidate in load_bundle(bundle_pem):
        try:
            issuer.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        root = certificate_fingerprint(candidate)
        break
    return certificate_fingerprint(issuer), root
