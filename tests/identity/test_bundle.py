from __future__ import annotations

from pathlib import Path

import pytest

from gossamer.errors import IdentityError
from gossamer.identity import CertificateAuthority, load_bundle, pinned_root

from .helpers import T0, TD, openssl


def test_the_root_fingerprint_is_what_openssl_prints(ca: CertificateAuthority) -> None:
    result = openssl("x509", "-noout", "-fingerprint", "-sha256",
                     input=ca.trust_bundle_pem().encode())  # fmt: skip

    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().split("=", 1)[1]
    assert printed.replace(":", "").lower() == ca.root_fingerprint()


def test_only_the_pinned_root_is_kept_from_a_bundle(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    impostor = CertificateAuthority.load_or_create(tmp_path / "impostor", TD, now=T0)
    bundle = impostor.trust_bundle_pem() + ca.trust_bundle_pem()

    kept = pinned_root(bundle, ca.root_fingerprint())

    assert load_bundle(kept) == [ca.root_cert]


def test_a_bundle_without_the_pinned_root_is_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    impostor = CertificateAuthority.load_or_create(tmp_path / "impostor", TD, now=T0)

    with pytest.raises(IdentityError, match=r"no root certificate .* has the pinned fingerprint"):
        pinned_root(impostor.trust_bundle_pem(), ca.root_fingerprint())


def test_a_bundle_that_is_not_pem_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(IdentityError, match="trust bundle holds no PEM certificate"):
        pinned_root("<html>502 Bad Gateway</html>", ca.root_fingerprint())
