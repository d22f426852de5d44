"""What one client or peer may cost the proxy: the limits, in one place.

HTTP/1.1 (proxy.http1) and HTTP/2 (proxy.http2) share the header limits. A request
over a limit is refused with a reason (`gossamer-error`), never served half-way.
"""

from __future__ import annotations

from typing import Final

# ---- requests ------------------------------------------------------------------------

# Header fields in one request head (and, apart, in its trailers): over it, 431.
# Envoy's max_headers_count default; a head is also capped at MAX_HEAD_SIZE bytes.
MAX_HEADERS: Final = 100
MAX_HEAD_SIZE: Final = 64 * 1024
