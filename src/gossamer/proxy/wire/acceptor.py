"""The inbound listener's accept loop: TLS handshakes that say why they failed,
plaintext beside TLS in PERMISSIVE mode, and what an unauthenticated connection may
cost.

asyncio's own TLS server swallows a failed handshake (it is logged only in debug
mode), so a peer refused for an expired certificate, one from another root, or no
certificate at all would leave no trace. Here each accepted socket is handed to
``loop.connect_accepted_socket`` with the TLS context, which raises the handshake's
error, and that is logged with its reason. After the handshake the connection is the
same uvloop TLS transport and protocol as before: the per-request path is unchanged.

Until its first byte arrives a connection is only a socket the loop watches: its TLS
state (OpenSSL's buffers and uvloop's protocol, about 45 KB) is made when the first
byte arrives, not at accept, so idle connections cost almost nothing. The first byte
is peeked (``MSG_PEEK``, so nothing is consumed): 0x16 opens a TLS handshake record;
in PERMISSIVE mode anything else is taken as plaintext from outside the mesh and
served by the plaintext protocol (which tells HTTP/1.1, HTTP/2 and opaque TCP apart,
see proxy.wire.detect), and a client that sends nothing within the first-byte timeout (a
mesh client's ClientHello comes at once) may be waiting for a server that speaks
first: it is handed to the quiet protocol, where there is one, else closed. In
STRICT mode anything but TLS fails the handshake and is logged as such.

A connection has `handshake_timeout` from accept to a finished handshake, the wait
for its first byte included, and at most `max_handshakes` may be at it at once:
beyond that new connections are closed at accept, counted and logged at most once a
second (proxy.wire.limits). `FdBudget` keeps accepted connections from taking the file
descriptors the proxy needs for its peers, its app and its admin listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast

from gossamer.proxy.wire.limits import (
    HANDSHAKE_TIMEOUT,
    MAX_HANDSHAKES,
    LimitedLog,
    downstream_fd_ceiling,
    upstream_fd_ceiling,
)

log = logging.getLogger("gossamer.proxy")

TLS_HANDSHAKE_RECORD: Final = 0x16
ACCEPTS_PER_WAKE: Final = 64
# How long a PERMISSIVE listener waits for a client's first byte, unless told.
FIRST_BYTE_TIMEOUT: Final = 10.0
# RLIMIT_NOFILE may be "unlimited"; descriptors are counted up to this then.
_FD_LIMIT_CAP: Final = 1 << 20
_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

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


def fd_limit() -> int:
    """This process's RLIMIT_NOFILE (the soft limit: what open() and accept() meet)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _FD_LIMIT_CAP if soft < 0 or soft > _FD_LIMIT_CAP else soft


