"""What one client or peer may cost the proxy: the limits, in one place.

HTTP/1.1 (proxy.wire.http1) and HTTP/2 (proxy.wire.http2) share the header limits; the inbound
accept loop (proxy.wire.acceptor) and the data plane apply the connection limits. A
request or connection over a limit is refused with a reason (`gossamer-error`, or a
log line at most once a second) and counted, never served half-way.
"""

from __future__ import annotations

from typing import Final

# ---- requests ------------------------------------------------------------------------

# Header fields in one request head (and, apart, in its trailers): over it, 431.
# Envoy's max_headers_count default; a head is also capped at MAX_HEAD_SIZE bytes.
MAX_HEADERS: Final = 100
MAX_HEAD_SIZE: Final = 64 * 1024

# ---- connections ---------------------------------------------------------------------

# Seconds from accept to a finished TLS handshake on the inbound listener, the wait
# for the first byte included. A client that has not finished by then is closed.
HANDSHAKE_TIMEOUT: Final = 10.0
# Inbound connections accepted and not yet through the TLS handshake (or, in
# PERMISSIVE mode, not yet past their first byte). Beyond it new ones are closed at
# once: an unauthenticated client can hold at most this many.
MAX_HANDSHAKES: Final = 1000
# Connections to the admin listener (/ready, /metrics, /tap) open at once.
MAX_ADMIN_CONNECTIONS: Final = 64


def downstream_fd_ceiling(fd_limit: int) -> int:
    """Descriptor numbers from here up are not used for accepted connections (the
    outbound, inbound and TCP listeners): a quarter of RLIMIT_NOFILE stays free for
    connections to peers and the app, the admin listener and files."""
    return fd_limit - max(fd_limit // 4, 16)


def upstream_fd_ceiling(fd_limit: int) -> int:
    """Descriptor numbers from here up are not used for connections to peers or the
    app: the last sixteenth of RLIMIT_NOFILE is the admin listener's."""
    return fd_limit - max(fd_limit // 16, 8)
