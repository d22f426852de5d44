"""TLS contexts for mesh traffic: TLS 1.3, mutual, peers named by SPIFFE ID.

Hostname checking is off on purpose: a mesh peer is reached by IP, and who it is comes
from the SPIFFE ID in its certificate (:func:`peer_spiffe_id`), which authorization
then checks. Chain verification against the trust bundle stays on.

``ssl`` loads a certificate chain and key only from a file path. The key and chain are
written to an anonymous in-memory file (``memfd_create``) and loaded through
``/proc/self/fd``, so the key never touches a filesystem; where that is not available,
a private (0700) temporary directory is used and removed right after loading.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

from gossamer.errors import IdentityError
from gossamer.identity.spiffe import SpiffeId, spiffe_id_from_uris


def _as_bytes(pem: str | bytes) -> bytes:
    return pem.encode("ascii") if isinstance(pem, str) else pem


@contextlib.contextmanager
def _memfd(data: bytes) -> Iterator[str | None]:
    if not hasattr(os, "memfd_create"):
        yield None
        return
    fd = os.memfd_create("gossamer-tls", os.MFD_CLOEXEC)
    try:
        path = f"/proc/self/fd/{fd}"
        if not os.path.exists(path):  # /proc not mounted (some minimal containers)
            yield None
            return
        os.write(fd, data)
        yield path
    finally:
        os.close(fd)


@contextlib.contextmanager
def _private_tempfile(data: bytes) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="gossamer-tls-") as tmp:  # mkdtemp: 0700
        path = Path(tmp) / "identity.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield str(path)


@contextlib.contextmanager
def _identity_file(data: bytes) -> Iterator[str]:
    """A path that holds ``data`` for the duration of the block, and nowhere after."""
    with _memfd(data) as memfd_path:
        if memfd_path is not None:
            yield memfd_path
            return
    with _private_tempfile(data) as path:
        yield path


def load_identity(ctx: ssl.SSLContext, chain_pem: str | bytes, key_pem: str | bytes) -> None:
    """Load a chain (leaf first) and its key into ``ctx``, replacing any loaded before.

    For renewal in place: a listener keeps its context, and new handshakes present the
    new certificate.
    """
    # One file holding the chain then the key: OpenSSL reads the certificates from it
    # and, with no keyfile given, the first private key.
    data = _as_bytes(chain_pem).rstrip(b"\n") + b"\n" + _as_bytes(key_pem)
    try:
        with _identity_file(data) as path:
            ctx.load_cert_chain(path)
    except ssl.SSLError as e:
        raise IdentityError(
            f"cannot load the TLS certificate chain and key ({e.reason or e}); the chain "
            "must start with the leaf and the key must be the leaf's"
        ) from None


def _base_context(protocol: int, bundle_pem: str | bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    try:
        ctx.load_verify_locations(cadata=_as_bytes(bundle_pem).decode("ascii"))
    except (ssl.SSLError, ValueError) as e:
        raise IdentityError(f"cannot load the trust bundle: {e}") from None
    return ctx


def server_context(
    chain_pem: str | bytes,
    key_pem: str | bytes,
    bundle_pem: str | bytes,
    require_client_cert: bool = True,
    *,
    alpn_protocols: Sequence[str] | None = None,
) -> ssl.SSLContext:
    """A server context presenting ``chain_pem`` (leaf first) and verifying clients.

    Without ``require_client_cert`` a client may connect with no certificate (a proxy
    bootstrapping with a join token, or permissive mTLS), but one it does present must
    still chain to the bundle.
    """
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, bundle_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    load_identity(ctx, chain_pem, key_pem)
    if alpn_protocols:
        ctx.set_alpn_protocols(list(alpn_protocols))
    return ctx


def client_context(
    chain_pem: str | bytes | None,
    key_pem: str | bytes | None,
    bundle_pem: str | bytes,
    *,
    alpn_protocols: Sequence[str] | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the server against the bundle (never by hostname).

    ``chain_pem`` and ``key_pem`` may both be None for a client that has no identity yet
    (a proxy's first call to the control plane, authenticated by its join token).
    """
    if (chain_pem is None) != (key_pem is None):
        raise ValueError("give both chain_pem and key_pem, or neither")
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, bundle_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if chain_pem is not None and key_pem is not None:
        load_identity(ctx, chain_pem, key_pem)
    if alpn_protocols:
        ctx.set_alpn_protocols(list(alpn_protocols))
    return ctx


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> SpiffeId:
    """The SPIFFE ID in the certificate the peer presented, read from what ``ssl`` decoded
    of it. ``ssl`` decodes only a certificate it verified, so an unverified one (a
    context without verification) names no identity, rather than one taken on trust."""
    cert = ssl_object.getpeercert()
    if not cert:
        if ssl_object.getpeercert(binary_form=True):
            raise IdentityError("the peer's certificate was not verified, so it names no one")
        raise IdentityError("the peer presented no certificate, so it has no identity")
    names = cast(tuple[tuple[str, str], ...], cert.get("subjectAltName", ()))
    return spiffe_id_from_uris(value for kind, value in names if kind == "URI")
