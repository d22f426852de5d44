"""The host config file: the workloads an operator registers with `gossamer host --config`.

The second way to register a workload on a host proxy, beside `gossamer run --host-proxy`
(docs/decisions/0106). The file (YAML or JSON, `kind: HostConfiguration`,
gossamer.resources.host) lists workloads; each entry is what `gossamer run --host-proxy`
would register, plus how its connections are told apart on the host (its own network
namespace by path, or its uid on a plain host). The host proxy registers them at start
and, on every reload (SIGHUP, or the file changing), applies the difference: entries
gone or changed stop, new or changed ones start, the others are left alone. A file that
does not validate is rejected whole, and the workloads already served keep serving.

Node authorization is unchanged: each workload's certificate is asked for as the host,
and one the Host object does not allow is refused (logged, with the entry) while the
others are served; it is tried again at the next reload.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossamer.resources.host import (
    MAX_CONFIG_BYTES,
    ConfiguredWorkload,
    HostConfiguration,
    load_host_configuration,
)


def read_regular_file(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `limit` bytes: raises
    OSError otherwise. Never blocks: the host proxy reads it on its event loop, where
    every workload's data plane runs, and a path swapped for a FIFO (or a link to one, or
    to /dev/zero) would stop them all (opened O_NONBLOCK, checked with fstat before any
    read, read to `limit` + 1 at most)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{path} is {info.st_size} bytes, more than {limit}")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"{path} is more than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


Key = tuple[str, str]


@dataclass(frozen=True)
class Plan:
    """What a reload does: which running workloads stop, which entries start."""

    stop: tuple[Key, ...]
    start: tuple[ConfiguredWorkload, ...]
    # Entries whose namespace/name a `gossamer run --host-proxy` registration holds.
    taken: tuple[ConfiguredWorkload, ...] = ()


def plan(
    config: HostConfiguration,
    configured: Mapping[Key, Mapping[str, Any]],
    registered: frozenset[Key] = frozenset(),
) -> Plan:
    """From the file's workloads, those served from the file (`configured`: what each
    was registered with) and those registered over the socket (`registered`): stop what
    the file dropped or changed, start what it adds or changed, leave the rest."""
    wanted = {w.key: w for w in config.workloads}
    stop = tuple(
        key
        for key, raw in configured.items()
        if key not in wanted or dict(raw) != wanted[key].registration()
    )
    start = tuple(
        w
        for key, w in wanted.items()
        if (key not in configured or key in stop) and key not in registered
    )
    taken = tuple(w for key, w in wanted.items() if key in registered)
    return Plan(stop, start, taken)


class ConfigFile:
    """The file, read whole, and whether it changed since it was last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digest: bytes | None = None

    def changed(self) -> bool:
        """Whether the file's contents differ from those last read (a missing or
        unreadable file counts as a change, so the reload says why)."""
        try:
            return hashlib.sha256(read_regular_file(self.path)).digest() != self._digest
        except OSError:
            return self._digest is not None

    def read(self) -> HostConfiguration:
        """The file's configuration; raises InvalidResource naming each bad field, or
        OSError. Either way the file as read now counts as seen."""
        try:
            data = read_regular_file(self.path)
        except OSError:
            self._digest = None
            raise
        self._digest = hashlib.sha256(data).digest()
        return load_host_configuration(data, str(self.path))
