"""Label selection, Kubernetes' way, for every part of the translation."""

from __future__ import annotations

from collections.abc import Mapping


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Service with no selector selects nothing (as in Kubernetes)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
