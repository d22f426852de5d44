"""The admin listener: /ready, /live, /metrics, /config. Small, and off the hot path."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import cast

from gossamer.proxy.http1 import Headers, ProtocolError, RequestHead, RequestReader, error_response

log = logging.getLogger("gossamer.proxy")

# A page: (status, content type, body).
Page = tuple[int, str, bytes]


class AdminConnection(asyncio.Protocol):
    def __init__(
        self, pages: Callable[[bytes, bytes], Page], registry: set[AdminConnection]
    ) -> None:
        self.pages = pages
        self.registry = registry  # so the data plane can close scrapers' keep-alives
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(self, {})
        self.head: RequestHead | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except ProtocolError as e:
            if self.transport is not None:
                self.transport.write(error_response(e.status, e.reason, close=True))
                self.transport.close()

    def request_head(self, head: RequestHead) -> None:
        self.head = head

    def request_body(self, data: bytes) -> None:
        pass

    def request_end(self, trailers: Headers | None) -> None:
        head = self.head
        transport = self.transport
        if head is None or transport is None or transport.is_closing():
            return
        path = head.target.split(b"?", 1)[0]
        try:
            status, content_type, body = self.pages(head.method, path)
        except Exception:
            log.exception("admin page %s failed", path.decode("latin-1"))
            status, content_type, body = 500, "text/plain", b"internal error\n"
        close = not head.keep_alive
        transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
            % (
                status,
                b"OK" if status == 200 else b"Error",
                content_type.encode(),
                len(body),
                b"connection: close\r\n" if close else b"",
            )
            + (b"" if head.method == b"HEAD" else body)
        )
        if close:
            transport.close()


def json_page(data: object) -> Page:
    return 200, "application/json", json.dumps(data, indent=2, sort_keys=True, default=str).encode()
