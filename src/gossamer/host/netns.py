"""A workload's network namespace, entered by a thread of the host proxy.

A workload in a network namespace of its own (a pod) has its data plane run on a thread
that entered that namespace (setns(2), as Istio ambient's ztunnel does in-pod), with an
event loop of its own: every socket that data plane opens, its listeners, its
connections to the app on the namespace's loopback, to peers and to the control plane,
is the workload's, in the workload's namespace, as its sidecar's would be. So capture
(iptables REDIRECT, SO_ORIGINAL_DST) works there unchanged, and a connection belongs to
the workload whose namespace it is in (docs/decisions/0065).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import threading
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

CLONE_NEWNET: Final = 0x40000000
T = TypeVar("T")


# ioctl(2) on a namespace file: the CLONE_NEW* type of the namespace (Linux 4.11+).
NS_GET_NSTYPE: Final = 0xB703


def open_namespace(path: str) -> int:
    """A descriptor of the network namespace file `path` (/run/netns/NAME,
    /proc/PID/ns/net); OSError, saying why, if it is not one. Opened O_NONBLOCK, so a
    path that is a FIFO cannot stop the caller's event loop."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        check_namespace(fd, path)
    except OSError:
        os.close(fd)
        raise
    return fd


def check_namespace(fd: int, what: str) -> None:
    """Raise OSError, saying why, unless `fd` refers to a network namespace (a
    descriptor passed by a registrant may be anything)."""
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as err:
        raise OSError(err.errno, f"{what} is not a namespace file") from None
    if kind != CLONE_NEWNET:
        raise OSError(errno.EINVAL, f"{what} is a namespace, but not a network namespace")


def same_namespace(fd: int) -> bool:
    """Whether the namespace file `fd` is this process's own network namespace."""
    theirs, ours = os.fstat(fd), os.stat("/proc/self/ns/net")
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def enter(fd: int) -> None:
    """Move the calling thread (only it) into the network namespace `fd` refers to."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns into the workload's network namespace: {os.strerror(errno)}")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class NamespaceThread:
    """A thread inside another network namespace, running an event loop of its own."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._started: concurrent.futures.Future[asyncio.AbstractEventLoop] = (
            concurrent.futures.Future()
        )
        self._thread = threading.Thread(target=self._main, name=f"netns-{name}", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._thread.start()
        self._loop = await asyncio.wrap_future(self._started)

    def _main(self) -> None:
        try:
            enter(self._fd)
            loop = _new_loop()
        except BaseException as err:
            self._started.set_exception(err)
            return
        asyncio.set_event_loop(loop)
        self._started.set_result(loop)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the namespace's loop; its result here."""
        assert self._loop is not None, "start() first"
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def close(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 30)
        os.close(self._fd)
