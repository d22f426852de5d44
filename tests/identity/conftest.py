from __future__ import annotations

from pathlib import Path

import pytest

from gossamer.identity import CertificateAuthority

from .helpers import T0, TD


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "ca"


@pytest.fixture
def ca(ca_dir: Path) -> CertificateAuthority:
    """A self-created CA at the fixed time T0."""
    return CertificateAuthority.load_or_create(ca_dir, TD, now=T0)


@pytest.fixture
def live_ca(tmp_path: Path) -> CertificateAuthority:
    """A CA on the wall clock, for handshakes that OpenSSL verifies at the real time."""
    return CertificateAuthority.load_or_create(tmp_path / "live-ca", TD)
