"""Access logs: one JSON line per request, off unless asked for.

Lines are gathered in memory and written about once a second (or when 64 KiB have
gathered), so a request never waits for a disk; `-` writes them to standard output.
The fields are the same as a tap event's (see proxy.hooks.request_event).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import IO, Any, Final

log = logging.getLogger("gossamer.proxy")

FLUSH_INTERVAL: Final = 1.0
FLUSH_BYTES: Final = 64 * 1024
# Beyond this much unwritten (a disk that does not keep up), lines are dropped.
MAX_PENDING: Final = 8 * 1024 * 1024


class AccessLog:
    def __init__(self, where: str) -> None:
        self.where = where
        self._out: IO[str] | None = None
        self._pending: list[str] = []
        self._size = 0
        self.dropped = 0
        self.written = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the file (appending); OSError says why it cannot be."""
        self._out = sys.stdout if self.where == "-" else open(self.where, "a", encoding="utf-8")  # noqa: SIM115
        self._loop = loop
        self._timer = loop.call_later(FLUSH_INTERVAL, self._tick)

    def write(self, event: dict[str, Any]) -> None:
        if self._size > MAX_PENDING:
            self.dropped += 1
            return
        line = json.dumps(event, separators=(",", ":")) + "\n"
        self._pending.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        out, pending = self._out, self._pending
        if out is None or not pending:
            return
        self._pending, self._size = [], 0
        try:
            out.write("".join(pending))
            out.flush()
            self.written += len(pending)
        except (OSError, ValueError) as err:
            self.dropped += len(pending)
            log.warning("access log %s: dropped %d lines: %s", self.where, len(pending), err)

    def _tick(self) -> None:
        self.flush()
        if self._loop is not None and self._out is not None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        out, self._out = self._out, None
        if out is not None and out is not sys.stdout:
            out.close()
