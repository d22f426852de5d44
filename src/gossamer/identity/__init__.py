"""Workload identity: the mesh CA, SPIFFE IDs, CSRs, join tokens and mTLS contexts.

The public surface is what this module exports; the submodules are the same names
grouped by concern.

The exports load on first use (gossamer._lazy): a proxy imports the light modules
(`identity.der`, `identity.spiffe`, `identity.tls`) and never the CA's, which load
`cryptography`.
"""

from typing import TYPE_CHECKING, Any

from gossamer._lazy import load_export

if TYPE_CHECKING:
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

_EXPORTS = {
    "CertificateAuthority": "gossamer.identity.ca",
    "DEFAULT_LEAF_TTL": "gossamer.identity.ca",
    "IssuedCertificate": "gossamer.identity.ca",
    "JoinClaims": "gossamer.identity.tokens",
    "JoinTokenIssuer": "gossamer.identity.tokens",
    "OperatorCA": "gossamer.identity.ca",
    "SpiffeId": "gossamer.identity.spiffe",
    "certificate_fingerprint": "gossamer.identity.bundle",
    "client_context": "gossamer.identity.tls",
    "decode_unverified": "gossamer.identity.tokens",
    "generate_private_key": "gossamer.identity.csr",
    "load_bundle": "gossamer.identity.bundle",
    "load_identity": "gossamer.identity.tls",
    "load_or_create_token_key": "gossamer.identity.tokens",
    "load_private_key": "gossamer.identity.csr",
    "make_csr": "gossamer.identity.csr",
    "normalize_fingerprint": "gossamer.identity.bundle",
    "peer_spiffe_id": "gossamer.identity.tls",
    "pinned_root": "gossamer.identity.bundle",
    "server_context": "gossamer.identity.tls",
    "spiffe_id_from_certificate": "gossamer.identity.spiffe",
    "validate_trust_domain": "gossamer.identity.spiffe",
}

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


def __getattr__(name: str) -> Any:
    return load_export(__name__, _EXPORTS, name, globals())
