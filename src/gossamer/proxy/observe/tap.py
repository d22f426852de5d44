"""Live tap: each finished request, streamed to whoever is watching this proxy.

`GET /tap?method=&path=&direction=` on the admin listener answers a chunked stream of
JSON lines: one `{"type": "started"}` line at once, then one `{"type": "request"}`
line per request that matches. Nothing is built or sent while nobody taps: the data
plane's hooks are None and the hot path reads one attribute (see proxy.observe.hooks).

A tapper that reads slower than the proxy answers requests loses events rather than
holding memory: above TAP_BUFFER_LIMIT bytes waiting in its socket, events are
dropped and counted, and the count is sent with the next event that fits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("gossamer.proxy")

MAX_TAPS: Final = 16
TAP_BUFFER_LIMIT: Final = 1024 * 1024
DIRECTIONS: Final = ("inbound", "outbound")


class BadTap(ValueError):
    """A tap request whose filters make no sense; the message says which."""


@dataclass(frozen=True, slots=True)
class TapFilter:
    method: bytes | None = None  # upper case
    path: bytes | None = None  # a prefix of the request target
    direction: str | None = None

    @staticmethod
    def from_query(query: bytes) -> TapFilter:
        params = urllib.parse.parse_qs(query.decode("latin-1"))

        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        direction = one("direction") or None
        if direction is not None and direction not in DIRECTIONS:
            raise BadTap(f"direction: must be inbound or outbound, not {direction!r}")
        method, path = one("method"), one("path")
        if path and not path.startswith("/"):
            raise BadTap(f"path: must start with /, not {path!r}")
        return TapFilter(
            method.upper().encode("latin-1") if method else None,
            path.encode("latin-1") if path else None,
            direction,
        )

    def matches(self, direction: str, method: bytes, target: bytes) -> bool:
        if self.direction is not None and direction != self.direction:
            return False
        if self.method is not None and method != self.method:
            return False
        return self.path is None or target.startswith(self.path)


class TapStream:
    """One tapper: a chunked HTTP response on an admin connection."""

    __slots__ = ("dropped", "filter", "sent", "transport")

    def __init__(self, transport: asyncio.Transport, tap_filter: TapFilter) -> None:
        self.transport = transport
        self.filter = tap_filter
        self.dropped = 0
        self.sent = 0

    def send(self, event: dict[str, Any]) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > TAP_BUFFER_LIMIT:
            self.dropped += 1
            return
        if self.dropped:
            event = {**event, "dropped_before": self.dropped}
            self.dropped = 0
        line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        transport.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.sent += 1


class TapHub:
    """The tappers of one proxy. `changed` is called when the first one comes or the
    last one goes, so the data plane can switch its hooks on and off."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.streams: list[TapStream] = []
        self._changed = changed

    @property
    def active(self) -> bool:
        return bool(self.streams)

    def wanted(self, direction: str, method: bytes, target: bytes) -> bool:
        """Whether any tapper wants this request (checked before an event is built)."""
        return any(s.filter.matches(direction, method, target) for s in self.streams)

    def publish(self, direction: str, method: bytes, target: bytes, event: dict[str, Any]) -> None:
        for stream in self.streams:
            if stream.filter.matches(direction, method, target):
                try:
                    stream.send(event)
                except Exception:
                    log.exception("tap: sending an event failed; closing that tap")
                    stream.transport.abort()

    def open(
        self, transport: asyncio.Transport, query: bytes, started: dict[str, Any]
    ) -> TapStream | None:
        """Answer a `/tap` request on `transport`; None when it was refused."""
        try:
            tap_filter = TapFilter.from_query(query)
        except BadTap as err:
            _refuse(transport, 400, str(err))
            return None
        if len(self.streams) >= MAX_TAPS:
            _refuse(transport, 503, f"this proxy already has {MAX_TAPS} taps open; try later")
            return None
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-store\r\n\r\n"
        )
        stream = TapStream(transport, tap_filter)
        stream.send({"type": "started", **started})
        self.streams.append(stream)
        if len(self.streams) == 1:
            self._changed()
        return stream

    def close(self, stream: TapStream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)
            if not self.streams:
                self._changed()


def _refuse(transport: asyncio.Transport, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode() + b"\n"
    transport.write(
        b"HTTP/1.1 %d Error\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, len(body), body)
    )
    transport.close()
