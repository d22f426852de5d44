"""The CA that control-plane replicas share: one record in the system store.

`CertificateAuthorityState/ca` (namespace gossamer-system) holds the CA's public state
and its keys sealed (gossamer.identity.sealing): the trust bundle's roots, the
intermediate that signs and its key, the root key if the CA keeps it, the issuer a
rotation has staged, and the rotation's state. It changes only by compare-and-swap on
its resourceVersion, and every replica adopts what it holds (files in `ca/` included),
so all of them serve the same bundle and sign with the same intermediate. During a
rotation each replica also writes a `CaRotationProgress` record (its own proxies'
progress), from which the leader decides when the mesh may move on. Decision 0054.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gossamer.controlplane.replicas import NAMESPACE, counter_record
from gossamer.errors import Conflict, IdentityError, NotFound
from gossamer.identity.bundle import certificate_fingerprint, certificates_to_pem, load_bundle
from gossamer.identity.ca import CertificateAuthority, StagedIssuer
from gossamer.identity.rotation import RotationState
from gossamer.identity.sealing import KeySealer
from gossamer.store import Store

__all__ = ["KIND", "PROGRESS_KIND", "CaRecord", "SharedCA"]

KIND: Final = "CertificateAuthorityState"
PROGRESS_KIND: Final = "CaRotationProgress"
_NAME: Final = "ca"
_API_VERSION: Final = "gossamer.dev/v1alpha1"


@dataclass(frozen=True)
class CaRecord:
    """The shared CA as last read (`version`: the record's resourceVersion)."""

    roots: tuple[x509.Certificate, ...]
    issuer_cert: x509.Certificate
    issuer_key: ec.EllipticCurvePrivateKey
    root_key: ec.EllipticCurvePrivateKey | None
    staged: StagedIssuer | None
    rotation: RotationState | None
    version: str = ""

    @property
    def root_fingerprints(self) -> tuple[str, ...]:
        return tuple(certificate_fingerprint(r) for r in self.roots)

    @property
    def issuer_fingerprint(self) -> str:
        return certificate_fingerprint(self.issuer_cert)

    def switched(self, rotation: RotationState) -> CaRecord:
        """The staged issuer signs from now on (a rotation's switch)."""
        staged = self.staged
        if staged is None:
            raise IdentityError("the shared CA has no staged issuer to switch to")
        root_key = staged.root_key
        if root_key is None and self.root_key is not None:
            # An operator's intermediate under the root whose key the CA keeps.
            signer_key = self.root_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            issuer_signer = _issuer_of(staged.intermediate_cert, self.roots)
            if issuer_signer is not None and signer_key == issuer_signer:
                root_key = self.root_key
        return replace(
            self,
            issuer_cert=staged.intermediate_cert,
            issuer_key=staged.intermediate_key,
            root_key=root_key,
            staged=None,
            rotation=rotation,
        )


def _issuer_of(cert: x509.Certificate, roots: tuple[x509.Certificate, ...]) -> bytes | None:
    for root in roots:
        if root.subject == cert.issuer:
            return root.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
    return None


def record_of(
    ca: CertificateAuthority, staged: StagedIssuer | None, rotation: RotationState | None
) -> CaRecord:
    roots, cert, key, root_key = ca.material()
    return CaRecord(roots, cert, key, root_key, staged, rotation)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


class SharedCA:
    """Reads and writes the shared CA record (synchronously: run it off the loop)."""

    def __init__(self, store: Store, sealer: KeySealer) -> None:
        self.store = store
        self.sealer = sealer

    # -- the record ------------------------------------------------------------------

    def _encode(self, record: CaRecord) -> dict[str, Any]:
        seal = self.sealer.seal
        staged = record.staged
        return {
            "roots": certificates_to_pem(list(record.roots)),
            "issuerCert": _pem(record.issuer_cert),
            "issuerKey": seal(record.issuer_key, "issuer"),
            "rootKey": seal(record.root_key, "root") if record.root_key is not None else None,
            "staged": None
            if staged is None
            else {
                "roots": certificates_to_pem(list(staged.roots)),
                "issuerCert": _pem(staged.intermediate_cert),
                "issuerKey": seal(staged.intermediate_key, "staged issuer"),
                "rootKey": seal(staged.root_key, "staged root")
                if staged.root_key is not None
                else None,
            },
            "rotation": record.rotation.to_dict() if record.rotation is not None else None,
        }

    def _decode(self, status: dict[str, Any], version: str) -> CaRecord:
        open_ = self.sealer.open
        try:
            staged = None
            if status.get("staged"):
                s = status["staged"]
                staged = StagedIssuer(
                    tuple(load_bundle(s["roots"])) if s.get("roots") else (),
                    x509.load_pem_x509_certificate(s["issuerCert"].encode()),
                    open_(s["issuerKey"], "staged issuer"),
                    open_(s["rootKey"], "staged root") if s.get("rootKey") else None,
                )
            rotation = status.get("rotation")
            return CaRecord(
                tuple(load_bundle(status["roots"])),
                x509.load_pem_x509_certificate(status["issuerCert"].encode()),
                open_(status["issuerKey"], "issuer"),
                open_(status["rootKey"], "root") if status.get("rootKey") else None,
                staged,
                RotationState.from_dict(rotation) if rotation else None,
                version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise IdentityError(
                f"the shared CA record {NAMESPACE}/{KIND}/{_NAME} is not readable "
                f"({type(err).__name__}: {err})"
            ) from None

    def read(self) -> CaRecord | None:
        """The shared CA, or None if no replica has published one yet."""
        record = counter_record(self.store, KIND, _NAME)
        status = record.get("status") or {}
        if not status:
            return None
        return self._decode(status, record["metadata"]["resourceVersion"])

    def publish_first(self, mine: CaRecord) -> CaRecord:
        """The shared CA: `mine` if no replica published one yet, else the one there."""
        for _ in range(10):
            record = counter_record(self.store, KIND, _NAME)
            if record.get("status"):
                return self._decode(record["status"], record["metadata"]["resourceVersion"])
            try:
                return self.write(replace(mine, version=record["metadata"]["resourceVersion"]))
            except Conflict:
                continue  # another replica published first: adopt its
        raise Conflict("the shared CA record keeps changing: try again")

    def write(self, record: CaRecord) -> CaRecord:
        """Write `record` if the stored one is still at `record.version` (else Conflict)."""
        stored = self.store.update_status(
            KIND, NAMESPACE, _NAME, self._encode(record), resource_version=record.version
        )
        return replace(record, version=stored["metadata"]["resourceVersion"])

    # -- each replica's progress in a rotation ------------------------------------------

    def write_progress(self, replica_id: str, progress: dict[str, Any]) -> None:
        counter_record(self.store, PROGRESS_KIND, replica_id)  # created if missing
        status = {**progress, "at": time.time()}
        self.store.update_status(PROGRESS_KIND, NAMESPACE, replica_id, status)

    def progress(self) -> dict[str, dict[str, Any]]:
        """Every replica's last progress record, by replica name."""
        try:
            items = self.store.list(PROGRESS_KIND, NAMESPACE)
        except NotFound:
            return {}
        return {o["metadata"]["name"]: dict(o.get("status") or {}) for o in items}
