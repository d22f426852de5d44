from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from gossamer.errors import IdentityError
from gossamer.identity import (
    JoinTokenIssuer,
    SpiffeId,
    decode_unverified,
    load_or_create_token_key,
)

from .helpers import T0, TD, mode

KEY = bytes(range(32))
FINGERPRINT = hashlib.sha256(b"root").hexdigest()
HOUR = timedelta(hours=1)


@pytest.fixture
def issuer() -> JoinTokenIssuer:
    return JoinTokenIssuer(KEY, TD, FINGERPRINT)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(payload: str, key: bytes = KEY) -> str:
    signature = hmac.new(key, f"gsm1.{payload}".encode(), hashlib.sha256).digest()
    return f"gsm1.{payload}.{_b64(signature)}"


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return decoded


def test_a_token_verifies_and_grants_its_identity(issuer: JoinTokenIssuer) -> None:
    token = issuer.create("shop", "api", HOUR, now=T0)

    claims = issuer.verify(token, now=T0 + timedelta(minutes=59))

    assert claims.identity == SpiffeId(TD, "shop", "api")
    assert claims.trust_domain == TD
    assert (claims.namespace, claims.service_account) == ("shop", "api")
    assert claims.expires_at == T0 + HOUR
    assert claims.ca_fingerprint == FINGERPRINT
    assert len(claims.token_id) == 32


def test_a_token_is_gsm1_claims_and_an_hmac_over_them(issuer: JoinTokenIssuer) -> None:
    token = issuer.create("shop", "api", HOUR, now=T0)

    prefix, payload, _ = token.split(".")
    assert prefix == "gsm1"
    assert _signed(payload) == token
    assert _claims(token) == {
        "tid": _claims(token)["tid"],
        "td": TD,
        "ns": "shop",
        "sa": "api",
        "exp": int((T0 + HOUR).timestamp()),
        "caf": FINGERPRINT,
        "use": 1,
    }


def test_a_token_carries_how_many_joins_it_is_good_for(issuer: JoinTokenIssuer) -> None:
    assert issuer.verify(issuer.create("a", "b", HOUR, now=T0), now=T0).max_uses == 1
    token = issuer.create("a", "b", HOUR, now=T0, max_uses=5)
    assert issuer.verify(token, now=T0).max_uses == 5
    with pytest.raises(ValueError, match="max_uses"):
        issuer.create("a", "b", HOUR, now=T0, max_uses=0)


def test_every_token_has_its_own_id(issuer: JoinTokenIssuer) -> None:
    ids = {issuer.verify(issuer.create("a", "b", HOUR, now=T0), now=T0).token_id for _ in range(5)}

    assert len(ids) == 5


def test_the_proxy_reads_the_ca_pin_without_the_key(issuer: JoinTokenIssuer) -> None:
    token = issuer.create("shop", "api", HOUR, now=T0)

    claims = decode_unverified(token)

    assert claims.ca_fingerprint == FINGERPRINT
    assert claims.identity == SpiffeId(TD, "shop", "api")


def _tamper_claims(token: str) -> str:
    claims = _claims(token)
    claims["ns"] = "kube-system"
    return f"gsm1.{_b64(json.dumps(claims).encode())}.{token.split('.')[2]}"


def _tamper_signature(token: str) -> str:
    head, sig = token.rsplit(".", 1)
    return f"{head}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"


def _foreign_key(token: str) -> str:
    return JoinTokenIssuer(os.urandom(32), TD, FINGERPRINT).create("shop", "api", HOUR, now=T0)


def _other_trust_domain(token: str) -> str:
    return JoinTokenIssuer(KEY, "other.org", FINGERPRINT).create("shop", "api", HOUR, now=T0)


def _older_ca(token: str) -> str:
    old = hashlib.sha256(b"old root").hexdigest()
    return JoinTokenIssuer(KEY, TD, old).create("shop", "api", HOUR, now=T0)


NOT_ISSUED_HERE = "join token was not issued by this control plane (signature does not match)"
MALFORMED = "join token is malformed: expected gsm1.<claims>.<signature>"
EXPIRED = (
    "join token expired at 2030-01-01T13:00:00+00:00; create a new one with `gossamer token create`"
)

