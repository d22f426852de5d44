"""docs/cli.md has a section for every command the CLI has, so the two cannot drift."""

from __future__ import annotations

import argparse
from pathlib import Path

from gossamer.cli.main import build_parser

DOC = Path(__file__).parents[2] / "docs" / "cli.md"


def test_every_command_has_a_section_in_docs_cli_md() -> None:
    text = DOC.read_text()
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    # The whole name: `gossamer control` is not `gossamer control-plane`'s section.
    missing = [
        name
        for name in commands.choices
        if f"### `gossamer {name}`" not in text and f"### `gossamer {name} " not in text
    ]
    assert missing == [], f"docs/cli.md has no section for: {', '.join(missing)}"
