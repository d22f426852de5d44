"""Hosts for tests: network namespaces joined by veth pairs to one bridge.

    with Network(3) as net:          # three hosts, 198.18.0.1 .. 198.18.0.3
        net.hosts[0].popen("gossamer", "control-plane", ...)
        net.hosts[1].run("curl", "http://198.18.0.1:15000/healthz")
        net.hosts[2].link(up=False)  # the host drops off the network

The bridge lives in a namespace of its own, so the machine's own namespace (its
interfaces, routes and iptables rules) is never touched: every address is one of
198.18.0.0/15 (RFC 2544's benchmarking range) inside these namespaces only.

Every name carries the creating process's id (`gsm<pid>`), so two runs never collide
and a run that crashed is recognised by the next one (`sweep_stale`) and removed.
Teardown ends every process still inside a host namespace (each was started here),
then deletes the namespaces, which takes their veths and the bridge with them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PREFIX = "gsm"
ETC_NETNS = Path("/etc/netns")
SUBNET = "198.18.0"


class NamespacesUnavailable(RuntimeError):
    """This machine cannot create network namespaces (not root, no CAP_NET_ADMIN, no `ip`)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); run the suite as root"
    probe = f"{PREFIX}{os.getpid()}-probe-{uuid.uuid4().hex[:6]}"
    try:
        created = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "the `ip` command (Debian: iproute2) is not installed"
    if created.returncode != 0:
        return f"cannot create a network namespace: {created.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def sweep_stale() -> None:
    """Delete namespaces left by runs whose process is gone (a crashed or killed run)."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ", 1)[0]
        m = re.fullmatch(rf"{PREFIX}(\d+)-.*", name)
        if not m or _alive(int(m.group(1))):
            continue
        _kill_inside(name)
        _ip("netns", "del", name, check=False)
        shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(netns: str) -> None:
    """End every process inside `netns`: all of them were started by this harness."""
    for _ in range(3):
        pids = [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


@dataclass
class Host:
    """One "machine": a network namespace with `eth0` on the bridge and its own loopback."""

    netns: str
    address: str
    port: str  # the veth's bridge end, in the bridge namespace
    bridge_netns: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self, *argv: str, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*argv), input=input, capture_output=True, text=True, timeout=timeout
        )

    def popen(
        self, *argv: str, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process on this host (`ip netns exec` execs it: the pid is its own),
        its output to `log`. It is ended at teardown if the test has not ended it."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.command(*argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )
        self.procs.append(proc)
        return proc

    def etc(self, name: str, text: str) -> None:
        """Give this host its own /etc/NAME (resolv.conf, say): `ip netns exec` mounts
        /etc/netns/<namespace>/NAME over it. Removed with the network."""
        path = ETC_NETNS / self.netns / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def link(self, *, up: bool) -> None:
        """Cut this host off the network (or back on): its cable, at the bridge."""
        _ip("-n", self.bridge_netns, "link", "set", self.port, "up" if up else "down")


class Network:
    """`count` hosts on one bridge; a context manager that always tears down."""

    def __init__(self, count: int) -> None:
        if not 1 <= count <= 200:
            raise ValueError("between 1 and 200 hosts")
        run = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.bridge_netns = f"{run}-br"
        self.hosts: list[Host] = [
            Host(f"{run}-h{i}", f"{SUBNET}.{i + 1}", f"v{run[-6:]}{i}", self.bridge_netns)
            for i in range(count)
        ]
        self._created: list[str] = []

    def __enter__(self) -> Network:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        br = self.bridge_netns
        self._add_netns(br)
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        for host in self.hosts:
            self._add_netns(host.netns)
            _ip("-n", br, "link", "add", host.port, "type", "veth",
                "peer", "name", "eth0", "netns", host.netns)  # fmt: skip
            _ip("-n", br, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/16", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            # Every other address is on the wire too (a service's virtual IP, say):
            # a connection to it needs a route before netfilter can redirect it.
            _ip("-n", host.netns, "route", "add", "default", "dev", "eth0")

    def close(self) -> None:
        for host in self.hosts:
            for proc in host.procs:
                stop(proc)
        for name in reversed(self._created):
            _kill_inside(name)
            _ip("netns", "del", name, check=False)
            shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
        self._created.clear()

    @staticmethod
    def names() -> Sequence[str]:
        return [line.split(" ", 1)[0] for line in _ip("netns", "list").stdout.splitlines()]


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
