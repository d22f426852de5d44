"""mTLS between proxies: contexts, and the SNI/ALPN convention peers follow.

A proxy calling a peer's inbound listener sends, in the ClientHello:

- SNI ``p<target_port>.<workload>.<namespace>.gossamer``: which of the peer's local
  ports the connection is for (one inbound listener serves them all);
- ALPN ``gossamer/h1`` (HTTP/1.1 follows), ``gossamer/h2`` (HTTP/2 follows, see
  proxy.wire.http2) or ``gossamer/tcp`` (opaque bytes follow).

The client then checks that the peer's SPIFFE ID is the endpoint's identity from the
snapshot; the server requires a client certificate chaining to the trust bundle.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from gossamer.errors import IdentityError
from gossamer.identity import tls as identity_tls
from gossamer.identity.bundle import chain_fingerprints
from gossamer.identity.der import read_pem_certificates

ALPN_H1: Final = "gossamer/h1"
ALPN_TCP: Final = "gossamer/tcp"
ALPN_H2: Final = "gossamer/h2"
SNI_SUFFIX: Final = ".gossamer"


@dataclass(frozen=True)
class Credentials:
    """A workload's certificate chain (leaf first), key and trust bundle."""

    chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes
    not_before: datetime
    not_after: datetime

    @classmethod
    def from_pem(cls, chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> Credentials:
        leaf = read_pem_certificates(chain_pem, "certificate chain")[0]
        return cls(chain_pem, key_pem, bundle_pem, leaf.not_before, leaf.not_after)

    def renew_at(self) -> datetime:
        """Two thirds into the certificate's life, like Istio and Linkerd."""
        return self.not_before + (self.not_after - self.not_before) * 2 / 3

    def status(self) -> dict[str, str]:
        """What the control plane is told about this certificate (hello and status)."""
        issuer, root = chain_fingerprints(self.chain_pem, self.bundle_pem)
        return {
            "certificateNotAfter": self.not_after.isoformat(),
            "issuerFingerprint": issuer,
            "rootFingerprint": root,
        }


@dataclass(frozen=True)
class MeshContexts:
    """The TLS contexts made from one set of credentials."""

    server: ssl.SSLContext
    client_h1: ssl.SSLContext
    client_tcp: ssl.SSLContext
    not_after: datetime
    client_h2: ssl.SSLContext | None = None


def make_contexts(creds: Credentials) -> MeshContexts:
    server = identity_tls.server_context(
        creds.chain_pem,
        creds.key_pem,
        creds.bundle_pem,
        require_client_cert=True,
        alpn_protocols=[ALPN_H1, ALPN_TCP, ALPN_H2],
    )
    # Proxies keep connections open and never resume sessions; tickets would be
    # work and bytes for nothing.
    server.num_tickets = 0
    client_h1 = identity_tls.client_context(
        creds.chain_pem, creds.key_pem, creds.bundle_pem, alpn_protocols=[ALPN_H1]
    )
    client_tcp = identity_tls.client_context(
        creds.chain_pem, creds.key_pem, creds.bundle_pem, alpn_protocols=[ALPN_TCP]
    )
    client_h2 = identity_tls.client_context(
        creds.chain_pem, creds.key_pem, creds.bundle_pem, alpn_protocols=[ALPN_H2]
    )
    intermediates = _intermediates(creds.chain_pem)
    if intermediates:
        # A peer that presents only its leaf (`openssl s_client -cert` does) can still
        # be verified when it shares our intermediate. OpenSSL uses these to build the
        # chain only: without X509_V_FLAG_PARTIAL_CHAIN trust still ends at a root
        # from the bundle.
        for ctx in (server, client_h1, client_tcp, client_h2):
            ctx.load_verify_locations(cadata=intermediates)
            ctx.verify_flags &= ~ssl.VERIFY_X509_PARTIAL_CHAIN
    return MeshContexts(server, client_h1, client_tcp, creds.not_after, client_h2)


def _intermediates(chain_pem: bytes) -> str:
    marker = "-----BEGIN CERTIFICATE-----"
    text = chain_pem.decode("ascii", "replace")
    certs = [marker + part for part in text.split(marker)[1:]]
    return "".join(certs[1:])


def sni_for(target_port: int, workload: str, namespace: str) -> str:
    return f"p{target_port}.{workload}.{namespace}{SNI_SUFFIX}"


def peer_identity(ssl_object: ssl.SSLObject | None) -> str | None:
    """The peer's SPIFFE ID as a URI, or None when it presented no usable one."""
    if ssl_object is None:
        return None
    try:
        return str(identity_tls.peer_spiffe_id(ssl_object))
    except IdentityError:
        return None


def spiffe_namespace(identity: str | None) -> str:
    """The namespace in ``spiffe://td/ns/<ns>/sa/<sa>``; "unknown" for anything else."""
    if identity:
        parts = identity.split("/")
        if len(parts) == 7 and parts[3] == "ns":
            return parts[4]
    return "unknown"