class FdBudget:
    """Which file descriptors accepted connections and upstream connections may use.

    A socket always gets the lowest free descriptor, so a new connection's descriptor
    number says how many are in use below it. One accepted at or above `downstream`
    means the process is near RLIMIT_NOFILE: it is closed at once (counted, logged at
    most once a second) instead of served. Connections to peers and the app may go on
    up to `upstream`, and what is left above is the admin listener's: a local client
    opening connections until accept() fails cannot take /ready with it, nor leave the
    proxy unable to reach the app for the connections it already has.
    """

    def __init__(self, limit: int) -> None:
        self.limit = self.downstream = self.upstream = 0
        self.set_limit(limit)
        self.refused: dict[str, int] = {}  # accepted connections closed, by listener
        self.upstream_refused = 0
        self._log = LimitedLog()

    def set_limit(self, limit: int) -> None:
        """Budget for `limit` descriptors (RLIMIT_NOFILE may be raised while running)."""
        if limit != self.limit:
            self.limit = limit
            self.downstream = downstream_fd_ceiling(limit)
            self.upstream = upstream_fd_ceiling(limit)

    def admit(self, fd: int, listener: str) -> bool:
        """Whether a connection accepted on `listener` with descriptor `fd` may stay."""
        if fd < self.downstream:
            return True
        self.refused[listener] = self.refused.get(listener, 0) + 1
        self._log.warning(
            "fd " + listener,
            "%s listener: refused a connection: file descriptor %d of RLIMIT_NOFILE %d; "
            "descriptors from %d up are kept for connections to peers, the app and the "
            "admin listener (raise the limit with ulimit -n)",
            listener,
            fd,
            self.limit,
            self.downstream,
        )
        return False

    def upstream_ok(self, transport: asyncio.BaseTransport) -> bool:
        """Whether a new connection to a peer or the app may stay (else: close it)."""
        if _fileno(transport) < self.upstream:
            return True
        self.upstream_refused += 1
        return False

    def upstream_refusal(self, where: str) -> str:
        return (
            f"connect to {where} refused by this proxy: file descriptors nearly exhausted "
            f"(RLIMIT_NOFILE {self.limit}; the last {self.limit - self.upstream} are kept "
            "for the admin listener)"
        )

    def guard(
        self, factory: Callable[[], asyncio.Protocol], listener: str
    ) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` that closes connections this
        budget refuses before `factory` makes anything for them."""
        return lambda: _Guard(self, factory, listener)


class _Guard(asyncio.Protocol):
    """Stands in for a listener's protocol until the connection's descriptor is seen."""

    __slots__ = ("budget", "factory", "listener")

    def __init__(
        self, budget: FdBudget, factory: Callable[[], asyncio.Protocol], listener: str
    ) -> None:
        self.budget = budget
        self.factory = factory
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.budget.admit(_fileno(transport), self.listener):
            cast(asyncio.Transport, transport).abort()
            return
        protocol = self.factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def _refuse(conn: socket.socket) -> None:
    """Close a connection refused at accept with a reset: no TIME_WAIT kept for it."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    conn.close()


def _fileno(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    return int(sock.fileno()) if sock is not None else -1


class InboundAcceptor:
    """Accepts connections on the inbound socket and starts TLS (or plaintext) on them.

    `handshake_timeout`: seconds from accept to a finished TLS handshake, the wait for
    the first byte included. `max_handshakes`: connections accepted and not yet through
    it (or, for plaintext, not yet past their first byte) at once.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        *,
        tls_factory: Callable[[], asyncio.Protocol],
        plain_factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_handshakes: int = MAX_HANDSHAKES,
        quiet_factory: Callable[[], asyncio.Protocol] | None = None,
        first_byte_timeout: float = FIRST_BYTE_TIMEOUT,
        fds: FdBudget | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.tls_factory = tls_factory
        self.plain_factory = plain_factory
        self.quiet_factory = quiet_factory
        self.first_byte_timeout = first_byte_timeout
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.spawn = spawn
        self.fds = fds
        # Another worker's inbound sockets, accepted on here while it cannot
        # (gossamer.workers); they stay their owner's, never closed here.
        self.also: set[socket.socket] = set()
        self._started = self._paused = False
        # Set from the snapshot's mTLS mode; read once per connection, at its first byte.
        self.permissive = False
        # Connections waiting for their first byte: socket, timer, deadline.
        self._sniffing: dict[int, tuple[socket.socket, asyncio.TimerHandle, float]] = {}
        self._refusals = LimitedLog()
        self._closed = False
        # What the data plane exports (gossamer_inbound_handshakes and friends).
        self.in_handshake = 0  # accepted, not yet through the handshake or first byte
        self.refused_busy = 0  # closed at accept: max_handshakes were in progress
        self.timed_out = 0  # closed: no finished handshake within handshake_timeout
        # Connections that left the handshake phase without being served (refused,
        # timed out, failed, or closed by the client): the data plane gives the heap
        # memory they used back to the system after a burst of them.
        self.abandoned = 0

    def start(self) -> None:
        self._started = True
        for sock in (self.sock, *self.also):
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def accept_also(self, sock: socket.socket) -> None:
        """Accept on `sock` too (a listening socket that stays the caller's)."""
        if sock in self.also:
            return
        self.also.add(sock)
        if self._started and not (self._closed or self._paused):
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def accept_no_more(self, sock: socket.socket) -> None:
        """Stop accepting on a socket given to `accept_also`."""
        if sock in self.also:
            self.also.discard(sock)
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in (self.sock, *self.also):
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
        for fd, (conn, timer, _) in list(self._sniffing.items()):
            timer.cancel()
            self.loop.remove_reader(fd)
            conn.close()
            self.in_handshake -= 1
        self._sniffing.clear()

    # ---- accepting -------------------------------------------------------------------

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as err:
                # Out of file descriptors and the like: stop accepting for a moment
                # rather than spin on a listener that stays readable.
                self._refusals.warning(
                    "accept", "inbound accept failed: %s; pausing accepts for 1s", err
                )
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._paused = True
                    for listening in (self.sock, *self.also):
                        self.loop.remove_reader(listening.fileno())
                    self.loop.call_later(1.0, self._resume)
                return
            if self.fds is not None and not self.fds.admit(conn.fileno(), "inbound"):
                _refuse(conn)
                self.abandoned += 1
                continue
            if self.in_handshake >= self.max_handshakes:
                _refuse(conn)
                self.refused_busy += 1
                self.abandoned += 1
                self._refusals.warning(
                    "busy",
                    "inbound from %s: refused the connection: %d connections are in the TLS "
                    "handshake already (at most %d at once)",
                    _who(addr),
                    self.in_handshake,
                    self.max_handshakes,
                )
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.in_handshake += 1
            self._sniff(conn, addr)

    def _resume(self) -> None:
        self._paused = False
        if not self._closed:
            for sock in (self.sock, *self.also):
                self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _sniff(self, conn: socket.socket, addr: Any) -> None:
        fd = conn.fileno()
        deadline = self.loop.time() + self.handshake_timeout
        quiet = self.quiet_factory if self.permissive else None
        # A quiet plaintext client may be waiting for a server that speaks first: it
        # has the first-byte timeout (protocol detection's), not the handshake's.
        wait = self.first_byte_timeout if quiet is not None else self.handshake_timeout
        timer = self.loop.call_later(wait, self._sniff_timeout, fd, addr, quiet)
        self._sniffing[fd] = (conn, timer, deadline)
        self.loop.add_reader(fd, self._first_byte, fd, addr)

    def _sniff_timeout(
        self, fd: int, addr: Any, quiet: Callable[[], asyncio.Protocol] | None
    ) -> None:
        entry = self._sniffing.pop(fd, None)
        if entry is None:
            return
        self.loop.remove_reader(fd)
        self.in_handshake -= 1
        conn = entry[0]
        if quiet is not None:
            self.spawn(self._plain(conn, quiet))
            return
        conn.close()
        self.timed_out += 1
        self.abandoned += 1
        reason = f"no TLS handshake within {self.handshake_timeout:g}s"
        self._refusals.warning(
            reason, "inbound from %s: refused the TLS handshake: %s", _who(addr), reason
        )

    def _first_byte(self, fd: int, addr: Any) -> None:
        entry = self._sniffing.pop(fd, None)
        self.loop.remove_reader(fd)
        if entry is None:
            return
        conn, timer, deadline = entry
        timer.cancel()
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if not first:  # closed (or reset) before saying anything
            conn.close()
            self.in_handshake -= 1
            self.abandoned += 1
        elif first[0] == TLS_HANDSHAKE_RECORD or not self.permissive:
            # STRICT: anything else fails the handshake at once, and says why.
            self.spawn(self._tls(conn, addr, deadline))
        else:
            self.in_handshake -= 1
            self.spawn(self._plain(conn, self.plain_factory))

    async def _tls(self, conn: socket.socket, addr: Any, deadline: float) -> None:
        try:
            left = deadline - self.loop.time()
            if left <= 0:
                raise TimeoutError
            await self.loop.connect_accepted_socket(
                self.tls_factory,
                conn,
                ssl=self.context,
                ssl_handshake_timeout=left,
            )
        except (TimeoutError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as err:
            # The loop's handshake timeout aborts the connection (ConnectionAbortedError).
            if isinstance(err, TimeoutError) or self.loop.time() >= deadline - 0.05:
                self.timed_out += 1
                reason = f"no TLS handshake within {self.handshake_timeout:g}s"
                self._refusals.warning(
                    reason, "inbound from %s: refused the TLS handshake: %s", _who(addr), reason
                )
            else:
                log.debug("inbound from %s: closed during the TLS handshake (%s)", _who(addr), err)
        except ssl.SSLError as err:
            reason = refusal_reason(err)
            self._refusals.warning(
                reason, "inbound from %s: refused the TLS handshake: %s", _who(addr), reason
            )
        except OSError as err:
            log.debug("inbound from %s: %s", _who(addr), err)
        else:
            return
        finally:
            self.in_handshake -= 1
        # A failed handshake closes the socket with its transport (fileno() is then
        # -1); an error before there was a transport leaves it open.
        conn.close()
        self.abandoned += 1

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
