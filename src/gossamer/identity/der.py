"""Certificates read with the standard library only: what a proxy needs to know of them.

The proxy reads a few facts from certificates: the validity of its own leaf, the
fingerprints of its issuer and of the roots it trusts, and the SPIFFE ID of a peer
(which `ssl` already gives, see `identity.tls.peer_spiffe_id`). The `cryptography`
package would read them too, but loading it maps about 9 MB of native code into every
proxy (decision 0005). So the proxy reads these few DER fields itself: certificates
here come from its own control plane's CA, or were verified by OpenSSL first, and
anything that does not parse is an `IdentityError`, never a guess.

Everything that makes or signs certificates (the CA, CSRs) still uses `cryptography`,
in the control plane or in a short-lived child process (`identity.keygen`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Final

from gossamer.errors import IdentityError

_PEM_CERT: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.DOTALL
)
_SEQUENCE: Final = 0x30
_OID: Final = 0x06
_BOOLEAN: Final = 0x01
_OCTET_STRING: Final = 0x04
_UTC_TIME: Final = 0x17
_GENERALIZED_TIME: Final = 0x18
_VERSION: Final = 0xA0  # [0] EXPLICIT in TBSCertificate
_EXTENSIONS: Final = 0xA3  # [3] EXPLICIT
_KEY_ID: Final = 0x80  # [0] IMPLICIT keyIdentifier in AuthorityKeyIdentifier
_URI: Final = 0x86  # [6] IMPLICIT uniformResourceIdentifier in GeneralName
_SKI: Final = bytes((0x55, 0x1D, 0x0E))  # 2.5.29.14
_AKI: Final = bytes((0x55, 0x1D, 0x23))  # 2.5.29.35
_SAN: Final = bytes((0x55, 0x1D, 0x11))  # 2.5.29.17


class _Malformed(ValueError):
    pass


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `pos`."""
    if pos + 2 > end:
        raise _Malformed("truncated element")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > end:
            raise _Malformed("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise _Malformed("element runs past its container")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(tag, start of value, end of value) of each element in data[start:end]."""
    out = []
    pos = start
    while pos < end:
        tag, vstart, vend = _tlv(data, pos, end)
        out.append((tag, vstart, vend))
        pos = vend
    return out


def _element(data: bytes, fields: list[tuple[int, int, int]], i: int, first: int) -> bytes:
    """The whole DER element (tag and length too) of fields[i]; `first` is where
    fields[0] starts."""
    return data[(fields[i - 1][2] if i else first) : fields[i][2]]


def _time(data: bytes, tag: int, start: int, end: int) -> datetime:
    text = data[start:end].decode("ascii")
    if tag == _UTC_TIME:
        fmt, text = "%Y%m%d%H%M%SZ", ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag == _GENERALIZED_TIME:
        fmt = "%Y%m%d%H%M%SZ"
    else:
        raise _Malformed("validity is not a time")
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


@dataclass(frozen=True)
class CertificateFacts:
    """What a proxy reads of one certificate."""

    der: bytes
    not_before: datetime
    not_after: datetime
    issuer: bytes  # the issuer Name, as DER
    subject: bytes  # the subject Name, as DER
    subject_key_id: bytes | None
    authority_key_id: bytes | None
    uris: tuple[str, ...]  # subjectAltName URIs

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the DER, lowercase hex (as `bundle.certificate_fingerprint`)."""
        return hashlib.sha256(self.der).hexdigest()

    def pem(self) -> str:
        return ssl.DER_cert_to_PEM_cert(self.der)

    def may_have_issued(self, other: CertificateFacts) -> bool:
        """Whether this certificate's key is the one that signed `other`, as OpenSSL
        picks issuer candidates: the names chain, and the key identifiers, when both
        are there, agree. Signatures are not checked here: OpenSSL checks them when it
        verifies a peer; this only says which root a chain reports to."""
        if other.issuer != self.subject:
            return False
        if other.authority_key_id is not None and self.subject_key_id is not None:
            return other.authority_key_id == self.subject_key_id
        return True

    @classmethod
    def from_der(cls, der: bytes) -> CertificateFacts:
        try:
            return cls._parse(der)
        except (_Malformed, ValueError, IndexError) as e:
            raise IdentityError(f"certificate is not valid DER X.509: {e}") from None

    @classmethod
    def _parse(cls, der: bytes) -> CertificateFacts:
        tag, start, end = _tlv(der, 0, len(der))
        if tag != _SEQUENCE or end != len(der):
            raise _Malformed("not one SEQUENCE")
        tag, start, end = _tlv(der, start, end)  # tbsCertificate
        if tag != _SEQUENCE:
            raise _Malformed("no tbsCertificate")
        first = start
        fields = _children(der, start, end)
        if fields and fields[0][0] == _VERSION:
            first = fields[0][2]
            fields = fields[1:]
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
        if len(fields) < 6:
            raise _Malformed("tbsCertificate is short")
        _, vstart, vend = fields[3]
        times = _children(der, vstart, vend)
        if len(times) != 2:
            raise _Malformed("validity needs two times")
        ski = aki = None
        uris: list[str] = []
        for tag, xstart, xend in fields[6:]:
            if tag != _EXTENSIONS:
                continue
            _, seq_start, seq_end = _tlv(der, xstart, xend)
            for _, estart, eend in _children(der, seq_start, seq_end):
                parts = _children(der, estart, eend)
                oid = der[parts[0][1] : parts[0][2]]
                value = parts[-1]
                if value[0] != _OCTET_STRING or parts[0][0] != _OID:
                    raise _Malformed("bad extension")
                if oid == _SKI:
                    _, kstart, kend = _tlv(der, value[1], value[2])
                    ski = der[kstart:kend]
                elif oid == _AKI:
                    _, astart, aend = _tlv(der, value[1], value[2])
                    for t, kstart, kend in _children(der, astart, aend):
                        if t == _KEY_ID:
                            aki = der[kstart:kend]
                elif oid == _SAN:
                    _, nstart, nend = _tlv(der, value[1], value[2])
                    for t, ustart, uend in _children(der, nstart, nend):
                        if t == _URI:
                            uris.append(der[ustart:uend].decode("ascii"))
        return cls(
            der=der,
            not_before=_time(der, *times[0]),
            not_after=_time(der, *times[1]),
            issuer=_element(der, fields, 2, first),
            subject=_element(der, fields, 4, first),
            subject_key_id=ski,
            authority_key_id=aki,
            uris=tuple(uris),
        )


def read_pem_certificates(pem: str | bytes, what: str = "PEM") -> list[CertificateFacts]:
    """Every certificate in `pem`, in order; IdentityError if there is none or one is
    not a certificate."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        raise IdentityError(f"{what} holds no PEM certificate")
    certs = []
    for block in blocks:
        try:
            der = base64.b64decode(b"".join(block.split()), validate=True)
        except (binascii.Error, ValueError):
            raise IdentityError(f"{what} has a certificate that is not base64") from None
        certs.append(CertificateFacts.from_der(der))
    return certs
