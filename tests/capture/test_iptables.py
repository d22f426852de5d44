"""`gossamer capture` with real iptables in network namespaces: where connections go
with the rules in place, that installing twice stacks nothing, and that removing
leaves the nat table as it was."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.hosts.conftest import GOSSAMER
from tests.hosts.netns import Host, Network

pytestmark = pytest.mark.e2e

PROXY_GID = 1337

SERVE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[3].encode()); c.close()
"""

# Connect, print the first thing said, or what went wrong; as `gid` if given.
CONNECT = """
import os, socket, sys
if len(sys.argv) > 3:
    os.setgroups([]); os.setgid(int(sys.argv[3]))
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
        print(c.recv(100).decode())
except OSError as e:
    print(type(e).__name__)
"""


def serve(host: Host, address: str, port: int, word: str, tmp: Path) -> None:
    host.popen(sys.executable, "-c", SERVE, address, str(port), word, log=tmp / f"{word}.log")


def connect(host: Host, address: str, port: int, gid: int | None = None) -> str:
    extra = [str(gid)] if gid is not None else []
    r = host.run(sys.executable, "-c", CONNECT, address, str(port), *extra)
    return r.stdout.strip() or r.stderr


def capture(host: Host, *args: str) -> str:
    r = host.run(*GOSSAMER, "capture", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def nat(host: Host) -> list[str]:
    return host.run("iptables", "-t", "nat", "-S").stdout.splitlines()


@pytest.mark.parametrize("network", [2], indirect=True)
def test_capture_redirects_the_apps_tcp_and_spares_the_proxy_and_exclusions(
    network: Network, tmp_path: Path
) -> None:
    outside, workload = network.hosts
    for port, word in ((80, "direct"), (9999, "direct-9999")):
        serve(outside, outside.address, port, word, tmp_path)
    # Stand-ins for the proxy's listeners on the workload's host.
    serve(workload, "127.0.0.1", 4140, "outbound-listener", tmp_path)
    serve(workload, workload.address, 4143, "inbound-listener", tmp_path)
    time.sleep(0.5)  # the stand-ins bind
    assert connect(workload, outside.address, 80) == "direct"
    pristine = nat(workload)

    flags = ["--port", "8080", "--proxy-gid", str(PROXY_GID), "--exclude-outbound-port", "9999"]
    capture(workload, "install", *flags)
    # The app's outbound TCP reaches the outbound listener, whatever its destination ...
    assert connect(workload, outside.address, 80) == "outbound-listener"
    # ... but not the proxy's own, nor an excluded port.
    assert connect(workload, outside.address, 80, gid=PROXY_GID) == "direct"
    assert connect(workload, outside.address, 9999) == "direct-9999"
    # Inbound TCP to the workload's port reaches the inbound listener.
    assert connect(outside, workload.address, 8080) == "inbound-listener"

    # Installing again replaces the rules: the same table, no second jump.
    installed = nat(workload)
    capture(workload, "install", *flags)
    assert nat(workload) == installed
    assert installed.count("-A OUTPUT -j GOSSAMER_OUTPUT") == 1
    shown = capture(workload, "show", "-o", "json")
    assert '"-A GOSSAMER_OUTPUT -p tcp -j REDIRECT --to-ports 4140"' in shown

    assert "capture removed" in capture(workload, "remove")
    assert nat(workload) == pristine
    assert connect(workload, outside.address, 80) == "direct"
    assert "no capture rules were installed" in capture(workload, "remove")


@pytest.mark.parametrize("network", [2], indirect=True)
def test_captured_connections_are_refused_while_the_proxy_is_down(
    network: Network, tmp_path: Path
) -> None:
    outside, workload = network.hosts
    serve(outside, outside.address, 80, "direct", tmp_path)
    time.sleep(0.5)
    capture(workload, "install", "--proxy-gid", str(PROXY_GID))
    # Nothing listens on the outbound port: the app's connection fails at once, and
    # nothing reaches the destination uncaptured.
    assert connect(workload, outside.address, 80) == "ConnectionRefusedError"
