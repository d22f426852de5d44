"""File and clock helpers shared by the CA and the join-token key."""

from __future__ import annotations

import contextlib
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


def utc_now(now: datetime | None) -> datetime:
    """``now`` (which must be timezone-aware) or the wall clock, truncated to seconds.

    X.509 times have one-second resolution; truncating here keeps what we report
    (``IssuedCertificate.not_after``) equal to what the certificate says.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC))")
    return now.astimezone(UTC).replace(microsecond=0)


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700 if missing; an existing directory is left as found."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    # The temp file is created with its final mode, so a private key is never readable
    # by others, not even for the moment between create and chmod.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data``; readers see the old file or the new one, never half."""
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_exclusive(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` holding ``data`` unless it exists; False if someone else won.

    Linking a complete temp file into place means two processes starting together agree
    on one file and neither ever reads a half-written one.
    """
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True
