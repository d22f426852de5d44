"""CA rotation primitives: trust a new root, switch to it, drop the old one; on disk."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from gossamer.errors import IdentityError
from gossamer.identity import CertificateAuthority, IssuedCertificate
from gossamer.identity.bundle import certificate_fingerprint, chain_fingerprints
from gossamer.identity.rotation import (
    DISTRIBUTING,
    DONE,
    RENEWING,
    RotationState,
    load_staged,
    load_state,
    save_staged,
    save_state,
)

from .helpers import T0, TD, WEB, cert_pem, issue, key_pem, make_cert, mode, openssl, p256


def verifies(issued: IssuedCertificate, bundle_pem: str, tmp_path: Path) -> bool:
    bundle, chain, leaf = (tmp_path / n for n in ("bundle.pem", "chain.pem", "leaf.pem"))
    bundle.write_text(bundle_pem)
    chain.write_text(issued.chain_pem)
    leaf.write_text(issued.certificate_pem)
    at = str(int((T0 + timedelta(hours=1)).timestamp()))
    result = openssl(
        "verify", "-attime", at, "-CAfile", str(bundle), "-untrusted", str(chain), str(leaf)
    )
    return result.returncode == 0


def test_a_root_rotation_trusts_both_roots_then_only_the_new_one(
    ca: CertificateAuthority, ca_dir: Path, tmp_path: Path
) -> None:
    old_root = ca.root_fingerprint()
    _, before = issue(ca, WEB)
    staged = ca.new_root(now=T0)
    assert ca.untrusted(staged.roots) == list(staged.roots)
    # Nothing changes until the new root is added.
    assert len(ca.roots) == 1

    ca.add_roots(staged.roots)
    assert certificate_fingerprint(ca.roots[0]) == old_root
    assert len(ca.roots) == 2
    assert (ca_dir / "bundle.crt").read_text() == ca.trust_bundle_pem()
    assert ca.root_fingerprint() == old_root  # still signing under the old root

    ca.activate(staged)
    _, after = issue(ca, WEB)
    assert ca.root_fingerprint() == certificate_fingerprint(staged.roots[0])
    assert ca.issuer_fingerprint() == staged.fingerprint()
    both = ca.trust_bundle_pem()
    assert verifies(before, both, tmp_path)
    assert verifies(after, both, tmp_path)

    with pytest.raises(IdentityError, match="signs the current intermediate"):
        ca.remove_roots([ca.root_fingerprint()])
    ca.remove_roots([old_root])
    assert [certificate_fingerprint(r) for r in ca.roots] == [ca.root_fingerprint()]
    assert verifies(after, ca.trust_bundle_pem(), tmp_path)
    assert not verifies(before, ca.trust_bundle_pem(), tmp_path)

    # What is on disk is the rotated CA, new root key included.
    again = CertificateAuthority.load_or_create(ca_dir, TD, now=T0)
    assert again.root_fingerprint() == ca.root_fingerprint()
    assert again.issuer_fingerprint() == ca.issuer_fingerprint()
    assert again.has_root_key
    assert mode(ca_dir / "root.key") == 0o600


def test_an_intermediate_rotation_keeps_the_bundle(ca: CertificateAuthority) -> None:
    bundle = ca.trust_bundle_pem()
    staged = ca.new_intermediate(now=T0)
    assert staged.roots == ()
    ca.activate(staged)
    assert ca.issuer_fingerprint() == staged.fingerprint()
    assert ca.trust_bundle_pem() == bundle
    assert ca.has_root_key


def test_a_new_intermediate_needs_the_root_key(ca_dir: Path, ca: CertificateAuthority) -> None:
    (ca_dir / "root.key").unlink()
    offline = CertificateAuthority.load_or_create(ca_dir, TD, now=T0)
    with pytest.raises(IdentityError, match="root key is kept offline"):
        offline.new_intermediate(now=T0)


def test_an_intermediate_under_an_untrusted_root_is_not_activated(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other", TD, now=T0)
    with pytest.raises(IdentityError, match="not signed by the root"):
        ca.activate(other.new_intermediate(now=T0))


def test_an_operator_intermediate_is_staged_from_files(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    root_key = p256()
    root = make_cert("Operator Root", root_key, ca=True, pathlen=1)
    inter_key = p256()
    inter = make_cert(
        "Operator Intermediate", inter_key, issuer=root, issuer_key=root_key, ca=True,
        pathlen=0,
    )  # fmt: skip
    (tmp_path / "root.pem").write_bytes(cert_pem(root))
    (tmp_path / "inter.pem").write_bytes(cert_pem(inter))
    (tmp_path / "inter.key").write_bytes(key_pem(inter_key))
    staged = CertificateAuthority.staged_from_operator_files(
        tmp_path / "root.pem", tmp_path / "inter.pem", tmp_path / "inter.key", now=T0
    )
    assert staged.root_key is None
    assert ca.untrusted(staged.roots) == [root]
    ca.add_roots(staged.roots)
    ca.activate(staged)
    assert ca.root_fingerprint() == certificate_fingerprint(root)
    assert not ca.has_root_key  # the operator keeps their root key


def test_staged_material_and_state_survive_a_restart(
    ca: CertificateAuthority, ca_dir: Path
) -> None:
    staged = ca.new_root(now=T0)
    save_staged(ca_dir, staged)
    loaded = load_staged(ca_dir)
    assert loaded is not None
    assert loaded.fingerprint() == staged.fingerprint()
    assert [certificate_fingerprint(r) for r in loaded.roots] == [
        certificate_fingerprint(r) for r in staged.roots
    ]
    assert mode(ca_dir / "next" / "intermediate.key") == 0o600
    assert mode(ca_dir / "next" / "root.key") == 0o600

    state = RotationState("root", DISTRIBUTING, "t0", 60.0, staged.fingerprint(),
                          history=((DISTRIBUTING, "t0"),))  # fmt: skip
    state = state.advance(RENEWING, "t1").advance(DONE, "t2")
    save_state(ca_dir, state)
    assert load_state(ca_dir) == state
    assert state.finished_at == "t2"
    assert not state.active
    assert [p for p, _ in state.history] == [DISTRIBUTING, RENEWING, DONE]


def test_a_chain_names_its_issuer_and_the_root_that_signed_it(
    ca: CertificateAuthority,
) -> None:
    _, issued = issue(ca, WEB)
    issuer, root = chain_fingerprints(issued.chain_pem, ca.trust_bundle_pem())
    assert issuer == ca.issuer_fingerprint()
    assert root == ca.root_fingerprint()
    assert chain_fingerprints(issued.certificate_pem, ca.trust_bundle_pem()) == ("", "")
