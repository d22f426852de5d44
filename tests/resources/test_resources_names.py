"""Name and label rules, with the cases Kubernetes' own validation tests use."""

import pytest

from gossamer.resources import (
    is_dns1035_label,
    is_dns1123_label,
    is_dns1123_subdomain,
    validate_label_key,
    validate_label_value,
)
from gossamer.resources._names import is_iana_svc_name


def _id(value: str) -> str:
    return repr(value) if len(value) <= 24 else f"{value[:8]!r}...({len(value)} chars)"


DNS1123_LABELS_VALID = [
    "a", "ab", "abc", "a1", "a-1", "a--1--2--b", "0", "01", "012", "1a", "1-a", "1--a--b--2",
    "a" * 63,
]  # fmt: skip
DNS1123_LABELS_INVALID = [
    "", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1", "_", "a_", "_a",
    "a_b", "1_", "_1", "1_2", ".", "a.", ".a", "a.b", "1.", ".1", "1.2", " ", "a ", " a", "a b",
    "1 ", " 1", "1 2", "a" * 64,
]  # fmt: skip


@pytest.mark.parametrize("name", DNS1123_LABELS_VALID, ids=_id)
def test_dns1123_label_accepts_lowercase_alphanumerics_and_inner_dashes(name: str) -> None:
    assert is_dns1123_label(name)


@pytest.mark.parametrize("name", DNS1123_LABELS_INVALID, ids=_id)
def test_dns1123_label_rejects_anything_else(name: str) -> None:
    assert not is_dns1123_label(name)


DNS1123_SUBDOMAINS_VALID = [
    *DNS1123_LABELS_VALID, "a.a", "ab.a", "a--1--2--b.a", "a.1", "0.a", "1--a--b--2.0",
    "a.b.c.d.e", "1.2.3.4.5", "11.22.33.44.55", "a" * 253, ("a" * 63 + ".") * 3 + "a" * 61,
]  # fmt: skip
DNS1123_SUBDOMAINS_INVALID = [
    "", "A", "ABC", "aBc", "-", "a-", "-a", "_", "a_b", ".", "a.", ".a", "a..b", "1..2", " ",
    "a b", "A.a", "aB.a", "ab.A", "A.B.C.D.E", "a.B.c.d.e", "a@b", "a,b", "a;b", "a:b", "a%b",
    "a?b", "a$b", "a" * 254,
]  # fmt: skip


@pytest.mark.parametrize("name", DNS1123_SUBDOMAINS_VALID, ids=_id)
def test_dns1123_subdomain_accepts_dot_separated_labels(name: str) -> None:
    assert is_dns1123_subdomain(name)


@pytest.mark.parametrize("name", DNS1123_SUBDOMAINS_INVALID, ids=_id)
def test_dns1123_subdomain_rejects_anything_else(name: str) -> None:
    assert not is_dns1123_subdomain(name)


DNS1035_LABELS_VALID = ["a", "ab", "abc", "a1", "a-1", "a--1--2--b", "a" * 63]
DNS1035_LABELS_INVALID = [
    "0", "01", "012", "1a", "1-a", "1--a--b--2", "", "A", "aBc", "-", "a-", "-a", "_", "a_b",
    ".", "a.b", " ", "a b", "a" * 64,
]  # fmt: skip


@pytest.mark.parametrize("name", DNS1035_LABELS_VALID, ids=_id)
def test_dns1035_label_accepts_labels_starting_with_a_letter(name: str) -> None:
    assert is_dns1035_label(name)


@pytest.mark.parametrize("name", DNS1035_LABELS_INVALID, ids=_id)
def test_dns1035_label_rejects_leading_digits_and_what_dns1123_rejects(name: str) -> None:
    assert not is_dns1035_label(name)


LABEL_KEYS_VALID = [
    "simple", "now-with-dashes", "1-starts-with-num", "1234", "simple/simple",
    "now-with-dashes/simple", "now.with.dots/simple", "now-with.dashes-and.dots/simple",
    "1-num.2-num/3-num", "1234/5678", "1.2.3.4/5678", "Uppercase_Is_OK_123",
    "example.com/Uppercase_Is_OK_123", "requests.storage-foo", "app.kubernetes.io/name",
    "a" * 63, "a" * 253 + "/" + "b" * 63,
]  # fmt: skip
LABEL_KEYS_INVALID = {
    "nospecialchars%^=@": "name part must consist of",
    "cantendwithadash-": "name part must consist of",
    "-cantstartwithadash": "name part must consist of",
    "only/one/slash": "at most one '/'",
    "Example.com/abc": "prefix part must be a valid DNS-1123 subdomain",
    "example_com/abc": "prefix part must be a valid DNS-1123 subdomain",
    "example.com/": "name part must be non-empty",
    "/simple": "prefix part must be non-empty",
    "": "name part must be non-empty",
    "a" * 64: "name part must be no more than 63 characters",
    "a" * 254 + "/abc": "prefix part must be a valid DNS-1123 subdomain",
}


@pytest.mark.parametrize("key", LABEL_KEYS_VALID, ids=_id)
def test_label_key_accepts_an_optional_prefix_and_a_name(key: str) -> None:
    assert validate_label_key(key) == []


@pytest.mark.parametrize(("key", "reason"), LABEL_KEYS_INVALID.items(), ids=_id)
def test_label_key_errors_say_which_part_is_wrong(key: str, reason: str) -> None:
    errors = validate_label_key(key)
    assert errors
    assert any(reason in e for e in errors), errors


LABEL_VALUES_VALID = [
    "", "simple", "now-with-dashes", "1-starts-with-num", "end-with-num-1", "1234",
    "Mixed.Case_value", "a" * 63,
]  # fmt: skip
LABEL_VALUES_INVALID = [
    "nospecialchars%^=@", "Tama-nui-te-rā.is.Māori.sun", "\\backslashes\\are\\bad",
    "-starts-with-dash", "ends-with-dash-", ".starts.with.dot", "ends.with.dot.", "a b",
    "a" * 64,
]  # fmt: skip


@pytest.mark.parametrize("value", LABEL_VALUES_VALID, ids=_id)
def test_label_value_may_be_empty_or_a_name(value: str) -> None:
    assert validate_label_value(value) == []


@pytest.mark.parametrize("value", LABEL_VALUES_INVALID, ids=_id)
def test_label_value_rejects_other_characters_and_long_values(value: str) -> None:
    assert validate_label_value(value)


def test_label_value_too_long_says_the_limit() -> None:
    assert validate_label_value("a" * 64) == ["must be no more than 63 characters"]


PORT_NAMES_VALID = ["telnet", "re-mail-ck", "pop3", "a", "a-1", "1-a", "a-1-b-2-c", "h2c", "a" * 15]
PORT_NAMES_INVALID = ["", "-abc", "abc-", "a--b", "123", "a" * 16, "ABC", "a_b", "a.b"]


@pytest.mark.parametrize("name", PORT_NAMES_VALID, ids=_id)
def test_port_name_accepts_iana_service_names(name: str) -> None:
    assert is_iana_svc_name(name)


@pytest.mark.parametrize("name", PORT_NAMES_INVALID, ids=_id)
def test_port_name_needs_a_letter_and_no_dash_at_the_ends_or_doubled(name: str) -> None:
    assert not is_iana_svc_name(name)
