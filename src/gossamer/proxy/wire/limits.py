"""What one client or peer may cost the proxy: the limits, in one place.

HTTP/1.1 (proxy.wire.http1) and HTTP/2 (proxy.wire.http2) share the header limits; the inbound
accept loop (proxy.wire.acceptor) and the data plane apply the connection limits. A
request or connection over a limit is refused with a reason (`gossamer-error`, or a
log line at most once a second) and counted, never served half-way.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Final, cast

log = logging.getLogger("gossamer.proxy")

# ---- requests ------------------------------------------------------------------------

# Header fields in one request head (and, apart, in its trailers): over it, 431.
# Envoy's max_headers_count default; a head is also capped at MAX_HEAD_SIZE bytes.
MAX_HEADERS: Final = 100
MAX_HEAD_SIZE: Final = 64 * 1024
# Times a request a peer refused unprocessed (an HTTP/2 REFUSED_STREAM, or a stream past
# its GOAWAY's last stream id) is sent again, whatever the retry policy: a draining peer
# refuses what crossed its GOAWAY and the next connection takes it; a peer that refuses
# every time is not asked for ever.
REFUSED_RETRIES: Final = 2
# A request whose body is at most this long is kept whole to be sent again (a retry, a
# mirror, a refused stream), HTTP/1.1 and HTTP/2 alike: Linkerd's 64 KiB.
REPLAY_LIMIT: Final = 64 * 1024
# How a peer refused a request it did not process (http2.StreamPair.refused).
NOT_REFUSED: Final = 0
GOAWAY_REFUSED: Final = 1  # past its GOAWAY's last stream id: another connection takes it
STREAM_REFUSED: Final = 2  # REFUSED_STREAM: the peer is at its limit of streams in flight

# ---- connections ---------------------------------------------------------------------

# Seconds a connection this proxy closed may go without the client taking any of what
# is still on its way to it (a GOAWAY, the end of a response, a TLS close_notify); then
# it is aborted. A client that reads nothing would otherwise hold its socket and buffers
# for good (or, over TLS, for uvloop's 30 s shutdown timeout); one that reads slowly
# restarts the clock each time it takes some (Envoy's `delayed_close_timeout`, and its
# default).
DELAYED_CLOSE: Final = 1.0


class _Lost:
    """What a protocol holds in place of its transport once its connection is lost.

    A protocol and what it serves (readers, exchanges, streams) refer to each other, so
    a closed connection's objects are freed by the cycle collector, not when the last
    reference goes, and the proxy collects its old generations rarely (cli/proxy.py).
    A transport kept by them kept its TLS state too (uvloop's SSLProtocol, OpenSSL's
    buffers: about 60 KiB a connection) until then: a proxy whose peers reconnected
    grew by that much per connection. Letting the transport go when the connection is
    lost frees it at once; a late call on it does nothing, as on a closed transport.
    """

    __slots__ = ()

    def is_closing(self) -> bool:
        return True

    def write(self, data: Any) -> None:
        pass

    def writelines(self, data: Any) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_protocol(self, protocol: Any) -> None:
        pass


# The transport of every lost connection (`_Lost`).
LOST: Final = cast(asyncio.Transport, _Lost())


def close_soon(transport: asyncio.Transport) -> None:
    """Close `transport` once what is buffered is written; abort it if the client takes
    none of it for DELAYED_CLOSE.

    What the client took is read from the kernel (TCP_INFO's bytes acknowledged), not
    from the transport's buffer: over TLS that buffer holds only what the TLS layer has
    not yet handed to the socket's transport, and is empty while the socket's is full."""
    sock = transport.get_extra_info("socket")
    transport.close()
    if sock is None or (taken := _taken(transport, sock)) is None:
        return
    asyncio.get_running_loop().call_later(DELAYED_CLOSE, _unless_taking, transport, sock, taken)


def keep_open_at_eof(transport: asyncio.Transport | None) -> bool:
    """What `eof_received` returns when the protocol closes its connection itself
    (close_soon): True, so that a TCP transport does not close on its own, which would
    wait for ever on a client that reads nothing of what is buffered for it. Over TLS the
    transport shuts down whatever is returned, and True would only have asyncio log a
    warning for every connection a peer closes. Asked before the protocol closes."""
    return transport is not None and transport.get_extra_info("ssl_object") is None


def _taken(transport: asyncio.Transport, sock: Any) -> int | None:
    """How much of what was sent the client has taken so far (TCP: bytes acknowledged;
    another socket: less what is left in the buffer), or None once the socket is gone."""
    if sock.fileno() == -1:
        return None
    try:
        return int(struct.unpack_from("Q", sock.getsockopt(*_TCP_INFO), _BYTES_ACKED)[0])
    except (OSError, struct.error):
        return -transport.get_write_buffer_size()


def taken(transport: asyncio.Transport) -> int:
    """How much of what was sent on `transport` its client has taken so far (`_taken`;
    -1 once the socket is gone): compared over time, whether it still reads."""
    sock = transport.get_extra_info("socket")
    got = None if sock is None else _taken(transport, sock)
    return -1 if got is None else got


def _unless_taking(transport: asyncio.Transport, sock: Any, before: int) -> None:
    taken = _taken(transport, sock)
    if taken is None:
        return  # closed
    if taken > before:
        asyncio.get_running_loop().call_later(DELAYED_CLOSE, _unless_taking, transport, sock, taken)
    else:
        transport.abort()


# getsockopt arguments for Linux's struct tcp_info, and where in it tcpi_bytes_acked
# (a u64, since Linux 4.1) is.
_TCP_INFO: Final = (socket.IPPROTO_TCP, getattr(socket, "TCP_INFO", 11), 256)
_BYTES_ACKED: Final = 120


# Seconds from accept to a finished TLS handshake on the inbound listener, the wait
# for the first byte included. A client that has not finished by then is closed.
HANDSHAKE_TIMEOUT: Final = 10.0
# Inbound connections accepted and not yet through the TLS handshake (or, in
# PERMISSIVE mode, not yet past their first byte). Beyond it new ones are closed at
# once: an unauthenticated client can hold at most this many.
MAX_HANDSHAKES: Final = 1000
# Connections to the admin listener (/ready, /metrics, /tap) open at once.
MAX_ADMIN_CONNECTIONS: Final = 64


class LimitedLog:
    """At most one line per reason per second; the rest are counted into the next (a
    peer that can cause a line per frame or per connection cannot flood the log)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, reason: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -1.0) < 1.0:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        if len(self._last) > 256:
            self._last.clear()
        self._last[reason] = now
        more = self._suppressed.pop(reason, 0)
        if more:
            message += f" (and {more} more like it)"
        log.warning(message, *args)


