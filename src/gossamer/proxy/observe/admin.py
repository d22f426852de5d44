"""The admin listener: /ready, /live, /metrics, /config, /tap. Small, and off the hot path.

It must answer while the data listeners are under load: at most `max_connections`
admin connections are open at once (proxy.wire.limits), and the data plane keeps the last
file descriptors for it (proxy.wire.acceptor.FdBudget). At the limit a new connection
takes the place of the one idle longest (as nginx reuses its keep-alive connections), so
that clients keeping connections open, even asking something now and then, do not lock
a readiness probe or a scraper out; it is refused only when every one is streaming.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import cast

from gossamer.proxy.wire.http1 import (
    Headers,
    ProtocolError,
    RequestHead,
    RequestReader,
    error_response,
)
from gossamer.proxy.wire.limits import LOST, MAX_ADMIN_CONNECTIONS, close_soon

log = logging.getLogger("gossamer.proxy")

# A page: (status, content type, body).
Page = tuple[int, str, bytes]
# A streaming page (`/tap`): given the connection and the request, it answers on the
# transport itself and returns what to call when the connection goes; None if the
# path is not one it streams.
Streams = Callable[["AdminConnection", RequestHead], Callable[[], None] | None]


class AdminConnection(asyncio.Protocol):
    def __init__(
        self,
        pages: Callable[[bytes, bytes], Page],
        registry: set[AdminConnection],
        streams: Streams | None = None,
        max_connections: int = MAX_ADMIN_CONNECTIONS,
        on_refused: Callable[[], None] | None = None,
        on_evicted: Callable[[], None] | None = None,
    ) -> None:
        self.pages = pages
        self.registry = registry  # so the data plane can close scrapers' keep-alives
        self.max_connections = max_connections
        self.on_refused = on_refused
        self.on_evicted = on_evicted
        self.streams = streams
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(self, {})
        self.head: RequestHead | None = None
        # Set while a streaming page holds the connection: called when it is lost.
        self.on_lost: Callable[[], None] | None = None
        # When the last request was answered (or the connection made): see `idle_for`.
        self.answered_at = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        if len(self.registry) >= self.max_connections and not self._evict_idlest():
            # Not registered: connection_lost's discard is then a no-op.
            if self.on_refused is not None:
                self.on_refused()
            self.transport.abort()
            return
        self.registry.add(self)

    def _evict_idlest(self) -> bool:
        """At the limit: close the connection that has waited longest since its last
        answer (between requests, or one that never finished a request), for this one,
        one whose answer has all gone out before one still sending (a scraper reading
        a large /metrics); False when every connection is streaming (`/tap`), which
        only its client ends."""
        now = time.monotonic()
        idle = (c for c in self.registry if c.on_lost is None)
        victim = max(idle, key=lambda c: (c.sent_all(), c.idle_for(now)), default=None)
        if victim is None:
            return False
        self.registry.discard(victim)
        if victim.transport is not None:
            victim.transport.abort()
        if self.on_evicted is not None:
            self.on_evicted()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()
        self.transport = LOST  # freed now, not by the cycle collector (limits.LOST)

    def data_received(self, data: bytes) -> None:
        if self.on_lost is not None:
            return  # a stream holds the connection; nothing more is read on it
        try:
            self.reader.feed(data)
        except ProtocolError as e:
            if self.transport is not None:
                self.transport.write(error_response(e.status, e.reason, close=True))
                close_soon(self.transport)

    def idle_for(self, now: float) -> float:
        """Seconds (time.monotonic) since this connection last had a request answered;
        0 while a streaming page holds it. The data plane closes one idle too long:
        its connections are capped, and clients that opened them and send nothing
        would otherwise keep every readiness probe out."""
        return 0.0 if self.on_lost is not None else now - self.answered_at

    def answered(self) -> None:
        """An answer went to the transport: idle from now on (`idle_for`), and no longer
        held by a page that answers it itself (the aggregated /metrics of --workers)."""
        self.on_lost = None
        self.answered_at = time.monotonic()

    def sent_all(self) -> bool:
        """Whether nothing of an answer waits in the transport for the client to read."""
        transport = self.transport
        return transport is None or transport.get_write_buffer_size() == 0

    def request_head(self, head: RequestHead) -> None:
        self.head = head

    def request_body(self, data: bytes) -> None:
        pass

    def request_upgrade(self, data: bytes) -> None:
        pass  # no tunnels here: the request is answered as a plain one

    def request_end(self, trailers: Headers | None) -> None:
        head = self.head
        transport = self.transport
        if head is None or transport is None or transport.is_closing():
            return
        path = head.target.split(b"?", 1)[0]
        if self.streams is not None and head.method == b"GET":
            try:
                self.on_lost = self.streams(self, head)
            except Exception:
                log.exception("admin stream %s failed", path.decode("latin-1"))
                transport.abort()
                return
            if self.on_lost is not None or transport.is_closing():
                return
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
        self.answered()
        if close:
            close_soon(transport)


def json_page(data: object) -> Page:
    return 200, "application/json", json.dumps(data, indent=2, sort_keys=True, default=str).encode()
