"""Protocol detection: what a connection carries, told from its first bytes.

Where nothing names the protocol (a TCP upstream's listener, plaintext inbound in
PERMISSIVE mode, an mTLS client that offered no ALPN), the proxy reads the first bytes
and decides:

- the HTTP/2 connection preface (``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``) → HTTP/2;
- a plausible HTTP/1.x request line (a token method, a space, a target, a space,
  ``HTTP/1.``) → HTTP/1.1;
- anything else, or nothing within the detection timeout → opaque TCP.

A declared appProtocol skips all of this (`kind_for`): ``tcp`` is carried opaquely at
once, without waiting for a byte, which is what a server-speaks-first protocol (MySQL,
SMTP) needs; ``http`` and the HTTP/2 names go straight to their handler.

`classify` is sans-IO. `Sniffer` is the thin asyncio adapter: it holds the bytes it
read, and hands the transport and those bytes (never lost) to whatever carries the
connection once the kind is known. See docs/decisions/0042-protocol-detection.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Literal, cast

from gossamer.proxy.wire.http2 import H2_APP_PROTOCOLS, PREFACE
from gossamer.proxy.wire.limits import LOST

log = logging.getLogger("gossamer.proxy")

Kind = Literal["http/1.1", "h2", "opaque"]
HTTP1: Final[Kind] = "http/1.1"
HTTP2: Final[Kind] = "h2"
OPAQUE: Final[Kind] = "opaque"

# How long a connection may stay silent before it is taken for opaque TCP. A client
# of HTTP sends its request as soon as it connects; one that waits is most likely
# waiting for a server that speaks first. See decision 0042 for why 3 s.
DEFAULT_DETECT_TIMEOUT: Final = 3.0
# Bytes held while undecided. RFC 9112 section 3 asks for request lines of at least
# 8000 octets to be accepted; a longer undecided start is taken for opaque bytes.
MAX_SNIFF: Final = 16 * 1024
_MAX_METHOD: Final = 32

# appProtocol values that say what follows, so nothing is read to find out. Beside
# `tcp` (and `opaque`), protocols carried as bytes by the mesh: TLS end to end, and
# the server-speaks-first databases Istio lists.
OPAQUE_APP_PROTOCOLS: Final = frozenset(
    ("tcp", "opaque", "tls", "https", "kubernetes.io/wss", "mysql", "mongo", "redis")
)
HTTP1_APP_PROTOCOLS: Final = frozenset(("http", "kubernetes.io/ws"))

_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# A request target: visible ASCII, and bytes above 0x7f (llhttp lets those through).
_TARGET: Final = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
_VERSION: Final = b" HTTP/1."


def kind_for(app_protocol: str | None) -> Kind | None:
    """What a declared appProtocol says follows; None when it says nothing (detect)."""
    if not app_protocol:
        return None
    name = app_protocol.lower()
    if name in OPAQUE_APP_PROTOCOLS:
        return OPAQUE
    if name in HTTP1_APP_PROTOCOLS:
        return HTTP1
    if name in H2_APP_PROTOCOLS:
        return HTTP2
    return None


def classify(data: bytes) -> Kind | None:
    """The protocol `data`, a connection's first bytes, begins; None: more are needed.

    Each call looks at all of `data` (the bytes so far), in C-speed byte operations,
    and at most `MAX_SNIFF` of them are ever held, so a client sending one byte at a
    time costs little.
    """
    if not data:
        return None
    n = min(len(data), len(PREFACE))
    if data[:n] == PREFACE[:n]:
        return HTTP2 if n == len(PREFACE) else None
    kind = _request_line(data.lstrip(b"\r\n"))  # empty lines may precede a request
    if kind is None and len(data) >= MAX_SNIFF:
        return OPAQUE
    return kind


def _request_line(data: bytes) -> Kind | None:
    if not data:
        return None
    method_end = data.find(b" ", 0, _MAX_METHOD + 1)
    if method_end < 0:
        if len(data) > _MAX_METHOD or data.translate(None, _TCHAR):
            return OPAQUE
        return None
    if method_end == 0 or data[:method_end].translate(None, _TCHAR):
        return OPAQUE
    target_end = data.find(b" ", method_end + 1)
    target = data[method_end + 1 : target_end if target_end >= 0 else len(data)]
    if target.translate(None, _TARGET):
        return OPAQUE
    if target_end < 0:
        return None
    if not target:
        return OPAQUE
    version = data[target_end : target_end + len(_VERSION)]
    if version != _VERSION[: len(version)]:
        return OPAQUE
    return HTTP1 if len(version) == len(_VERSION) else None


TakeOver = Callable[[asyncio.Transport, Kind], asyncio.Protocol | None]
"""Hands a transport to the protocol that carries `Kind`: sets it on the transport,
calls its connection_made, and returns it (None: the connection was refused, and
closed). The sniffer then replays the bytes it read into it."""


class Sniffer(asyncio.Protocol):
    """A connection's protocol until what it carries is known.

    `known` skips detection (a declared appProtocol). A sniffer made not `ready` only
    collects bytes (reading pauses at `MAX_SNIFF`) until `start`, for a listener
    that must first look up what the connection is for; the detection timeout runs
    from the accept all the same. Not ready, it keeps a half-closed connection open,
    so it must only be used so on plain TCP (TLS has no half-close in asyncio).
    """

    __slots__ = (
        "chunks",
        "decided",
        "eof",
        "known",
        "loop",
        "lost",
        "paused",
        "ready",
        "registry",
        "size",
        "take_over",
        "timed_out",
        "timeout",
        "timer",
        "transport",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        take_over: TakeOver,
        *,
        known: Kind | None = None,
        ready: bool = True,
        registry: set[Sniffer] | None = None,
    ) -> None:
        self.loop = loop
        self.timeout = timeout
        self.take_over = take_over
        self.known = known
        self.ready = ready
        self.registry = registry  # undecided connections, so the data plane can close them
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        self.eof = False
        self.timed_out = False
        self.lost = False
        self.paused = False
        self.decided = False

    # ---- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        if self.ready and self.known is not None:
            self._hand_over(self.known)
            return
        if self.registry is not None:
            self.registry.add(self)
        self.timer = self.loop.call_later(self.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self.decided:
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.ready:
            self._decide()
        elif self.size >= MAX_SNIFF and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.eof = True
        if not self.ready:
            return True  # see the class docstring: plain TCP only
        return self._decide()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._forget()
        self.transport = LOST  # freed now, not by the cycle collector (limits.LOST)

    # ---- deciding ----------------------------------------------------------------------

    def start(self, known: Kind | None) -> None:
        """Detect now (or take `known` as said): for a sniffer made not ready."""
        self.ready = True
        self.known = known
        if self.lost or self.decided:
            return
        keep_open = self._decide()
        if self.decided and self.eof and not keep_open and self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """Close an undecided connection (no route for it, or the proxy stopping)."""
        self._forget()
        if self.transport is not None:
            self.transport.close()

    def _timed_out(self) -> None:
        self.timer = None
        self.timed_out = True
        if self.ready and not self.decided:
            keep_open = self._decide()
            if self.decided and self.eof and not keep_open and self.transport is not None:
                self.transport.close()

    def _decide(self) -> bool | None:
        """Hand the connection over if its kind is known by now; what the new protocol's
        eof_received said, when the client has already closed its side."""
        kind = self.known
        if kind is None:
            data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
            self.chunks = [data] if data else []
            kind = classify(data)
            if kind is None and (self.eof or self.timed_out):
                kind = OPAQUE
            if kind is None:
                return True
        return self._hand_over(kind)

    def _hand_over(self, kind: Kind) -> bool | None:
        self.decided = True
        self._forget()
        transport = self.transport
        assert transport is not None
        if self.paused:
            self.paused = False
            transport.resume_reading()
        data = b"".join(self.chunks)
        self.chunks = []
        proto = self.take_over(transport, kind)
        if proto is None:
            return False
        if data:
            proto.data_received(data)
        if self.eof:
            return proto.eof_received()
        return None

    def _forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.registry is not None:
            self.registry.discard(self)