def downstream_fd_ceiling(fd_limit: int) -> int:
    """Descriptor numbers from here up are not used for accepted connections (the
    outbound, inbound and TCP listeners): a quarter of RLIMIT_NOFILE stays free for
    connections to peers and the app, the admin listener and files."""
    return fd_limit - max(fd_limit // 4, 16)


def upstream_fd_ceiling(fd_limit: int) -> int:
    """Descriptor numbers from here up are not used for connections to peers or the
    app: the last sixteenth of RLIMIT_NOFILE is the admin listener's."""
    return fd_limit - max(fd_limit // 16, 8)


# ---- requests in flight --------------------------------------------------------------

# Seconds between two log lines about requests refused over an `InFlight` cap.
IN_FLIGHT_LOG_INTERVAL: Final = 1.0


class InFlight:
    """A cap on the requests one data plane carries at once: HTTP/1.1 exchanges
    (pipelined ones waiting their turn included) and HTTP/2 streams, from clients and
    from the app alike. Over it a new request is refused before it is routed: HTTP/1.1
    with a 503 (`gossamer-error` says why), HTTP/2 with RST_STREAM REFUSED_STREAM, which
    tells the client the request was not processed and may be sent again (RFC 9113 8.7;
    gRPC clients retry it transparently). A host proxy gives each workload one, so one
    workload's load cannot hold the requests of the others (gossamer.host.fairness).

    `take` admits a request (False: refuse it); whoever took a place gives it back once,
    when the request ends, however it ends (Exchange._end, StreamPair.finish)."""

    __slots__ = ("_logged", "count", "limit", "refused", "who")

    def __init__(self, limit: int, who: Callable[[], str]) -> None:
        """`who` names what is capped, in log lines and refusals ("workload shop/a")."""
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1, got {limit}")
        self.limit = limit
        self.who = who
        self.count = 0
        self.refused = 0
        self._logged = float("-inf")

    def take(self) -> bool:
        if self.count < self.limit:
            self.count += 1
            return True
        self.refused += 1
        now = time.monotonic()
        if now - self._logged >= IN_FLIGHT_LOG_INTERVAL:
            self._logged = now
            log.warning(
                "refused a request: %s (refused so far: %d)",
                self.reason,
                self.refused,
            )
        return False

    def give(self) -> None:
        self.count -= 1

    @property
    def reason(self) -> str:
        return f"{self.who()} has {self.limit} requests in flight, its cap on this proxy"

    def dump(self) -> dict[str, Any]:
        return {"maxInFlight": self.limit, "inFlight": self.count, "refused": self.refused}
