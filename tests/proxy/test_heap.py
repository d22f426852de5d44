"""The data plane serves uvloop's 256 KiB TLS read buffer from the heap (decision 0103).

Each check runs in a fresh interpreter: malloc's thresholds are process-wide and the
"before" half needs glibc's defaults.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

# How many blocks glibc has mmapped while a 256 KiB bytes object (what SSLObject.read
# allocates for uvloop per record) is alive: 1 with glibc's defaults, 0 on the heap.
SCRIPT = textwrap.dedent(
    """
    import asyncio, ctypes, sys

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2

    def mapped_for_a_read():
        before = libc.mallinfo2().hblks
        buffer = bytearray(256 * 1024)
        during = libc.mallinfo2().hblks
        del buffer
        return during - before

    print(mapped_for_a_read())
    """
)

START_DATAPLANE = """
from gossamer.proxy.dataplane import DataPlane, DataPlaneConfig

async def start_and_close():
    local = ("127.0.0.1", 0)
    dp = DataPlane(
        DataPlaneConfig(outbound=local, inbound=local, admin=local), on_interest=print
    )
    await dp.start()
    await dp.close()

asyncio.run(start_and_close())
"""


def run(start: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT + start + "\nprint(mapped_for_a_read())\n"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [int(line) for line in out.split()]


def test_keep_tls_reads_on_heap_moves_a_read_buffer_off_mmap() -> None:
    start = "from gossamer.proxy.wire.heap import keep_tls_reads_on_heap\n"
    start += "assert keep_tls_reads_on_heap() and keep_tls_reads_on_heap()"
    assert run(start) == [1, 0]


def test_a_started_dataplane_keeps_tls_reads_on_heap() -> None:
    assert run(START_DATAPLANE) == [1, 0]
