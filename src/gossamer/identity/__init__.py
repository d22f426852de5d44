"""Workload identity: the mesh CA, SPIFFE IDs, CSRs, join tokens and mTLS contexts.

The public surface is what this module exports; the submodules are the same names
grouped by concern.
"""

from gossamer.identity.bundle import (
    certificate_fingerprint,
    load_bundle,
    normalize_fingerprint,
    pinned_root,
)
from gossamer.identity.ca import (
    DEFAULT_LEAF_TTL,
    CertificateAuthority,
    IssuedCertificate,
    OperatorCA,
)
from gossamer.identity.csr import generate_private_key, load_private_key, make_csr
from gossamer.identity.spiffe import SpiffeId, spiffe_id_from_certificate, validate_trust_domain
from gossamer.identity.tls import client_context, load_identity, peer_spiffe_id, server_context
from gossamer.identity.tokens import (
    JoinClaims,
    JoinTokenIssuer,
    decode_unverified,
    load_or_create_token_key,
)

__all__ = [
    "DEFAULT_LEAF_TTL",
    "CertificateAuthority",
    "IssuedCertificate",
    "JoinClaims",
    "JoinTokenIssuer",
    "OperatorCA",
    "SpiffeId",
    "certificate_fingerprint",
    "client_context",
    "decode_unverified",
    "generate_private_key",
    "load_bundle",
    "load_identity",
    "load_or_create_token_key",
    "load_private_key",
    "make_csr",
    "normalize_fingerprint",
    "peer_spiffe_id",
    "pinned_root",
    "server_context",
    "spiffe_id_from_certificate",
    "validate_trust_domain",
]
