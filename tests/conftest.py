"""Shared test fixtures.

`golden`: compares generated text with a file under tests/golden/; run the suite
with UPDATE_GOLDEN=1 to rewrite the files, then review them in the diff.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


@pytest.fixture
def golden() -> Callable[[str, str], None]:
    def check(name: str, actual: str) -> None:
        path = GOLDEN_DIR / name
        if os.environ.get("UPDATE_GOLDEN") == "1":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(actual)
            return
        assert path.exists(), f"golden file {path} missing: run with UPDATE_GOLDEN=1"
        assert actual == path.read_text(), f"output differs from {path}"

    return check
