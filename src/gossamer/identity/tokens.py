"""Join tokens: how a new proxy proves it may become a workload identity.

Format: ``gsm1.<claims>.<signature>`` where ``claims`` is base64url (no padding) of a
JSON object and ``signature`` is base64url of HMAC-SHA256(key, "gsm1." + claims).
Claims::

    {"tid": token id, "td": trust domain, "ns": namespace, "sa": service account,
     "exp": expiry in Unix seconds, "caf": SHA-256 hex of the CA root (the pin),
     "use": how many joins it is good for (1 when absent; counted by the control plane)}

Bootstrap trust, in order:

1. An operator runs ``gossamer token create``; the control plane signs the claims with
   its token key and puts its CA root's fingerprint in them. The token reaches the new
   host out of band (a file, an environment variable), like an SSH host-key fingerprint.
2. The proxy, which trusts nothing yet, reads ``caf`` with :func:`decode_unverified`
   (it cannot check the HMAC: only the control plane holds the key).
3. It fetches the trust bundle from the control plane over a connection it does not
   yet trust, and keeps only the root whose SHA-256 equals ``caf``
   (:func:`gossamer.identity.bundle.pinned_root`); no match means it is talking to
   the wrong control plane, or an impostor, and it stops.
4. With that root it opens a verified TLS connection to the control plane and sends
   the token and a CSR. The control plane :meth:`JoinTokenIssuer.verify`-ies the token
   (signature, expiry, trust domain, CA pin) and signs the CSR as the identity the
   token names, never one the CSR asks for.

So the token authenticates the proxy to the control plane (HMAC), and the pin in the
token authenticates the control plane to the proxy, with no trust on first use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gossamer.errors import IdentityError
from gossamer.identity import _files
from gossamer.identity.bundle import normalize_fingerprint
from gossamer.identity.spiffe import SpiffeId, validate_trust_domain

PREFIX = "gsm1"
KEY_BYTES = 32
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_MALFORMED = "join token is malformed: expected gsm1.<claims>.<signature>"


@dataclass(frozen=True)
class JoinClaims:
    token_id: str
    trust_domain: str
    namespace: str
    service_account: str
    expires_at: datetime
    ca_fingerprint: str
    # How many certificates the token may buy; the control plane counts uses durably.
    max_uses: int = 1

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.service_account)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    # Only the canonical spelling is accepted (the decoder alone would also take '+',
    # '/' and stray low bits), so one token has exactly one string form.
    if not _BASE64URL.fullmatch(text):
        raise IdentityError(_MALFORMED)
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise IdentityError(_MALFORMED) from None
    if _b64encode(data) != text:
        raise IdentityError(_MALFORMED)
    return data


def _split(token: str) -> tuple[str, bytes]:
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not _BASE64URL.fullmatch(parts[1]):
        raise IdentityError(_MALFORMED)
    return parts[1], _b64decode(parts[2])


def _claims_from_payload(payload: str) -> JoinClaims:
    try:
        raw: Any = json.loads(_b64decode(payload))
        if not isinstance(raw, dict):
            raise TypeError("claims are not an object")
        fields = (raw["tid"], raw["td"], raw["ns"], raw["sa"], raw["caf"])
        exp, uses = raw["exp"], raw.get("use", 1)
        if not all(isinstance(f, str) for f in fields) or type(exp) is not int:
            raise TypeError("claim of the wrong type")
        if type(uses) is not int or uses < 1:
            raise TypeError("use claim must be a positive integer")
        identity = SpiffeId(raw["td"], raw["ns"], raw["sa"])
        return JoinClaims(
            token_id=raw["tid"],
            trust_domain=identity.trust_domain,
            namespace=identity.namespace,
            service_account=identity.service_account,
            expires_at=datetime.fromtimestamp(exp, UTC),
            ca_fingerprint=normalize_fingerprint(raw["caf"]),
            max_uses=uses,
        )
    except (ValueError, TypeError, KeyError, OverflowError, OSError) as e:
        raise IdentityError(f"{_MALFORMED} ({e})") from None


def decode_unverified(token: str) -> JoinClaims:
    """The token's claims without checking its signature or expiry.

    Only for the proxy's bootstrap (reading the CA pin); never grant anything on it.
    """
    payload, _ = _split(token)
    return _claims_from_payload(payload)


def load_or_create_token_key(path: Path) -> bytes:
    """The control plane's HMAC key: read ``path``, or create it (32 random bytes, 0600)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # If another replica created it first, fall through and use theirs.
        _files.create_exclusive(path, secrets.token_bytes(KEY_BYTES), _files.PRIVATE)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise IdentityError(
            f"join token key {path} holds {len(key)} bytes, expected {KEY_BYTES}; remove it "
            "to create a new key (tokens issued with the old key will stop working)"
        )
    return key


