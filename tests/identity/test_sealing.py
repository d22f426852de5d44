"""CA keys kept in a shared store: sealed with a key derived from ca/token.key, never in
clear, bound to their purpose, and refused under another replica's token key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gossamer.controlplane.sharedca import SharedCA, record_of
from gossamer.errors import Conflict, IdentityError
from gossamer.identity import CertificateAuthority
from gossamer.identity.bundle import certificate_fingerprint
from gossamer.identity.sealing import KeySealer
from gossamer.store.sqlite import SqliteStore

from .helpers import T0, TD, p256


def _same_key(a: object, b: object) -> bool:
    from cryptography.hazmat.primitives import serialization

    def der(k: object) -> bytes:
        return k.public_key().public_bytes(  # type: ignore[attr-defined,no-any-return]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    return der(a) == der(b)


def test_a_sealed_key_opens_with_the_same_token_key_and_purpose() -> None:
    secret = os.urandom(32)
    key = p256()
    sealed = KeySealer(secret).seal(key, "issuer")
    assert "PRIVATE KEY" not in json.dumps(sealed)
    assert _same_key(KeySealer(secret).open(sealed, "issuer"), key)


@pytest.mark.parametrize(
    ("secret", "purpose"),
    [(os.urandom(32), "issuer"), (None, "root")],
    ids=["another replica's token key", "sealed as the issuer, opened as the root"],
)
def test_a_sealed_key_is_refused_with_a_clear_error(secret: bytes | None, purpose: str) -> None:
    mine = os.urandom(32)
    sealed = KeySealer(mine).seal(p256(), "issuer")
    with pytest.raises(IdentityError, match="same ca/ directory"):
        KeySealer(secret or mine).open(sealed, purpose)


def test_a_tampered_or_foreign_record_is_refused() -> None:
    sealer = KeySealer(os.urandom(32))
    sealed = sealer.seal(p256(), "issuer")
    with pytest.raises(IdentityError, match="cannot be opened"):
        sealer.open({**sealed, "sealed": sealed["nonce"]}, "issuer")
    with pytest.raises(IdentityError, match="not sealed as"):
        sealer.open({"pem": "-----BEGIN PRIVATE KEY-----"}, "issuer")


def test_the_shared_ca_record_holds_no_key_in_clear_and_round_trips(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", TD, now=T0)
    staged = ca.new_root(now=T0)
    with SqliteStore(tmp_path / "system.db") as store:
        shared = SharedCA(store, KeySealer(os.urandom(32)))
        assert shared.read() is None
        published = shared.publish_first(record_of(ca, staged, None))
        stored = json.dumps(store.list())
        assert "PRIVATE KEY" not in stored
        again = shared.read()
        assert again is not None and again.version == published.version
        assert again.issuer_fingerprint == certificate_fingerprint(ca.intermediate_cert)
        assert again.staged is not None
        assert again.staged.fingerprint() == staged.fingerprint()
        assert _same_key(again.issuer_key, ca.material()[2])
        # A second replica's CA does not replace the one published first.
        other = CertificateAuthority.load_or_create(tmp_path / "other", TD, now=T0)
        kept = shared.publish_first(record_of(other, None, None))
        assert kept.issuer_fingerprint == published.issuer_fingerprint
        # A write from a stale read is a conflict, not a lost update.
        shared.write(published)
        with pytest.raises(Conflict):
            shared.write(published)


def test_a_ca_replaced_from_the_shared_record_signs_with_its_issuer(tmp_path: Path) -> None:
    leader = CertificateAuthority.load_or_create(tmp_path / "a", TD, now=T0)
    follower = CertificateAuthority.load_or_create(tmp_path / "b", TD, now=T0)
    staged = leader.new_root(now=T0)
    leader.add_roots(staged.roots)
    leader.activate(staged)
    roots, cert, key, root_key = leader.material()
    follower.replace(roots, cert, key, root_key)
    assert follower.issuer_fingerprint() == leader.issuer_fingerprint()
    assert follower.trust_bundle_pem() == leader.trust_bundle_pem()
    # And from its files, as a restart would load it.
    reloaded = CertificateAuthority.load_or_create(tmp_path / "b", TD, now=T0)
    assert reloaded.issuer_fingerprint() == leader.issuer_fingerprint()
    with pytest.raises(IdentityError):
        follower.replace(roots[:1], cert, key, root_key)  # the signing root left out
