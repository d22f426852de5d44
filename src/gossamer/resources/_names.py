"""Name and label rules, exactly as Kubernetes applies them (k8s.io/apimachinery validation).

Each ``*_errors`` helper returns the list of reasons a value is invalid (empty when valid),
so a caller can report every problem at once, the way Kubernetes does.
"""

from __future__ import annotations

import re

_DNS1123_LABEL_MAX = 63
_DNS1123_SUBDOMAIN_MAX = 253
_DNS1035_LABEL_MAX = 63
_QUALIFIED_NAME_MAX = 63
_LABEL_VALUE_MAX = 63
_IANA_SVC_NAME_MAX = 15

DNS1123_LABEL_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_PATTERN = rf"{DNS1123_LABEL_PATTERN}(\.{DNS1123_LABEL_PATTERN})*"
DNS1035_LABEL_PATTERN = r"[a-z]([-a-z0-9]*[a-z0-9])?"

_DNS1123_LABEL = re.compile(DNS1123_LABEL_PATTERN)
_DNS1123_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN_PATTERN)
_DNS1035_LABEL = re.compile(DNS1035_LABEL_PATTERN)
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_IANA_SVC_NAME = re.compile(r"[-a-z0-9]+")
_HAS_LETTER = re.compile(r"[a-z]")

DNS1123_LABEL_REASON = (
    "must be a valid DNS-1123 label: lowercase alphanumerics and '-', "
    "starting and ending with an alphanumeric, at most 63 characters"
)
DNS1123_SUBDOMAIN_REASON = (
    "must be a valid DNS-1123 subdomain: lowercase alphanumerics, '-' and '.', "
    "each '.'-separated part starting and ending with an alphanumeric, at most 253 characters"
)
DNS1035_LABEL_REASON = (
    "must be a valid DNS-1035 label: lowercase alphanumerics and '-', "
    "starting with a letter and ending with an alphanumeric, at most 63 characters"
)
IANA_SVC_NAME_RULES = (
    "at most 15 characters, lowercase alphanumerics and '-', "
    "at least one letter, no '-' at either end or next to another '-'"
)
IANA_SVC_NAME_REASON = f"must be a valid port name: {IANA_SVC_NAME_RULES}"
_QUALIFIED_NAME_CHARS = (
    "consist of alphanumeric characters, '-', '_' or '.', "
    "and start and end with an alphanumeric character"
)


def is_dns1123_label(value: str) -> bool:
    """A lowercase RFC 1123 label: namespaces, Service port names."""
    return len(value) <= _DNS1123_LABEL_MAX and _DNS1123_LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    """A lowercase RFC 1123 subdomain: most object names, label key prefixes."""
    return len(value) <= _DNS1123_SUBDOMAIN_MAX and _DNS1123_SUBDOMAIN.fullmatch(value) is not None


def is_dns1035_label(value: str) -> bool:
    """A lowercase RFC 1035 label: Service names (they become DNS names and env vars)."""
    return len(value) <= _DNS1035_LABEL_MAX and _DNS1035_LABEL.fullmatch(value) is not None


def is_iana_svc_name(value: str) -> bool:
    """A named port (IANA_SVC_NAME, RFC 6335): container ports and targetPort names."""
    return (
        len(value) <= _IANA_SVC_NAME_MAX
        and _IANA_SVC_NAME.fullmatch(value) is not None
        and _HAS_LETTER.search(value) is not None
        and not value.startswith("-")
        and not value.endswith("-")
        and "--" not in value
    )


def validate_label_key(key: str) -> list[str]:
    """Why `key` is not a valid label (or annotation) key; empty when it is.

    A key is an optional DNS-1123 subdomain prefix and '/', then a name of at most 63
    characters (Kubernetes' "qualified name").
    """
    errors: list[str] = []
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        elif not is_dns1123_subdomain(prefix):
            errors.append(f"prefix part {DNS1123_SUBDOMAIN_REASON}")
    else:
        return [
            "must be a name with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/my-name'), and contain at most one '/'"
        ]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > _QUALIFIED_NAME_MAX:
        errors.append(f"name part must be no more than {_QUALIFIED_NAME_MAX} characters")
    if name and _QUALIFIED_NAME.fullmatch(name) is None:
        errors.append(f"name part must {_QUALIFIED_NAME_CHARS}")
    return errors


def validate_label_value(value: str) -> list[str]:
    """Why `value` is not a valid label value; empty when it is (the empty string is valid)."""
    errors: list[str] = []
    if len(value) > _LABEL_VALUE_MAX:
        errors.append(f"must be no more than {_LABEL_VALUE_MAX} characters")
    if value and _QUALIFIED_NAME.fullmatch(value) is None:
        errors.append(f"must be empty or {_QUALIFIED_NAME_CHARS}")
    return errors
