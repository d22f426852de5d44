"""Trust bundles (the root certificates a workload trusts) and CA fingerprints.

What the proxy calls here (`pinned_root`, `chain_fingerprints`, `normalize_fingerprint`)
reads certificates with `identity.der`, so the proxy never loads `cryptography`; the
functions that take or return `x509.Certificate` import it when called.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from gossamer.errors import IdentityError
from gossamer.identity.der import read_pem_certificates

if TYPE_CHECKING:
    from cryptography import x509

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex without separators."""
    from cryptography.hazmat.primitives.serialization import Encoding

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
    from cryptography.hazmat.primitives.serialization import Encoding

    return "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certs)


def load_bundle(bundle_pem: str | bytes) -> list[x509.Certificate]:
    """Parse a PEM trust bundle; IdentityError if it holds no certificate or is not PEM."""
    from cryptography import x509

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
    for cert in read_pem_certificates(bundle_pem, "trust bundle"):
        if cert.fingerprint == want:
            return cert.pem()
    raise IdentityError(
        f"no root certificate in the trust bundle has the pinned fingerprint {want}; "
        "the control plane's CA is not the one the join token was created for "
        "(create a new join token, or check the control plane address)"
    )


def chain_fingerprints(chain_pem: str | bytes, bundle_pem: str | bytes) -> tuple[str, str]:
    """(issuer, root) fingerprints of a leaf's chain: the certificate that signed the leaf
    (the intermediate, second in the chain) and the root of ``bundle_pem`` whose name and
    key identifier match its issuer's. Empty strings for what cannot be found. A CA
    rotation waits on these."""
    certs = read_pem_certificates(chain_pem, "certificate chain")
    if len(certs) < 2:
        return "", ""
    issuer = certs[1]
    root = next(
        (r for r in read_pem_certificates(bundle_pem, "trust bundle") if r.may_have_issued(issuer)),
        None,
    )
    return issuer.fingerprint, root.fingerprint if root is not None else ""
