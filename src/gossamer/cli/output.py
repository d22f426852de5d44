"""Terminal output: aligned tables, YAML and JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO | None = None
) -> None:
    """Columns padded to their widest cell, two spaces apart, like kubectl."""
    out = out or sys.stdout  # looked up per call: tests and pipes replace it
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row))
        out.write(line.rstrip() + "\n")


def dump(data: Any, fmt: str, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    else:
        import yaml  # here, not at the top: the long-lived proxy process never needs it

        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def rule_ref(index: int, name: str | None = None, owner: str = "") -> str:
    """A rule of an object as every command names it: `rule NAME` if it has a name,
    else its field path `rules[N]` (counted from 0, as validation errors count).
    `routes` numbers rules #1, #2 in the order they are tried; that is a position,
    not a name (decision 0081)."""
    ref = f"rule {name}" if name else f"rules[{index}]"
    return f"{owner} {ref}" if owner else ref


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """Kubernetes-style age: 45s, 12m, 3h, 9d."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def duration(seconds: float) -> str:
    """A long span in the two largest units: 23h59m, 364d23h."""
    s = int(seconds)
    if s < 0:
        return "expired"
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes = rem // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{s % 60}s"
