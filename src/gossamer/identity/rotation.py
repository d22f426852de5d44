"""What a CA rotation keeps on disk: the staged issuer and the rotation's state.

Beside the CA's own files (``ca_dir``)::

    next/root.crt          roots a root rotation adds (absent for an intermediate one)
    next/root.key          the new root's key, when the CA made the root itself (0600)
    next/intermediate.crt  the intermediate the CA switches to
    next/intermediate.key  its key (0600)
    rotation.json          the rotation's state (RotationState), the last one kept

Everything is written atomically, so a control plane restarted mid-rotation picks
the rotation up where it was (gossamer.controlplane.rotation drives the phases).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gossamer.errors import IdentityError
from gossamer.identity import _files
from gossamer.identity.bundle import certificates_to_pem
from gossamer.identity.ca import StagedIssuer
from gossamer.identity.csr import load_private_key

NEXT_DIR: Final = "next"
STATE_FILE: Final = "rotation.json"

# The phases, in order. An intermediate rotation adds no root, so it skips
# "distributing", and removes none, so it goes from "renewing" to "done".
DISTRIBUTING: Final = "distributing"  # new roots trusted; waiting for every proxy to have them
RENEWING: Final = "renewing"  # new intermediate signs; waiting for every proxy to renew
OVERLAP: Final = "overlap"  # every proxy is on the new chain; old roots still trusted
DONE: Final = "done"
PHASES: Final = (DISTRIBUTING, RENEWING, OVERLAP, DONE)


@dataclass(frozen=True)
class RotationState:
    """One rotation, as ``GET /v1/ca/rotation`` shows it (plus live progress)."""

    kind: str  # "root" | "intermediate"
    phase: str
    started_at: str  # ISO 8601
    overlap_seconds: float
    new_issuer: str  # fingerprint of the intermediate proxies must end up under
    new_roots: tuple[str, ...] = ()  # fingerprints added to the bundle
    old_roots: tuple[str, ...] = ()  # fingerprints removed after the overlap
    operator: bool = False  # bring-your-own CA material
    phase_since: str = ""
    overlap_ends_at: str = ""
    finished_at: str = ""
    history: tuple[tuple[str, str], ...] = field(default=())  # (phase, at)

    @property
    def active(self) -> bool:
        return self.phase != DONE

    def advance(self, phase: str, at: str, **changes: Any) -> RotationState:
        if phase not in PHASES:
            raise ValueError(f"unknown rotation phase {phase!r}")
        state = replace(self, phase=phase, phase_since=at, history=(*self.history, (phase, at)))
        if phase == DONE:
            state = replace(state, finished_at=at)
        return replace(state, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [list(h) for h in self.history]
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RotationState:
        data = dict(data)
        data["new_roots"] = tuple(data.get("new_roots", ()))
        data["old_roots"] = tuple(data.get("old_roots", ()))
        data["history"] = tuple(tuple(h) for h in data.get("history", ()))
        return RotationState(**data)


def save_state(ca_dir: Path | None, state: RotationState) -> None:
    if ca_dir is None:
        return
    text = json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n"
    _files.write_atomic(ca_dir / STATE_FILE, text.encode(), _files.PUBLIC)


def load_state(ca_dir: Path | None) -> RotationState | None:
    """The last rotation, or None if there never was one (or its file is unreadable)."""
    if ca_dir is None:
        return None
    try:
        return RotationState.from_dict(json.loads((ca_dir / STATE_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _key_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def save_staged(ca_dir: Path | None, staged: StagedIssuer) -> None:
    if ca_dir is None:
        return
    where = ca_dir / NEXT_DIR
    shutil.rmtree(where, ignore_errors=True)
    _files.ensure_private_dir(where)
    if staged.roots:
        pem = certificates_to_pem(list(staged.roots)).encode()
        _files.write_atomic(where / "root.crt", pem, _files.PUBLIC)
    if staged.root_key is not None:
        _files.write_atomic(where / "root.key", _key_pem(staged.root_key), _files.PRIVATE)
    key = _key_pem(staged.intermediate_key)
    _files.write_atomic(where / "intermediate.key", key, _files.PRIVATE)
    cert = staged.intermediate_cert.public_bytes(serialization.Encoding.PEM)
    _files.write_atomic(where / "intermediate.crt", cert, _files.PUBLIC)


def load_staged(ca_dir: Path | None) -> StagedIssuer | None:
    if ca_dir is None:
        return None
    where = ca_dir / NEXT_DIR
    try:
        cert = x509.load_pem_x509_certificate((where / "intermediate.crt").read_bytes())
        key = load_private_key((where / "intermediate.key").read_bytes())
        roots: tuple[x509.Certificate, ...] = ()
        if (where / "root.crt").exists():
            roots = tuple(x509.load_pem_x509_certificates((where / "root.crt").read_bytes()))
        root_key = None
        if (where / "root.key").exists():
            root_key = load_private_key((where / "root.key").read_bytes())
    except (OSError, ValueError, IdentityError):
        return None
    return StagedIssuer(roots, cert, key, root_key)


def discard_staged(ca_dir: Path | None) -> None:
    """The staged material is in the CA's own files once activated: drop the copy."""
    if ca_dir is not None:
        shutil.rmtree(ca_dir / NEXT_DIR, ignore_errors=True)
