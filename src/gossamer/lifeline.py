"""Every process dies with its supervisor: PR_SET_PDEATHSIG, in one place.

Kept apart from the proxy's modules (only the standard library, imported lazily) so
that `gossamer run`'s resident supervisor can arm its children without loading the
data plane.
"""

from __future__ import annotations

import os
from typing import Final

PR_SET_PDEATHSIG: Final = 1


def die_with_parent(signum: int, parent: int) -> None:
    """Get `signum` when `parent` (this process's parent) dies, even by SIGKILL.

    Linux sends it when the thread that started this process ends: start workers from
    the supervisor's main thread."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above
        os.kill(os.getpid(), signum)
