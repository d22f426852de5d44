"""Bring-your-own CA: what is accepted, and how each kind of mistake is reported."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from gossamer.errors import IdentityError
from gossamer.identity import CertificateAuthority, OperatorCA

from .helpers import (
    T0,
    TD,
    WEB,
    PrivateKey,
    cert_pem,
    issue,
    key_pem,
    make_cert,
    mode,
    openssl,
    p256,
)


@dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    root_key: PrivateKey
    intermediate: x509.Certificate
    intermediate_key: PrivateKey


def _pki() -> Pki:
    root_key, inter_key = p256(), p256()
    root = make_cert("Acme Root", root_key, pathlen=1, not_after=T0 + timedelta(days=3650))
    inter = make_cert(
        "Acme Mesh Intermediate",
        inter_key,
        issuer=root,
        issuer_key=root_key,
        pathlen=0,
    )
    return Pki(root, root_key, inter, inter_key)


def _write(tmp_path: Path, pki: Pki) -> OperatorCA:
    files = OperatorCA(tmp_path / "op-root.pem", tmp_path / "op-int.pem", tmp_path / "op-int.key")
    files.root_cert.write_bytes(cert_pem(pki.root))
    files.intermediate_cert.write_bytes(cert_pem(pki.intermediate))
    files.intermediate_key.write_bytes(key_pem(pki.intermediate_key))
    return files


def _adopt(files: OperatorCA, ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.from_operator_files(
        files.root_cert, files.intermediate_cert, files.intermediate_key, TD, ca_dir, now=T0
    )


def test_an_operator_ca_is_adopted_and_copied_with_the_root_key_left_out(
    tmp_path: Path, ca_dir: Path
) -> None:
    pki = _pki()

    ca = _adopt(_write(tmp_path, pki), ca_dir)

    assert ca.root_cert == pki.root
    assert ca.intermediate_cert == pki.intermediate
    assert not ca.has_root_key
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "bundle.crt",
        "intermediate.crt",
        "intermediate.key",
        "root.crt",
    ]
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / "intermediate.key") == 0o600
    _, issued = issue(ca, WEB)
    x509.load_pem_x509_certificate(issued.certificate_pem.encode()).verify_directly_issued_by(
        pki.intermediate
    )


def test_an_adopted_ca_loads_from_its_directory_afterwards(tmp_path: Path, ca_dir: Path) -> None:
    adopted = _adopt(_write(tmp_path, _pki()), ca_dir)

    loaded = CertificateAuthority.load_or_create(ca_dir, TD, now=T0)

    assert loaded.root_fingerprint() == adopted.root_fingerprint()
    assert loaded.intermediate_cert == adopted.intermediate_cert


def test_adopting_an_operator_ca_removes_a_root_key_left_by_a_previous_ca(
    tmp_path: Path, ca_dir: Path
) -> None:
    CertificateAuthority.load_or_create(ca_dir, TD, now=T0)

    _adopt(_write(tmp_path, _pki()), ca_dir)

    assert not (ca_dir / "root.key").exists()


def test_initialize_uses_the_operator_ca_when_given_and_creates_one_otherwise(
    tmp_path: Path,
) -> None:
    pki = _pki()
    files = _write(tmp_path, pki)

    adopted = CertificateAuthority.initialize(tmp_path / "a", TD, files, now=T0)
    created = CertificateAuthority.initialize(tmp_path / "b", TD, now=T0)

    assert adopted.root_cert == pki.root
    assert created.has_root_key
    assert created.root_cert.subject.rfc4514_string().startswith("CN=Gossamer Root CA")


def test_several_operator_roots_all_go_into_the_bundle_and_the_signer_is_pinned(
    tmp_path: Path, ca_dir: Path
) -> None:
    pki = _pki()
    next_root = make_cert("Acme Root 2031", p256())
    files = _write(tmp_path, pki)
    files.root_cert.write_bytes(cert_pem(next_root, pki.root))

    ca = _adopt(files, ca_dir)

    assert ca.roots == (next_root, pki.root)
    assert x509.load_pem_x509_certificates(ca.trust_bundle_pem().encode()) == [next_root, pki.root]
    assert ca.root_cert == pki.root


def test_an_operator_ca_made_with_the_openssl_cli_is_adopted_and_its_leaves_verify(
    tmp_path: Path, ca_dir: Path
) -> None:
    ext = tmp_path / "intermediate.ext"
    ext.write_text(
        "basicConstraints=critical,CA:TRUE,pathlen:0\n"
        "keyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    p = {n: str(tmp_path / n) for n in ("root.key", "root.crt", "int.key", "int.csr", "int.crt")}
    steps = [
        ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p["root.key"]],
        ["req", "-x509", "-new", "-key", p["root.key"], "-subj", "/O=Acme/CN=Acme Root",
         "-days", "3650", "-out", p["root.crt"],
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p["int.key"]],
        ["req", "-new", "-key", p["int.key"], "-subj", "/O=Acme/CN=Acme Mesh",
         "-out", p["int.csr"]],
        ["x509", "-req", "-in", p["int.csr"], "-CA", p["root.crt"], "-CAkey", p["root.key"],
         "-CAcreateserial", "-days", "365", "-extfile", str(ext), "-out", p["int.crt"]],
    ]  # fmt: skip
    for step in steps:
        result = openssl(*step)
        assert result.returncode == 0, result.stderr

    # The openssl-made certificates are valid from the wall clock, so this test uses it.
    ca = CertificateAuthority.from_operator_files(
        Path(p["root.crt"]), Path(p["int.crt"]), Path(p["int.key"]), TD, ca_dir
    )
    _, issued = issue(ca, WEB, now=None)
    (tmp_path / "chain.pem").write_text(issued.chain_pem)
    (tmp_path / "leaf.pem").write_text(issued.certificate_pem)

    result = openssl(
        "verify", "-x509_strict", "-CAfile", p["root.crt"],
        "-untrusted", str(tmp_path / "chain.pem"), str(tmp_path / "leaf.pem"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout


# ---- refusals -----------------------------------------------------------------------


def _mismatched_key(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    files.intermediate_key.write_bytes(key_pem(p256()))
    return files


def _non_ca_intermediate(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    leaf = make_cert("a leaf", pki.intermediate_key, issuer=pki.root, issuer_key=pki.root_key,
                     ca=False)  # fmt: skip
    files.intermediate_cert.write_bytes(cert_pem(leaf))
    return files


def _no_key_cert_sign(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    cert = make_cert("no signing", pki.intermediate_key, issuer=pki.root,
                     issuer_key=pki.root_key, key_cert_sign=False)  # fmt: skip
    files.intermediate_cert.write_bytes(cert_pem(cert))
    return files


def _other_root(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    files.root_cert.write_bytes(cert_pem(make_cert("Acme Root", p256())))
    return files


def _root_not_self_signed(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    top_key = p256()
    top = make_cert("Top", top_key)
    middle = make_cert("Acme Root", pki.root_key, issuer=top, issuer_key=top_key)
    files.root_cert.write_bytes(cert_pem(middle))
    return files


def _root_not_ca(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    files.root_cert.write_bytes(cert_pem(make_cert("Acme Root", pki.root_key, ca=False)))
    return files


def _root_pathlen_zero(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    files.root_cert.write_bytes(cert_pem(make_cert("Acme Root", pki.root_key, pathlen=0)))
    return files


def _expired(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    cert = make_cert("old", pki.intermediate_key, issuer=pki.root, issuer_key=pki.root_key,
                     not_after=T0 - timedelta(hours=1))  # fmt: skip
    files.intermediate_cert.write_bytes(cert_pem(cert))
    return files


def _not_yet_valid(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    cert = make_cert("future", pki.intermediate_key, issuer=pki.root, issuer_key=pki.root_key,
                     not_before=T0 + timedelta(days=1))  # fmt: skip
    files.intermediate_cert.write_bytes(cert_pem(cert))
    return files


def _rsa_intermediate(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    key = rsa.generate_private_key(65537, 2048)
    cert = make_cert("rsa", key, issuer=pki.root, issuer_key=pki.root_key)
    files.intermediate_cert.write_bytes(cert_pem(cert))
    files.intermediate_key.write_bytes(key_pem(key))
    return files


def _encrypted_key(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    files.intermediate_key.write_bytes(key_pem(pki.intermediate_key, password=b"secret"))
    return files


def _missing_root(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    return replace(files, root_cert=tmp_path / "nowhere.pem")


def _garbage_intermediate(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    files.intermediate_cert.write_bytes(b"hello")
    return files


def _garbage_key(tmp_path: Path, files: OperatorCA, pki: Pki) -> OperatorCA:
    files.intermediate_key.write_bytes(cert_pem(pki.intermediate))
    return files


Breakage = Callable[[Path, OperatorCA, Pki], OperatorCA]
REFUSED: list[tuple[str, Breakage, str]] = [
    ("mismatched key", _mismatched_key,
     "intermediate key .*op-int.key does not match intermediate certificate .*op-int.pem "
     r"\(their public keys differ\); supply the key the intermediate was issued for"),
    ("non-CA intermediate", _non_ca_intermediate,
     "intermediate certificate .*op-int.pem .* is not a CA certificate "
     r"\(BasicConstraints CA:TRUE is missing\).*supply an intermediate issued with CA:TRUE"),
    ("intermediate may not sign", _no_key_cert_sign, "KeyUsage without keyCertSign"),
    ("intermediate not signed by the root", _other_root,
     "intermediate certificate .*op-int.pem .* is not signed by the root certificate "
     ".*op-root.pem .*; supply the root that issued the intermediate"),
    ("root not self-signed", _root_not_self_signed,
     "is not self-signed .*supply the top of your chain"),
    ("root not a CA", _root_not_ca, "root certificate .* is not a CA certificate"),
    ("root with pathlen 0", _root_pathlen_zero, "has pathlen:0"),
    ("expired intermediate", _expired,
     "intermediate certificate .*op-int.pem expired at 2030-01-01T11:00:00[+]00:00; "
     "supply a currently valid one"),
    ("intermediate not yet valid", _not_yet_valid, "is not valid until 2030-01-02"),
    ("rsa intermediate", _rsa_intermediate,
     "is an RSA-2048 key; Gossamer signs with ECDSA P-256 only"),
    ("encrypted key", _encrypted_key, "is encrypted; supply it unencrypted"),
    ("missing root file", _missing_root,
     "root certificate .*nowhere.pem does not exist; supply the PEM of your root CA"),
    ("intermediate not PEM", _garbage_intermediate, "is not a PEM certificate"),
    ("key file holds a certificate", _garbage_key, "is not a PEM private key"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("breakage", "reason"), [(b, r) for _, b, r in REFUSED], ids=[i for i, _, _ in REFUSED]
)
def test_a_faulty_operator_ca_is_refused_saying_what_is_wrong(
    tmp_path: Path, ca_dir: Path, breakage: Breakage, reason: str
) -> None:
    pki = _pki()
    files = breakage(tmp_path, _write(tmp_path, pki), pki)

    with pytest.raises(IdentityError, match=f"^operator CA: .*{reason}"):
        _adopt(files, ca_dir)
    assert not ca_dir.exists()
