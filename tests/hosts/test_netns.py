"""The harness itself: what it builds, that it leaves nothing behind, even after a run
that crashed, and that it says why when namespaces cannot be made here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.capture.test_iptables import connect, serve
from tests.hosts.conftest import require_namespaces, wait_until
from tests.hosts.netns import ETC_NETNS, PREFIX, Network, sweep_stale, unavailable_reason


def test_without_root_the_reason_is_stated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = unavailable_reason()
    assert reason is not None and "need root" in reason


def test_hosts_reach_each_other_and_leave_nothing_behind(tmp_path: Path) -> None:
    require_namespaces()
    with Network(2) as net:
        a, b = net.hosts
        serve(b, b.address, 80, "hello", tmp_path)
        wait_until(lambda: connect(a, b.address, 80) == "hello", "b never answered a")
        # The machine's own namespace does not have these addresses.
        assert b.address not in subprocess.run(["ip", "-4", "addr"], capture_output=True,
                                               text=True).stdout  # fmt: skip
        a.etc("resolv.conf", "nameserver 198.18.0.2\n")
        assert a.run("cat", "/etc/resolv.conf").stdout == "nameserver 198.18.0.2\n"
        sleeper = b.popen("sleep", "600", log=tmp_path / "sleep.log")
        b.link(up=False)
        assert connect(a, b.address, 80) in ("TimeoutError", "OSError")
        names = [h.netns for h in net.hosts] + [net.bridge_netns]
    assert sleeper.poll() is not None
    assert not set(names) & set(Network.names())
    assert not any((ETC_NETNS / n).exists() for n in names)


def test_namespaces_a_crashed_run_left_are_swept(tmp_path: Path) -> None:
    require_namespaces()
    # A run whose process is gone: a pid that cannot be alive.
    left = f"{PREFIX}{2**22 + 1}-abcdef-h0"
    subprocess.run(["ip", "netns", "add", left], check=True)
    try:
        sweep_stale()
        assert left not in Network.names()
    finally:
        subprocess.run(["ip", "netns", "del", left], capture_output=True)