class JoinTokenIssuer:
    """Creates and verifies join tokens for one control plane (one key, one CA)."""

    def __init__(self, key: bytes, trust_domain: str, ca_fingerprint: str) -> None:
        if len(key) < 16:
            raise ValueError("join token key must be at least 16 bytes")
        validate_trust_domain(trust_domain)
        self._key = bytes(key)
        self._trust_domain = trust_domain
        self._ca_fingerprint = normalize_fingerprint(ca_fingerprint)

    def repin(self, ca_fingerprint: str) -> None:
        """Pin new tokens to another root (a root rotation switched the CA to it).

        Tokens pinned to the old root are refused from then on: a proxy joining with one
        would verify the control plane against a root that no longer signs it.
        """
        self._ca_fingerprint = normalize_fingerprint(ca_fingerprint)

    def _sign(self, payload: str) -> bytes:
        return hmac.new(self._key, f"{PREFIX}.{payload}".encode("ascii"), hashlib.sha256).digest()

    def create(
        self,
        namespace: str,
        service_account: str,
        ttl: timedelta,
        now: datetime | None = None,
        max_uses: int = 1,
    ) -> str:
        """A token granting ``spiffe://<td>/ns/<namespace>/sa/<service_account>`` until now+ttl,
        good for `max_uses` joins (the control plane counts them)."""
        if ttl <= timedelta(0):
            raise ValueError(f"join token ttl must be positive, got {ttl}")
        if max_uses < 1:
            raise ValueError(f"join token max_uses must be at least 1, got {max_uses}")
        SpiffeId(self._trust_domain, namespace, service_account)  # ValueError names the field
        expires = _files.utc_now(now) + ttl
        claims = {
            "tid": secrets.token_hex(16),
            "td": self._trust_domain,
            "ns": namespace,
            "sa": service_account,
            "exp": int(expires.timestamp()),
            "caf": self._ca_fingerprint,
            "use": max_uses,
        }
        payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        return f"{PREFIX}.{payload}.{_b64encode(self._sign(payload))}"

    def verify(self, token: str, now: datetime | None = None) -> JoinClaims:
        """The claims of a token this control plane issued and that is still good."""
        payload, signature = _split(token)
        # Signature before anything else: nothing in an unsigned payload is worth reading.
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise IdentityError(
                "join token was not issued by this control plane (signature does not match)"
            )
        claims = _claims_from_payload(payload)
        if _files.utc_now(now) >= claims.expires_at:
            raise IdentityError(
                f"join token expired at {claims.expires_at.isoformat()}; create a new one "
                "with `gossamer token create`"
            )
        if claims.trust_domain != self._trust_domain:
            raise IdentityError(
                f"join token is for trust domain {claims.trust_domain!r}, but this control "
                f"plane serves {self._trust_domain!r}; create a token on the right control plane"
            )
        if claims.ca_fingerprint != self._ca_fingerprint:
            raise IdentityError(
                "join token pins a CA root this control plane no longer uses (the CA was "
                "replaced); create a new one with `gossamer token create`"
            )
        return claims
