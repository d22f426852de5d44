"""How large an object may be: the bounds every kind keeps, checked before the model.

Every proxy that can reach a Service, or that a policy applies to, receives it in its
snapshot, so one oversized object costs memory and CPU in every such proxy (a Service
with 10,000 ports cost each of them 42 MB). The per-field caps (ports per Service,
rules per policy, labels per map) are on the models; the bounds here hold for any
object, free-form fields included, and run first so that a huge object is refused
before pydantic walks it.

    object size     at most 512 KiB as compact JSON (twice Kubernetes' 256 KiB cap on
                    annotations, which count towards it)
    strings         at most 4096 characters each, except annotation values and
                    `status` (written by the control plane), which the size bounds
    nesting         at most 64 mappings and lists inside each other
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from gossamer.errors import FieldError
from gossamer.resources._documents import MAX_DEPTH

__all__ = [
    "MAX_DEPTH",
    "MAX_LABELS",
    "MAX_OBJECT_BYTES",
    "MAX_POLICY_RULES",
    "MAX_PORTS",
    "MAX_RULE_PARTS",
    "MAX_STRING_LENGTH",
    "MAX_VALUES",
    "limit_errors",
]

MAX_OBJECT_BYTES: Final = 512 * 1024
MAX_STRING_LENGTH: Final = 4096
MAX_LABELS: Final = 64
"""Labels in one map: metadata.labels, a Service's selector, a policy's matchLabels."""
MAX_PORTS: Final = 100
"""Ports of a Service or a Workload: what one Kubernetes EndpointSlice may carry."""
MAX_POLICY_RULES: Final = 100
"""Rules of one AuthorizationPolicy."""
MAX_RULE_PARTS: Final = 16
"""`from`, `to` and `when` entries of one AuthorizationPolicy rule, and its targetRefs."""
MAX_VALUES: Final = 512
"""Values in one AuthorizationPolicy list (principals, ipBlocks, paths, ...)."""

_MAX_ERRORS = 10
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_Path = tuple[str | int, ...]


def limit_errors(obj: Mapping[str, Any]) -> list[FieldError]:
    """What in `obj` is beyond the bounds above (empty if nothing), each with its path.

    A walk without recursion that stops as soon as the object is too large, so its cost
    is bounded by MAX_OBJECT_BYTES whatever it is given."""
    errors: list[FieldError] = []
    size = 0
    stack: list[tuple[Any, _Path, int]] = [(obj, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            size += _string_size(value)
            if len(value) > MAX_STRING_LENGTH and not _free_text(path):
                errors.append(
                    FieldError(
                        format_raw_path(path),
                        f"must be at most {MAX_STRING_LENGTH} characters (is {len(value)})",
                    )
                )
        elif isinstance(value, Mapping | list | tuple):
            if depth > MAX_DEPTH:
                errors.append(
                    FieldError(format_raw_path(path), f"nested deeper than {MAX_DEPTH} levels")
                )
                break
            size += 2
            if isinstance(value, Mapping):
                for key, item in value.items():
                    size += _string_size(str(key)) + 2
                    stack.append((item, (*path, str(key)), depth + 1))
            else:
                for i, item in enumerate(value):
                    size += 1
                    stack.append((item, (*path, i), depth + 1))
        else:
            size += len(str(value))
        if size > MAX_OBJECT_BYTES:
            return [
                FieldError(
                    "",
                    f"must be at most {MAX_OBJECT_BYTES // 1024} KiB as JSON (is more); "
                    "split it into several objects",
                )
            ]
        if len(errors) >= _MAX_ERRORS:
            break
    return errors


def _string_size(text: str) -> int:
    return (len(text) if text.isascii() else len(text.encode("utf-8", "replace"))) + 2


def _free_text(path: _Path) -> bool:
    # Annotation values are bounded together (256 KiB, see ObjectMeta); status is the
    # control plane's own. Both are counted in the object's size.
    return path[:2] == ("metadata", "annotations") or path[:1] == ("status",)


def format_raw_path(path: _Path) -> str:
    """('spec', 'ports', 3, 'name') → "spec.ports[3].name"; a key that is not a plain
    name is quoted: metadata.annotations["example.com/x"]."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{part}" if text else part
        else:
            escaped = part.replace("\\", "\\\\").replace('"', '\\"')
            text += f'["{escaped}"]'
    return text
