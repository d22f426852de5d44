"""The inbound listener's accept loop: TLS handshakes that say why they failed, and
plaintext beside TLS in PERMISSIVE mode.

asyncio's own TLS server swallows a failed handshake (it is logged only in debug
mode), so a peer refused for an expired certificate, one from another root, or no
certificate at all would leave no trace. Here each accepted socket is handed to
``loop.connect_accepted_socket`` with the TLS context, which raises the handshake's
error, and that is logged with its reason. After the handshake the connection is the
same uvloop TLS transport and protocol as before: the per-request path is unchanged.

In PERMISSIVE mode the first byte of each connection is peeked (``MSG_PEEK``, so
nothing is consumed): 0x16 opens a TLS handshake record, anything else is taken as
plaintext from outside the mesh and served by the plaintext protocol (which tells
HTTP/1.1, HTTP/2 and opaque TCP apart, see proxy.detect). A client that sends nothing
within the first-byte timeout (a mesh client's ClientHello comes at once) may be
waiting for a server that speaks first: it is handed to the quiet protocol, where
there is one, else closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

log = logging.getLogger("gossamer.proxy")

TLS_HANDSHAKE_RECORD: Final = 0x16
ACCEPTS_PER_WAKE: Final = 64
# How long a PERMISSIVE listener waits for a client's first byte, unless told.
FIRST_BYTE_TIMEOUT: Final = 10.0

_VERIFY_REASONS: Final = {
    "certificate has expired": "the client certificate has expired",
    "certificate is not yet valid": "the client certificate is not valid yet (clock skew?)",
    "unable to get local issuer certificate": "the client certificate does not chain to a "
    "root in this proxy's trust bundle (another CA, or a root rotated out)",
    "self-signed certificate": "the client certificate is self-signed, not from the mesh CA",
    "self-signed certificate in certificate chain": "the client certificate chains to a root "
    "this proxy does not trust",
    "unsuitable certificate purpose": "the client certificate may not be used by a TLS client",
}
_SSL_REASONS: Final = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client presented no certificate (mTLS required)",
    "HTTP_REQUEST": "plaintext HTTP, not TLS (mTLS mode is STRICT)",
    "WRONG_VERSION_NUMBER": "not a TLS handshake (mTLS mode is STRICT)",
    "UNSUPPORTED_PROTOCOL": "the client does not offer TLS 1.3",
    "NO_SHARED_CIPHER": "no cipher in common with the client",
}


def refusal_reason(err: BaseException) -> str:
    """Why a TLS handshake failed, in the mesh's words."""
    reason = getattr(err, "reason", None) or ""  # absent on an SSLError made by hand
    if isinstance(err, ssl.SSLCertVerificationError):
        message = getattr(err, "verify_message", None) or reason or str(err)
        return _VERIFY_REASONS.get(message, f"the client certificate did not verify: {message}")
    if isinstance(err, ssl.SSLError):
        return _SSL_REASONS.get(reason, f"TLS error {reason or err}")
    if isinstance(err, TimeoutError):
        return "no TLS handshake in time"
    return f"{type(err).__name__}: {err}"


class _LimitedLog:
    """At most one line per reason per second; the rest are counted into the next."""

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


class InboundAcceptor:
    """Accepts connections on the inbound socket and starts TLS (or plaintext) on them."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        *,
        tls_factory: Callable[[], asyncio.Protocol],
        plain_factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        handshake_timeout: float,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        quiet_factory: Callable[[], asyncio.Protocol] | None = None,
        first_byte_timeout: float = FIRST_BYTE_TIMEOUT,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.tls_factory = tls_factory
        self.plain_factory = plain_factory
        self.quiet_factory = quiet_factory
        self.first_byte_timeout = first_byte_timeout
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.spawn = spawn
        # Set from the snapshot's mTLS mode; read once per accepted connection.
        self.permissive = False
        self._sniffing: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}
        self._refusals = _LimitedLog()
        self._closed = False

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        for fd, (conn, timer) in list(self._sniffing.items()):
            timer.cancel()
            self.loop.remove_reader(fd)
            conn.close()
        self._sniffing.clear()

    # ---- accepting -------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as err:
                # Out of file descriptors and the like: stop accepting for a moment
                # rather than spin on a listener that stays readable.
                log.error("inbound accept failed: %s; pausing accepts for 1s", err)
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(1.0, self._resume)
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.permissive:
                self._sniff(conn, addr)
            else:
                self.spawn(self._tls(conn, addr))

    def _resume(self) -> None:
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _sniff(self, conn: socket.socket, addr: Any) -> None:
        fd = conn.fileno()
        timer = self.loop.call_later(self.first_byte_timeout, self._sniff_timeout, fd)
        self._sniffing[fd] = (conn, timer)
        self.loop.add_reader(fd, self._first_byte, fd, addr)

    def _sniff_timeout(self, fd: int) -> None:
        entry = self._sniffing.pop(fd, None)
        if entry is None:
            return
        self.loop.remove_reader(fd)
        if self.quiet_factory is None:
            entry[0].close()
        else:
            self.spawn(self._plain(entry[0], self.quiet_factory))

    def _first_byte(self, fd: int, addr: Any) -> None:
        entry = self._sniffing.pop(fd, None)
        self.loop.remove_reader(fd)
        if entry is None:
            return
        conn, timer = entry
        timer.cancel()
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except OSError:
            conn.close()
            return
        if not first:  # closed before saying anything
            conn.close()
        elif first[0] == TLS_HANDSHAKE_RECORD:
            self.spawn(self._tls(conn, addr))
        else:
            self.spawn(self._plain(conn, self.plain_factory))

    async def _tls(self, conn: socket.socket, addr: Any) -> None:
        try:
            await self.loop.connect_accepted_socket(
                self.tls_factory,
                conn,
                ssl=self.context,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as err:
            log.debug("inbound from %s: closed during the TLS handshake (%s)", _who(addr), err)
        except (ssl.SSLError, TimeoutError) as err:
            reason = refusal_reason(err)
            self._refusals.warning(
                reason, "inbound from %s: refused the TLS handshake: %s", _who(addr), reason
            )
        except OSError as err:
            log.debug("inbound from %s: %s", _who(addr), err)
        else:
            return
        # A failed handshake closes the socket with its transport (fileno() is then
        # -1); an error before there was a transport leaves it open.
        conn.close()

    async def _plain(self, conn: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        try:
            await self.loop.connect_accepted_socket(factory, conn)
        except OSError as err:
            log.debug("plaintext inbound connection failed: %s", err)
            conn.close()


def _who(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)
