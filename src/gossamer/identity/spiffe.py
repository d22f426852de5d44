"""SPIFFE IDs: the name every workload carries in its certificate.

A Gossamer identity is always ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``.
Anything else, even a valid SPIFFE ID of another shape, is refused: authorization
policies match on namespace and service account, so an ID without them means nothing here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gossamer.errors import IdentityError

if TYPE_CHECKING:
    from cryptography import x509

SCHEME = "spiffe://"

# The SPIFFE ID spec (section 2.1/2.2) allows these characters; uppercase in the trust
# domain is refused rather than folded so that one identity has exactly one spelling,
# which is what policy matching and certificate comparison rely on.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_MAX_TRUST_DOMAIN = 255
_MAX_ID = 2048


def validate_trust_domain(trust_domain: str) -> None:
    """Raise ValueError saying why ``trust_domain`` is not a usable trust domain name."""
    if not trust_domain:
        raise ValueError("trust domain is empty")
    if len(trust_domain) > _MAX_TRUST_DOMAIN:
        raise ValueError(f"trust domain is longer than {_MAX_TRUST_DOMAIN} characters")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(
            f"trust domain {trust_domain!r} may contain only lowercase letters, digits, "
            "'.', '-' and '_'"
        )


def _validate_segment(what: str, value: str) -> None:
    if not value:
        raise ValueError(f"{what} is empty")
    if value in (".", ".."):
        raise ValueError(f"{what} {value!r} is not allowed")
    if not _SEGMENT.fullmatch(value):
        raise ValueError(f"{what} {value!r} may contain only letters, digits, '.', '-' and '_'")


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A workload identity; ``str()`` gives its URI form."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        _validate_segment("namespace", self.namespace)
        _validate_segment("service account", self.service_account)
        if len(str(self)) > _MAX_ID:
            raise ValueError(f"SPIFFE ID is longer than {_MAX_ID} characters")

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse ``spiffe://<td>/ns/<ns>/sa/<sa>``; ValueError names what is wrong."""
        if not uri.startswith(SCHEME):
            raise ValueError(f"SPIFFE ID {uri!r} must start with {SCHEME!r}")
        rest = uri[len(SCHEME) :]
        if "?" in rest or "#" in rest:
            raise ValueError(f"SPIFFE ID {uri!r} must not have a query or fragment")
        trust_domain, slash, path = rest.partition("/")
        if not slash:
            raise ValueError(
                f"SPIFFE ID {uri!r} has no path; expected "
                f"{SCHEME}<trust-domain>/ns/<namespace>/sa/<service-account>"
            )
        try:
            validate_trust_domain(trust_domain)
        except ValueError as e:
            raise ValueError(f"SPIFFE ID {uri!r}: {e}") from None
        segments = path.split("/")
        if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
            raise ValueError(
                f"SPIFFE ID {uri!r} has path '/{path}'; expected "
                "/ns/<namespace>/sa/<service-account>"
            )
        try:
            return cls(trust_domain, segments[1], segments[3])
        except ValueError as e:
            raise ValueError(f"SPIFFE ID {uri!r}: {e}") from None


def spiffe_id_from_certificate(cert: x509.Certificate) -> SpiffeId:
    """The one SPIFFE ID a certificate's subjectAltName carries."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError(
            "certificate has no subjectAltName, so it carries no SPIFFE ID"
        ) from None
    return spiffe_id_from_uris(san.get_values_for_type(x509.UniformResourceIdentifier))


def spiffe_id_from_uris(uris: Iterable[str]) -> SpiffeId:
    """The one SPIFFE ID among a certificate's subjectAltName URIs.

    Zero or several spiffe:// URIs is an error: a peer that could be two identities
    cannot be authorized as either.
    """
    found = [u for u in uris if u.lower().startswith(SCHEME)]
    if len(found) != 1:
        raise IdentityError(
            f"certificate must carry exactly one spiffe:// URI SAN, found {len(found)}"
        )
    try:
        return SpiffeId.parse(found[0])
    except ValueError as e:
        raise IdentityError(f"certificate carries an unusable SPIFFE ID: {e}") from None