REFUSED: list[tuple[str, Callable[[str], str], timedelta, str]] = [
    ("expired", lambda t: t, HOUR + timedelta(seconds=1), EXPIRED),
    ("at the instant it expires", lambda t: t, HOUR, EXPIRED),
    ("tampered claims", _tamper_claims, timedelta(0), NOT_ISSUED_HERE),
    ("tampered signature", _tamper_signature, timedelta(0), NOT_ISSUED_HERE),
    ("signed with another key", _foreign_key, timedelta(0), NOT_ISSUED_HERE),
    ("for another trust domain", _other_trust_domain, timedelta(0),
     "join token is for trust domain 'other.org', but this control plane serves 'example.org'"),
    ("pinning a replaced CA", _older_ca, timedelta(0),
     "join token pins a CA root this control plane no longer uses"),
    ("empty", lambda t: "", timedelta(0), MALFORMED),
    ("prefix only", lambda t: "gsm1", timedelta(0), MALFORMED),
    ("another version", lambda t: "gsm2" + t[4:], timedelta(0), MALFORMED),
    ("four parts", lambda t: t + ".x", timedelta(0), MALFORMED),
    ("empty claims", lambda t: "gsm1.." + t.split(".")[2], timedelta(0), MALFORMED),
    ("signature not base64url", lambda t: t[:-2] + "+/", timedelta(0), MALFORMED),
    ("signature with padding", lambda t: t + "=", timedelta(0), MALFORMED),
    ("signed claims that are not json", lambda t: _signed(_b64(b"{nope")), timedelta(0),
     MALFORMED),
    ("signed claims missing a field", lambda t: _signed(_b64(b'{"td":"example.org"}')),
     timedelta(0), MALFORMED),
    ("signed claims with a bad namespace", lambda t: _signed(_b64(json.dumps(
        {"tid": "x", "td": TD, "ns": "../etc", "sa": "a", "exp": 1, "caf": FINGERPRINT}
    ).encode())), timedelta(0), MALFORMED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("alter", "later", "reason"),
    [(a, w, r) for _, a, w, r in REFUSED],
    ids=[i for i, *_ in REFUSED],
)
def test_a_bad_token_is_refused_with_a_reason_the_user_can_act_on(
    issuer: JoinTokenIssuer, alter: Callable[[str], str], later: timedelta, reason: str
) -> None:
    token = alter(issuer.create("shop", "api", HOUR, now=T0))

    with pytest.raises(IdentityError) as e:
        issuer.verify(token, now=T0 + later)
    assert str(e.value).startswith(reason)


@pytest.mark.parametrize("token", ["", "gsm1.!!.x", "gsm1.e30.sig"], ids=["empty", "bad", "{}"])
def test_decode_unverified_refuses_malformed_tokens(token: str) -> None:
    with pytest.raises(IdentityError, match="join token is malformed"):
        decode_unverified(token)


@pytest.mark.parametrize(
    ("namespace", "service_account", "ttl", "reason"),
    [
        ("", "api", HOUR, "namespace is empty"),
        ("shop", "a/b", HOUR, "service account 'a/b' may contain only"),
        ("shop", "api", timedelta(0), "ttl must be positive"),
    ],
    ids=["empty namespace", "slash in service account", "zero ttl"],
)
def test_a_token_for_an_impossible_identity_is_not_created(
    issuer: JoinTokenIssuer, namespace: str, service_account: str, ttl: timedelta, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        issuer.create(namespace, service_account, ttl, now=T0)


def test_the_ca_pin_may_be_given_as_openssl_prints_it() -> None:
    colons = ":".join(FINGERPRINT[i : i + 2] for i in range(0, 64, 2)).upper()

    issuer = JoinTokenIssuer(KEY, TD, colons)

    assert decode_unverified(issuer.create("a", "b", HOUR, now=T0)).ca_fingerprint == FINGERPRINT


@pytest.mark.parametrize(
    ("key", "fingerprint", "reason"),
    [
        (b"short", FINGERPRINT, "at least 16 bytes"),
        (KEY, "abc", "not a SHA-256 hex digest"),
    ],
    ids=["short key", "not a fingerprint"],
)
def test_an_issuer_refuses_a_weak_key_or_a_bad_pin(
    key: bytes, fingerprint: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        JoinTokenIssuer(key, TD, fingerprint)


def test_the_token_key_is_created_once_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "join-token.key"
    old = os.umask(0)
    try:
        key = load_or_create_token_key(path)
    finally:
        os.umask(old)

    assert len(key) == 32
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert load_or_create_token_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["join-token.key"]


def test_a_token_key_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "join-token.key"
    path.write_bytes(b"0123456789")

    with pytest.raises(IdentityError, match="holds 10 bytes, expected 32; remove it"):
        load_or_create_token_key(path)
