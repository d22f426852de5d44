"""A workload's new private key and CSR, made where `cryptography` is already loaded.

The proxy reads certificates with the standard library (identity.der) and so never
loads `cryptography`, whose native code would add about 9 MB to every proxy's memory
(decision 0005). It still needs a new key and CSR at join and at each renewal: a few
times a day. Those are made in a short-lived child process (`python -m
gossamer.identity.csr`), which costs a fraction of a second each time; the key reaches
the proxy through a pipe and never touches a disk. A process that has loaded
`cryptography` anyway (the control plane, tests) makes them in-process.
"""

from __future__ import annotations

import asyncio
import json
import sys

from gossamer.errors import IdentityError
from gossamer.identity.spiffe import SpiffeId

TIMEOUT = 30.0


async def new_key_and_csr(identity: SpiffeId) -> tuple[bytes, bytes]:
    """(private key PEM, CSR PEM) for `identity`; IdentityError says why not."""
    if "cryptography" in sys.modules:
        from gossamer.identity.csr import generate_private_key, make_csr

        key = generate_private_key()
        return key, make_csr(key, identity)
    return await new_key_and_csr_in_child(identity)


async def new_key_and_csr_in_child(identity: SpiffeId) -> tuple[bytes, bytes]:
    """`new_key_and_csr`, always in a child process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gossamer.identity.csr",
        str(identity),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise IdentityError(f"making a key and CSR took longer than {TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        detail = err.decode("utf-8", "replace").strip()[-500:] or f"exit status {proc.returncode}"
        raise IdentityError(f"making a key and CSR failed: {detail}")
    try:
        made = json.loads(out)
        return made["key"].encode(), made["csr"].encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IdentityError("making a key and CSR failed: unreadable output") from None
