"""Keep the TLS read buffer off mmap: glibc malloc thresholds for the data plane.

uvloop reads each TLS record's plaintext with ``SSLObject.read(256 KiB)`` (its
``SSL_READ_MAX_SIZE``): CPython allocates a 256 KiB bytes object and shrinks it to the
few hundred bytes read. With glibc's default threshold (128 KiB, raised only when an
mmapped block that big is freed, which a shrunk one never is) every such allocation is
an ``mmap``, its shrink an ``mremap`` and its free a ``munmap``, with a page fault
between: three system calls and a fault per record read, about 20 us of a proxy's CPU
per proxied HTTP/1.1 request (decision 0103). Whether a process pays that depended on
its history: glibc raises the threshold by itself once a large mmapped block is freed
whole, which a `gossamer proxy`'s start-up happens to do. Raising the mmap threshold
above 256 KiB here serves the buffer from the heap in every data plane, and raising the
trim threshold keeps the heap from being given back to the kernel after each shrink,
and asked for again at the next read.

Only glibc has ``mallopt`` with these parameters; elsewhere (musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

log = logging.getLogger("gossamer.proxy")

# glibc's malloc.h.
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
# Above uvloop's 256 KiB read (plus malloc's and the bytes object's headers).
MMAP_THRESHOLD: Final = 512 * 1024
# Free memory at the heap's top kept rather than returned: a few read buffers' worth.
TRIM_THRESHOLD: Final = 2 * 1024 * 1024

_done = False


def keep_tls_reads_on_heap() -> bool:
    """Set glibc's thresholds for this process (once); False where it could not."""
    global _done
    if _done:
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt here: TLS read buffers stay where malloc puts them")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if not (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ):
        log.debug("mallopt refused the thresholds: TLS read buffers stay on mmap")
        return False
    _done = True
    return True
