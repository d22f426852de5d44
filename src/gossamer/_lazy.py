"""Package exports loaded on first use.

The proxy process imports a handful of light modules (the snapshot types, name
resolution); the packages that hold them also export pydantic models, which cost
tens of megabytes of memory. Loading exports lazily keeps the proxy small while
`from gossamer.resources import validate` keeps working everywhere else.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def load_export(
    package: str, exports: Mapping[str, str], name: str, namespace: dict[str, Any]
) -> Any:
    module = exports.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value  # later lookups are plain attribute reads
    return value
