"""The mesh certificate authority: root -> intermediate -> short-lived workload leaves.

On disk (``ca_dir``, mode 0700)::

    root.crt          the trust anchor(s); several roots are allowed (rotation)
    root.key          optional: an operator may keep the root offline
    intermediate.crt  the certificate that signs every leaf
    intermediate.key  its key (0600)
    bundle.crt        the trust bundle handed to workloads (== root.crt)

The CA reads only the SubjectAltName of a CSR, and only to refuse names the caller
was not granted; every other property of a leaf (subject, key usage, lifetime) is
decided here, so a workload cannot ask for more than an identity.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gossamer.errors import IdentityError
from gossamer.identity import _files
from gossamer.identity.bundle import certificate_fingerprint, certificates_to_pem
from gossamer.identity.spiffe import SpiffeId, validate_trust_domain

ROOT_CERT = "root.crt"
ROOT_KEY = "root.key"
INTERMEDIATE_CERT = "intermediate.crt"
INTERMEDIATE_KEY = "intermediate.key"
BUNDLE = "bundle.crt"

ROOT_LIFETIME = timedelta(days=3650)
INTERMEDIATE_LIFETIME = timedelta(days=365)
# Leaves are capped at the intermediate's expiry, so an intermediate near its end would
# hand out ever shorter certificates; renewing a month ahead keeps leaves at full TTL.
INTERMEDIATE_RENEW_BEFORE = timedelta(days=30)
DEFAULT_LEAF_TTL = timedelta(hours=24)
# Backdating not_before tolerates peers whose clocks run a little behind ours.
CLOCK_SKEW = timedelta(minutes=1)

# Roots made by a rotation carry a suffix (" R" + key id) so two roots of one trust
# domain are told apart by name as well as by key identifier.
_ROOT_CN = re.compile(r"Gossamer Root CA \((?P<td>[^)]*)\)(?: R[0-9a-f]+)?")


@dataclass(frozen=True)
class OperatorCA:
    """Paths to a bring-your-own CA: the root certificate(s), an intermediate and its key."""

    root_cert: Path
    intermediate_cert: Path
    intermediate_key: Path


@dataclass(frozen=True)
class StagedIssuer:
    """What a rotation will switch the CA to: an intermediate (and its key), the roots
    that must be trusted before it signs anything, and the root key if it is kept."""

    roots: tuple[x509.Certificate, ...]
    intermediate_cert: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    root_key: ec.EllipticCurvePrivateKey | None = None

    def fingerprint(self) -> str:
        return certificate_fingerprint(self.intermediate_cert)


@dataclass(frozen=True)
class IssuedCertificate:
    """A signed leaf. PEM fields are text so they travel in JSON unchanged."""

    certificate_pem: str  # the leaf alone
    chain_pem: str  # leaf then intermediate: what a workload presents in TLS
    trust_bundle_pem: str  # the roots a workload verifies peers against
    spiffe_id: SpiffeId
    serial: str  # lowercase hex, as `openssl x509 -serial` prints it (there in uppercase)
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class _Issuer:
    # Certificate and key travel together so a concurrent renewal can never pair a new
    # certificate with an old key.
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _describe_key(key: PublicKeyTypes) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def _is_p256(key: PublicKeyTypes) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def _describe_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"dns:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"ip:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"uri:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"directory name {name.value.rfc4514_string()!r}"
    return f"a {type(name).__name__} name"


def _requested_names(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _serial_number() -> int:
    # 128 random bits (CA/B Forum asks for at least 64); zero is not a valid serial.
    return secrets.randbits(128) or 1


def _ski(key: CertificateIssuerPublicKeyTypes) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        # Operator CAs may lack a SKI; derive the same value RFC 5280 method 1 would.
        public_key = issuer.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


HOST_ISSUED_OID: Final = x509.ObjectIdentifier("2.25.55270785246703751542985985550650029547")
"""A private, non-critical leaf extension (an OID under 2.25, ITU-T X.667, needing no
registration) whose value is the DER UTF8String of the host a workload certificate was
issued through (per-host mode, decision 0064). Other TLS stacks ignore it; the control
plane reads it to keep such a certificate off the sidecar and xDS renewal paths."""


def _host_mark(host: str) -> x509.UnrecognizedExtension:
    data = host.encode("utf-8")
    size = len(data)
    if size > 0xFFFF:
        raise ValueError(f"host name of {size} bytes is too long to mark a certificate with")
    length = bytes([size]) if size < 0x80 else bytes([0x80 | 2, size >> 8, size & 0xFF])
    return x509.UnrecognizedExtension(HOST_ISSUED_OID, b"\x0c" + length + data)


def issued_through_host(cert: x509.Certificate) -> str | None:
    """The host a certificate was issued through (`HOST_ISSUED_OID`), or None."""
    try:
        ext = cert.extensions.get_extension_for_oid(HOST_ISSUED_OID).value
    except x509.ExtensionNotFound:
        return None
    raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    if len(raw) >= 2 and raw[0] == 0x0C:
        start = 2 if raw[1] < 0x80 else 2 + (raw[1] & 0x7F)
        return raw[start:].decode("utf-8", "replace")
    return "?"  # marked, whatever it says: still issued through a host


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _make_root(
    trust_domain: str, now: datetime, *, rotated: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    ski = _ski(key.public_key())
    cn = f"Gossamer Root CA ({trust_domain})"
    if rotated:
        cn += f" R{ski.digest.hex()[:8]}"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gossamer"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_intermediate(
    trust_domain: str,
    root: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    now: datetime,
) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gossamer"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Gossamer Intermediate CA ({trust_domain})"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        # An intermediate outliving its root would be cut short by verifiers anyway.
        .not_valid_after(min(now + INTERMEDIATE_LIFETIME, root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(_ski(key.public_key()), critical=False)
        .add_extension(_aki(root), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return _Issuer(cert, key)


def _read(path: Path, what: str, prefix: str, supply: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"{prefix}: {what} {path} does not exist; supply {supply}") from None
    except OSError as e:
        raise IdentityError(f"{prefix}: cannot read {what} {path}: {e.strerror}") from None


def _parse_certs(data: bytes, path: Path, what: str, prefix: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise IdentityError(
            f"{prefix}: {what} {path} is not a PEM certificate ({e}); supply a PEM file "
            "beginning with -----BEGIN CERTIFICATE-----"
        ) from None


def _parse_ec_key(data: bytes, path: Path, what: str, prefix: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise IdentityError(
            f"{prefix}: {what} {path} is encrypted; supply it unencrypted "
            "(e.g. `openssl pkey -in KEY -out KEY.plain`) and protect it with file mode 0600"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise IdentityError(f"{prefix}: {what} {path} is not a PEM private key ({e})") from None
    if not _is_p256(key.public_key()):
        raise IdentityError(
            f"{prefix}: {what} {path} is an {_describe_key(key.public_key())} key; "
            "Gossamer signs with ECDSA P-256 only, supply a P-256 (prime256v1) key"
        )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _may_sign_certificates(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty)"


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _same_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(
        serialization.Encoding.DER, fmt
    )


def _check_valid_at(cert: x509.Certificate, what: str, now: datetime, prefix: str) -> None:
    if now < cert.not_valid_before_utc:
        raise IdentityError(
            f"{prefix}: {what} is not valid until {cert.not_valid_before_utc.isoformat()} "
            f"(now is {now.isoformat()}); check the clock or supply a currently valid one"
        )
    if now >= cert.not_valid_after_utc:
        raise IdentityError(
            f"{prefix}: {what} expired at {cert.not_valid_after_utc.isoformat()}; "
            "supply a currently valid one"
        )


def _check_chain(
    roots: Sequence[x509.Certificate],
    intermediate: x509.Certificate,
    intermediate_key: ec.EllipticCurvePrivateKey,
    paths: tuple[Path, Path, Path],
    prefix: str,
) -> x509.Certificate:
    """Validate root(s) -> intermediate -> key; return the root that signed the intermediate."""
    root_path, intermediate_path, key_path = paths
    for root in roots:
        constraints = _basic_constraints(root)
        if constraints is None or not constraints.ca:
            raise IdentityError(
                f"{prefix}: root certificate {root_path} ({_subject(root)}) is not a CA "
                "certificate (BasicConstraints CA:TRUE is missing); supply your root CA "
                "certificate"
            )
        if not _signed_by(root, root):
            raise IdentityError(
                f"{prefix}: root certificate {root_path} ({_subject(root)}) is not "
                f"self-signed (its issuer is {root.issuer.rfc4514_string()}); supply the "
                "top of your chain, the self-signed root"
            )
    constraints = _basic_constraints(intermediate)
    if constraints is None or not constraints.ca:
        raise IdentityError(
            f"{prefix}: intermediate certificate {intermediate_path} ({_subject(intermediate)}) "
            "is not a CA certificate (BasicConstraints CA:TRUE is missing), so leaves it "
            "signs would not verify; supply an intermediate issued with CA:TRUE"
        )
    if not _may_sign_certificates(intermediate):
        raise IdentityError(
            f"{prefix}: intermediate certificate {intermediate_path} has a KeyUsage without "
            "keyCertSign, so it may not sign certificates; supply an intermediate whose "
            "KeyUsage includes keyCertSign"
        )
    signer = next((r for r in roots if _signed_by(intermediate, r)), None)
    if signer is None:
        raise IdentityError(
            f"{prefix}: intermediate certificate {intermediate_path} (issuer "
            f"{intermediate.issuer.rfc4514_string()}) is not signed by the root certificate "
            f"{root_path} ({', '.join(_subject(r) for r in roots)}); supply the root that "
            "issued the intermediate"
        )
    signer_constraints = _basic_constraints(signer)
    if signer_constraints is not None and signer_constraints.path_length == 0:
        raise IdentityError(
            f"{prefix}: root certificate {root_path} has pathlen:0, so no verifier will "
            "accept an intermediate under it; supply a root with pathlen of 1 or more"
        )
    if not _same_key(intermediate_key.public_key(), intermediate.public_key()):
        raise IdentityError(
            f"{prefix}: intermediate key {key_path} does not match intermediate certificate "
            f"{intermediate_path} (their public keys differ); supply the key the "
            "intermediate was issued for"
        )
    return signer


class CertificateAuthority:
    """Signs workload certificates with an intermediate under one or more roots.

    Safe to share between threads: the intermediate is swapped as one object on renewal.
    """

    def __init__(
        self,
        trust_domain: str,
        roots: Sequence[x509.Certificate],
        intermediate_cert: x509.Certificate,
        intermediate_key: ec.EllipticCurvePrivateKey,
        *,
        root_key: ec.EllipticCurvePrivateKey | None = None,
        ca_dir: Path | None = None,
    ) -> None:
        """Prefer the constructors below; this one only checks the chain is consistent."""
        validate_trust_domain(trust_domain)
        if not roots:
            raise IdentityError("a CA needs at least one root certificate")
        where = Path(ca_dir) if ca_dir else Path("(memory)")
        paths = (where / ROOT_CERT, where / INTERMEDIATE_CERT, where / INTERMEDIATE_KEY)
        signer = _check_chain(roots, intermediate_cert, intermediate_key, paths, "CA")
        if root_key is not None and not _same_key(root_key.public_key(), signer.public_key()):
            raise IdentityError(
                f"CA: root key {where / ROOT_KEY} does not match the root that signed the "
                "intermediate; remove it (the root may be kept offline) or restore the right one"
            )
        self._trust_domain = trust_domain
        self._roots = tuple(roots)
        self._root = signer
        self._root_key = root_key
        self._ca_dir = ca_dir
        self._issuer = _Issuer(intermediate_cert, intermediate_key)
        self._lock = threading.Lock()

    # ---- construction -------------------------------------------------------------

    @classmethod
    def initialize(
        cls,
        ca_dir: Path,
        trust_domain: str,
        operator: OperatorCA | None = None,
        now: datetime | None = None,
    ) -> CertificateAuthority:
        """The control plane's one call: the operator's CA when given, else load or create."""
        if operator is not None:
            return cls.from_operator_files(
                operator.root_cert,
                operator.intermediate_cert,
                operator.intermediate_key,
                trust_domain,
                ca_dir,
                now=now,
            )
        return cls.load_or_create(ca_dir, trust_domain, now=now)

    @classmethod
    def load_or_create(
        cls, ca_dir: Path, trust_domain: str, now: datetime | None = None
    ) -> CertificateAuthority:
        """Load the CA in ``ca_dir``, or create a new root and intermediate there.

        A directory holding only some of root.crt, intermediate.crt and intermediate.key
        is refused rather than overwritten: it may be an operator's CA missing a file,
        and replacing it would silently distrust every certificate issued so far.
        If the root key is present, an intermediate within INTERMEDIATE_RENEW_BEFORE of
        expiry is renewed on load.
        """
        validate_trust_domain(trust_domain)
        now = _files.utc_now(now)
        ca_dir = Path(ca_dir)
        required = (ROOT_CERT, INTERMEDIATE_CERT, INTERMEDIATE_KEY)
        present = [n for n in required if (ca_dir / n).exists()]
        if len(present) == len(required):
            return cls._load(ca_dir, trust_domain, now)
        if present:
            missing = [n for n in required if n not in present]
            held = f"CA directory {ca_dir} holds {', '.join(present)} but not {', '.join(missing)}"
            if ROOT_CERT in missing:
                raise IdentityError(
                    f"{held}; if a first start was interrupted, remove those files to create "
                    "a new CA; if they are your own CA's, supply it as an operator CA"
                )
            raise IdentityError(
                f"{held}; restore the missing files, or move the CA files away to create a "
                "new CA (workloads will then stop trusting every certificate issued so far)"
            )
        return cls._create(ca_dir, trust_domain, now)

    @classmethod
    def _create(cls, ca_dir: Path, trust_domain: str, now: datetime) -> CertificateAuthority:
        root, root_key = _make_root(trust_domain, now)
        issuer = _make_intermediate(trust_domain, root, root_key, now)
        ca = cls(trust_domain, [root], issuer.cert, issuer.key, root_key=root_key, ca_dir=ca_dir)
        _files.ensure_private_dir(ca_dir)
        _files.write_atomic(ca_dir / ROOT_KEY, _private_pem(root_key), _files.PRIVATE)
        ca._write_intermediate()
        _files.write_atomic(ca_dir / BUNDLE, ca.trust_bundle_pem().encode(), _files.PUBLIC)
        # root.crt last: a directory without it was never loaded, so an interrupted
        # creation leaves nothing that ever signed a certificate.
        _files.write_atomic(ca_dir / ROOT_CERT, _cert_pem(root), _files.PUBLIC)
        return ca

    @classmethod
    def _load(cls, ca_dir: Path, trust_domain: str, now: datetime) -> CertificateAuthority:
        prefix = f"CA directory {ca_dir}"
        root_path, inter_path, key_path = (
            ca_dir / ROOT_CERT,
            ca_dir / INTERMEDIATE_CERT,
            ca_dir / INTERMEDIATE_KEY,
        )
        roots = _parse_certs(
            _read(root_path, "root certificate", prefix, "the root CA certificate"),
            root_path,
            "root certificate",
            prefix,
        )
        intermediate = _parse_certs(
            _read(inter_path, "intermediate certificate", prefix, "the intermediate"),
            inter_path,
            "intermediate certificate",
            prefix,
        )[0]
        key = _parse_ec_key(
            _read(key_path, "intermediate key", prefix, "the intermediate key"),
            key_path,
            "intermediate key",
            prefix,
        )
        root_key = None
        if (ca_dir / ROOT_KEY).exists():
            root_key = _parse_ec_key(
                _read(ca_dir / ROOT_KEY, "root key", prefix, "the root key"),
                ca_dir / ROOT_KEY,
                "root key",
                prefix,
            )
        for root in roots:
            cns = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            made_for = _ROOT_CN.fullmatch(str(cns[0].value)) if cns else None
            if made_for and made_for["td"] != trust_domain:
                raise IdentityError(
                    f"{prefix} holds a CA created for trust domain {made_for['td']!r}, not "
                    f"{trust_domain!r}; configure trust domain {made_for['td']!r} or use a "
                    "new CA directory"
                )
        ca = cls(trust_domain, roots, intermediate, key, root_key=root_key, ca_dir=ca_dir)
        _check_valid_at(ca._root, f"root certificate {root_path}", now, prefix)
        ca._renew_if_due(now)
        _check_valid_at(ca.intermediate_cert, f"intermediate certificate {inter_path}", now, prefix)
        bundle = ca.trust_bundle_pem().encode()
        bundle_path = ca_dir / BUNDLE
        if not bundle_path.exists() or bundle_path.read_bytes() != bundle:
            _files.write_atomic(bundle_path, bundle, _files.PUBLIC)
        return ca

    @classmethod
    def from_operator_files(
        cls,
        root_cert: Path,
        intermediate_cert: Path,
        intermediate_key: Path,
        trust_domain: str,
        ca_dir: Path,
        now: datetime | None = None,
    ) -> CertificateAuthority:
        """Adopt an operator's CA: check it thoroughly, then copy it into ``ca_dir``.

        ``root_cert`` may hold several roots (all go into the trust bundle);
        ``intermediate_cert``'s first certificate is the one that signs leaves and must be
        signed directly by one of the roots. Any root.key already in ``ca_dir`` is
        removed: it belongs to a CA that is being replaced.
        """
        validate_trust_domain(trust_domain)
        now = _files.utc_now(now)
        prefix = "operator CA"
        root_path, inter_path, key_path = (
            Path(root_cert),
            Path(intermediate_cert),
            Path(intermediate_key),
        )
        roots = _parse_certs(
            _read(root_path, "root certificate", prefix, "the PEM of your root CA certificate"),
            root_path,
            "root certificate",
            prefix,
        )
        intermediate = _parse_certs(
            _read(
                inter_path,
                "intermediate certificate",
                prefix,
                "the PEM of an intermediate CA certificate signed by your root",
            ),
            inter_path,
            "intermediate certificate",
            prefix,
        )[0]
        key = _parse_ec_key(
            _read(key_path, "intermediate key", prefix, "the intermediate's PEM private key"),
            key_path,
            "intermediate key",
            prefix,
        )
        signer = _check_chain(roots, intermediate, key, (root_path, inter_path, key_path), prefix)
        _check_valid_at(signer, f"root certificate {root_path}", now, prefix)
        _check_valid_at(intermediate, f"intermediate certificate {inter_path}", now, prefix)

        ca_dir = Path(ca_dir)
        ca = cls(trust_domain, roots, intermediate, key, ca_dir=ca_dir)
        _files.ensure_private_dir(ca_dir)
        (ca_dir / ROOT_KEY).unlink(missing_ok=True)
        ca._write_intermediate()
        _files.write_atomic(ca_dir / BUNDLE, ca.trust_bundle_pem().encode(), _files.PUBLIC)
        _files.write_atomic(ca_dir / ROOT_CERT, certificates_to_pem(roots).encode(), _files.PUBLIC)
        return ca

    def _write_intermediate(self) -> None:
        if self._ca_dir is None:
            return
        issuer = self._issuer
        # Key before certificate: a crash in between leaves the old certificate with a
        # new key, which the next load refuses by name instead of signing with it.
        _files.write_atomic(
            self._ca_dir / INTERMEDIATE_KEY, _private_pem(issuer.key), _files.PRIVATE
        )
        _files.write_atomic(self._ca_dir / INTERMEDIATE_CERT, _cert_pem(issuer.cert), _files.PUBLIC)

    def renew_intermediate(self, now: datetime | None = None) -> None:
        """Replace the intermediate with a fresh one signed by the root (root key needed).

        Leaves already issued keep verifying: each carries its own intermediate in its
        chain, and the trust bundle (roots only) does not change.
        """
        if self._root_key is None:
            raise IdentityError(
                "cannot renew the intermediate: the root key is kept offline (no root.key "
                "in the CA directory); sign a new intermediate with your root and supply it "
                "as an operator CA"
            )
        now = _files.utc_now(now)
        with self._lock:
            self._renew_locked(self._root_key, now)

    def _renewal_due(self, now: datetime) -> bool:
        return self._issuer.cert.not_valid_after_utc - now < INTERMEDIATE_RENEW_BEFORE

    def _renew_if_due(self, now: datetime) -> None:
        if self._root_key is None or not self._renewal_due(now):
            return
        with self._lock:
            # Checked again under the lock so concurrent signers renew once, not each.
            if self._renewal_due(now):
                self._renew_locked(self._root_key, now)

    def _renew_locked(self, root_key: ec.EllipticCurvePrivateKey, now: datetime) -> None:
        self._issuer = _make_intermediate(self._trust_domain, self._root, root_key, now)
        self._write_intermediate()

    # ---- rotation (see gossamer.controlplane.rotation for the phases) ----------------

    def new_root(self, now: datetime | None = None) -> StagedIssuer:
        """A new root and an intermediate under it: neither trusted nor used yet."""
        now = _files.utc_now(now)
        root, root_key = _make_root(self._trust_domain, now, rotated=True)
        issuer = _make_intermediate(self._trust_domain, root, root_key, now)
        return StagedIssuer((root,), issuer.cert, issuer.key, root_key)

    def new_intermediate(self, now: datetime | None = None) -> StagedIssuer:
        """A new intermediate under the current root (the root key is needed)."""
        if self._root_key is None:
            raise IdentityError(
                "cannot make a new intermediate: the root key is kept offline (no root.key "
                "in the CA directory); sign one with your root and pass --intermediate-cert "
                "and --intermediate-key"
            )
        issuer = _make_intermediate(
            self._trust_domain, self._root, self._root_key, _files.utc_now(now)
        )
        return StagedIssuer((), issuer.cert, issuer.key, self._root_key)

    @staticmethod
    def staged_from_operator_files(
        root_cert: Path | None,
        intermediate_cert: Path,
        intermediate_key: Path,
        now: datetime | None = None,
    ) -> StagedIssuer:
        """An operator's new intermediate (and, for a root rotation, new root(s)), read
        and checked as thoroughly as at adoption; trust is checked when it is activated."""
        now = _files.utc_now(now)
        prefix = "operator CA"
        inter_path, key_path = Path(intermediate_cert), Path(intermediate_key)
        roots: list[x509.Certificate] = []
        if root_cert is not None:
            root_path = Path(root_cert)
            roots = _parse_certs(
                _read(root_path, "root certificate", prefix, "the PEM of your root CA"),
                root_path,
                "root certificate",
                prefix,
            )
        intermediate = _parse_certs(
            _read(inter_path, "intermediate certificate", prefix, "your new intermediate"),
            inter_path,
            "intermediate certificate",
            prefix,
        )[0]
        key = _parse_ec_key(
            _read(key_path, "intermediate key", prefix, "the intermediate's PEM private key"),
            key_path,
            "intermediate key",
            prefix,
        )
        if roots:
            root_path = Path(root_cert) if root_cert is not None else Path("(roots)")
            _check_chain(roots, intermediate, key, (root_path, inter_path, key_path), prefix)
        _check_valid_at(intermediate, f"intermediate certificate {inter_path}", now, prefix)
        return StagedIssuer(tuple(roots), intermediate, key, None)

    def untrusted(self, roots: Sequence[x509.Certificate]) -> list[x509.Certificate]:
        """Those of ``roots`` not in the trust bundle yet."""
        have = {certificate_fingerprint(r) for r in self._roots}
        return [r for r in roots if certificate_fingerprint(r) not in have]

    def add_roots(self, roots: Sequence[x509.Certificate]) -> None:
        """Trust ``roots`` too (the first step of a root rotation); persisted."""
        with self._lock:
            new = self.untrusted(roots)
            if new:
                self._roots = (*self._roots, *new)
                self._write_roots()

    def remove_roots(self, fingerprints: Sequence[str]) -> None:
        """Stop trusting the roots with these fingerprints (the last step of a root
        rotation). The root that signs the current intermediate is never removed."""
        drop = set(fingerprints)
        with self._lock:
            if certificate_fingerprint(self._root) in drop:
                raise IdentityError(
                    "cannot remove the root that signs the current intermediate from the "
                    "trust bundle; switch to an intermediate under the new root first"
                )
            kept = tuple(r for r in self._roots if certificate_fingerprint(r) not in drop)
            if kept != self._roots:
                self._roots = kept
                self._write_roots()

    def activate(self, staged: StagedIssuer) -> None:
        """Sign with ``staged``'s intermediate from now on. Its root must already be
        trusted (``add_roots``), so no peer sees a leaf it cannot verify."""
        where = self._ca_dir or Path("(memory)")
        paths = (where / ROOT_CERT, where / INTERMEDIATE_CERT, where / INTERMEDIATE_KEY)
        with self._lock:
            signer = _check_chain(
                self._roots, staged.intermediate_cert, staged.intermediate_key, paths, "CA"
            )
            root_key = staged.root_key
            if root_key is None and _same_key(signer.public_key(), self._root.public_key()):
                root_key = self._root_key  # an operator intermediate under the same root
            if root_key is not None and not _same_key(root_key.public_key(), signer.public_key()):
                raise IdentityError("CA: the staged root key is not the key of the new root")
            if self._ca_dir is not None and root_key is not self._root_key:
                # No root.key while the intermediate changes: a crash in between leaves a
                # CA that loads with its root "offline" rather than a mismatched key.
                (self._ca_dir / ROOT_KEY).unlink(missing_ok=True)
            self._issuer = _Issuer(staged.intermediate_cert, staged.intermediate_key)
            self._root, self._root_key = signer, root_key
            self._write_intermediate()
            if self._ca_dir is not None and root_key is not None:
                _files.write_atomic(self._ca_dir / ROOT_KEY, _private_pem(root_key), _files.PRIVATE)

    def material(
        self,
    ) -> tuple[
        tuple[x509.Certificate, ...],
        x509.Certificate,
        ec.EllipticCurvePrivateKey,
        ec.EllipticCurvePrivateKey | None,
    ]:
        """(roots, intermediate, its key, root key or None), as one consistent set:
        what replicas sharing a store publish (sealed) and adopt (`replace`)."""
        with self._lock:
            return self._roots, self._issuer.cert, self._issuer.key, self._root_key

    def replace(
        self,
        roots: Sequence[x509.Certificate],
        intermediate_cert: x509.Certificate,
        intermediate_key: ec.EllipticCurvePrivateKey,
        root_key: ec.EllipticCurvePrivateKey | None,
    ) -> None:
        """Become this CA at once (another replica's rotation step, read from the shared
        store): the chain is checked as at load, then the files are written."""
        where = self._ca_dir or Path("(memory)")
        paths = (where / ROOT_CERT, where / INTERMEDIATE_CERT, where / INTERMEDIATE_KEY)
        with self._lock:
            signer = _check_chain(roots, intermediate_cert, intermediate_key, paths, "CA")
            if root_key is not None and not _same_key(root_key.public_key(), signer.public_key()):
                raise IdentityError("CA: the shared root key is not the key of the signing root")
            if self._ca_dir is not None and root_key is None:
                (self._ca_dir / ROOT_KEY).unlink(missing_ok=True)
            self._roots = tuple(roots)
            self._issuer = _Issuer(intermediate_cert, intermediate_key)
            self._root, self._root_key = signer, root_key
            self._write_roots()
            self._write_intermediate()
            if self._ca_dir is not None and root_key is not None:
                _files.write_atomic(self._ca_dir / ROOT_KEY, _private_pem(root_key), _files.PRIVATE)

    def _write_roots(self) -> None:
        if self._ca_dir is None:
            return
        pem = certificates_to_pem(list(self._roots)).encode()
        _files.write_atomic(self._ca_dir / BUNDLE, pem, _files.PUBLIC)
        _files.write_atomic(self._ca_dir / ROOT_CERT, pem, _files.PUBLIC)

    def issuer_fingerprint(self) -> str:
        """SHA-256 of the current intermediate: what leaves issued now chain to."""
        return certificate_fingerprint(self._issuer.cert)

    # ---- what the CA is -------------------------------------------------------------

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    @property
    def root_cert(self) -> x509.Certificate:
        """The root that signed the current intermediate (the one join tokens pin)."""
        return self._root

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return self._roots

    @property
    def intermediate_cert(self) -> x509.Certificate:
        return self._issuer.cert

    @property
    def ca_dir(self) -> Path | None:
        return self._ca_dir

    @property
    def has_root_key(self) -> bool:
        return self._root_key is not None

    @property
    def intermediate_expires_at(self) -> datetime:
        return self._issuer.cert.not_valid_after_utc

    @property
    def root_expires_at(self) -> datetime:
        return self._root.not_valid_after_utc

    def trust_bundle_pem(self) -> str:
        return certificates_to_pem(list(self._roots))

    def root_fingerprint(self) -> str:
        """SHA-256 of the root's DER, lowercase hex: the pin a join token carries."""
        return certificate_fingerprint(self._root)

    # ---- issuing ----------------------------------------------------------------------

    def sign_csr(
        self,
        csr_pem: bytes | str,
        identity: SpiffeId,
        ttl: timedelta = DEFAULT_LEAF_TTL,
        now: datetime | None = None,
        through_host: str | None = None,
    ) -> IssuedCertificate:
        """Sign a workload's CSR as ``identity``; IdentityError says why one is refused.

        `through_host` marks the certificate as issued to a host proxy for one of its
        workloads (`HOST_ISSUED_OID`): such a certificate renews only through that host's
        node authorization, never on a sidecar's or an xDS client's path."""
        data = csr_pem.encode("ascii", "replace") if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
            names = _requested_names(csr)
        except (ValueError, x509.DuplicateExtension) as e:
            raise IdentityError(f"malformed CSR: {e}") from None
        if not csr.is_signature_valid:
            raise IdentityError(
                "CSR signature does not verify: the CSR was altered or not signed by the "
                "key it carries"
            )
        public_key = csr.public_key()
        if not _is_p256(public_key):
            raise IdentityError(
                f"CSR carries an {_describe_key(public_key)} key; only ECDSA P-256 keys are "
                "accepted (gossamer proxies generate one for you)"
            )
        for name in names:
            if isinstance(name, x509.UniformResourceIdentifier) and name.value == str(identity):
                continue
            raise IdentityError(
                f"CSR asks for {_describe_name(name)} but the identity granted is {identity}; "
                "a workload certificate may name only its own SPIFFE ID"
            )
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        marks = [] if through_host is None else [_host_mark(through_host)]
        return self._issue(public_key, identity, [], ttl, now, marks)

    def issue_server_identity(
        self,
        identity: SpiffeId,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str],
        ttl: timedelta = DEFAULT_LEAF_TTL,
        now: datetime | None = None,
    ) -> tuple[bytes, IssuedCertificate]:
        """A key and leaf for the control plane's own listener: SPIFFE ID + DNS/IP SANs.

        The DNS/IP names let clients that check hostnames (curl, browsers) accept it;
        mesh clients check the SPIFFE ID instead.
        """
        extra: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        for ip in ip_addresses:
            extra.append(x509.IPAddress(ipaddress.ip_address(ip)))
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self._issue(key.public_key(), identity, extra, ttl, now)
        return _private_pem(key), issued

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        identity: SpiffeId,
        extra_names: list[x509.GeneralName],
        ttl: timedelta,
        now: datetime | None,
        marks: Sequence[x509.UnrecognizedExtension] = (),
    ) -> IssuedCertificate:
        if ttl <= timedelta(0):
            raise ValueError(f"certificate ttl must be positive, got {ttl}")
        if identity.trust_domain != self._trust_domain:
            raise IdentityError(
                f"identity {identity} is in trust domain {identity.trust_domain!r}, but this "
                f"CA issues only for {self._trust_domain!r}"
            )
        now = _files.utc_now(now)
        # A long-running control plane renews here, not only at start-up.
        self._renew_if_due(now)
        issuer = self._issuer
        if now >= issuer.cert.not_valid_after_utc:
            raise IdentityError(
                f"CA: the intermediate certificate expired at "
                f"{issuer.cert.not_valid_after_utc.isoformat()} and the root key is offline; "
                "sign a new intermediate with your root and supply it as an operator CA"
            )
        if now < issuer.cert.not_valid_before_utc:
            raise IdentityError(
                f"CA: the intermediate certificate is not valid until "
                f"{issuer.cert.not_valid_before_utc.isoformat()} (now is {now.isoformat()}); "
                "check this host's clock"
            )
        not_before = now - CLOCK_SKEW
        not_after = min(now + ttl, issuer.cert.not_valid_after_utc)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(identity))]
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self._trust_domain)])
            )
            .issuer_name(issuer.cert.subject)
            .public_key(public_key)
            .serial_number(_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names + extra_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(_ski(public_key), critical=False)
            .add_extension(_aki(issuer.cert), critical=False)
        )
        for mark in marks:
            builder = builder.add_extension(mark, critical=False)
        cert = builder.sign(issuer.key, hashes.SHA256())
        leaf_pem = _cert_pem(cert).decode("ascii")
        return IssuedCertificate(
            certificate_pem=leaf_pem,
            chain_pem=leaf_pem + _cert_pem(issuer.cert).decode("ascii"),
            trust_bundle_pem=self.trust_bundle_pem(),
            spiffe_id=identity,
            serial=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
