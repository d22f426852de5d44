"""CA private keys as they may be kept in a shared store: sealed, never in clear.

Replicas sharing a store are given the same `ca/` directory (decision 0052), and with it
the same `ca/token.key`. A key-encryption key is derived from that file (HKDF-SHA256,
its own label, so it is never the key that signs join tokens), and each private key is
sealed with AES-256-GCM under a fresh 96-bit nonce, its purpose ("issuer", "root", ...)
bound as associated data so a sealed key cannot be passed off as another. Whoever
reads the store without `ca/token.key` learns nothing of the keys. See decision 0054.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gossamer.errors import IdentityError
from gossamer.identity.csr import load_private_key

__all__ = ["KeySealer"]

_LABEL: Final = b"gossamer ca key sealing v1"
_SCHEME: Final = "aes-256-gcm+hkdf-sha256(token.key)"


class KeySealer:
    """Seals and opens CA private keys with a key derived from `secret` (ca/token.key)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise IdentityError("the key-sealing secret (ca/token.key) is shorter than 32 bytes")
        kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL).derive(secret)
        self._aead = AESGCM(kek)

    def seal(self, key: ec.EllipticCurvePrivateKey, purpose: str) -> dict[str, Any]:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, pem, purpose.encode())
        return {
            "scheme": _SCHEME,
            "purpose": purpose,
            "nonce": base64.b64encode(nonce).decode(),
            "sealed": base64.b64encode(sealed).decode(),
        }

    def open(self, sealed: Any, purpose: str) -> ec.EllipticCurvePrivateKey:
        """The key sealed as `purpose`; IdentityError if it is not one this secret sealed."""
        if not isinstance(sealed, dict) or sealed.get("scheme") != _SCHEME:
            raise IdentityError(f"the stored CA {purpose} key is not sealed as {_SCHEME}")
        try:
            nonce = base64.b64decode(sealed["nonce"], validate=True)
            body = base64.b64decode(sealed["sealed"], validate=True)
            pem = self._aead.decrypt(nonce, body, purpose.encode())
        except (KeyError, TypeError, ValueError, InvalidTag) as err:
            raise IdentityError(
                f"the stored CA {purpose} key cannot be opened with this replica's "
                "ca/token.key: every replica must be given the same ca/ directory "
                f"({type(err).__name__})"
            ) from None
        return load_private_key(pem)
