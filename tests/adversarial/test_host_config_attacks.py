"""The host config file (decisions 0106, 0107) attacked: what a hostile or broken file, or a
path swapped under the host proxy, can make it do.

The host proxy reads the file on its event loop (`ConfigFile.changed` every poll,
`ConfigFile.read` at start and on each reload), where every uid workload's data plane
runs too: a read that never returns stops them all. The tests read from a thread with
a bounded wait, and unblock it in `finally`.

Per-uid capture (decision 0107) is attacked with real iptables in two network
namespaces of this run (prefix ga3, deleted at the end with their veths and rules): a
host with uid 1001's rules installed and no host proxy, and a server one link away.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gossamer.capture.rules import CaptureSpec, HostCaptureSpec, UidCapture
from gossamer.errors import InvalidResource
from gossamer.host.config import ConfigFile
from gossamer.host.netns import open_namespace
from gossamer.resources.host import MAX_CONFIG_BYTES, load_host_configuration


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A named pipe where the config file should be (a path swapped for one, or a
    symlink to one); any reader still blocked on it is let go at the end."""
    path = tmp_path / "host.yaml"
    os.mkfifo(path)
    try:
        yield path
    finally:
        # Opening the write end frees a reader blocked in open(); closing it, in read().
        with contextlib.suppress(OSError):  # ENXIO: no reader left
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def _returns_within(call: Callable[[], object], seconds: float) -> bool:
    """Whether `call` returns (or raises) within `seconds`, run on a daemon thread."""
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except Exception:
            pass
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


# Fixed (host.config.read_regular_file, host.netns.open_namespace): ConfigFile.changed
# and ConfigFile.read opened the path with read_bytes(), blocking, so a config path that
# is (or links to) a FIFO blocked the host proxy's event loop for ever, and /dev/zero
# was read whole before MAX_CONFIG_BYTES was checked; a netns path was opened the same
# way in HostProxy._start_configured.


def test_polling_a_config_path_swapped_for_a_fifo_returns(fifo: Path) -> None:
    config = ConfigFile(fifo)
    assert _returns_within(config.changed, 3.0)


def test_reading_a_config_path_that_is_a_fifo_is_an_error_not_a_hang(fifo: Path) -> None:
    config = ConfigFile(fifo)
    with pytest.raises(OSError, match="is not a regular file"):
        config.read()


def test_a_config_path_to_dev_zero_is_refused_before_it_is_read() -> None:
    with pytest.raises(OSError, match="is not a regular file"):
        ConfigFile(Path("/dev/zero")).read()


def test_a_config_file_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "host.yaml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(OSError, match="more than"):
        ConfigFile(big).read()


def test_a_netns_path_that_is_a_fifo_or_a_file_is_refused_without_blocking(
    fifo: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "not-a-namespace"
    plain.write_text("x")
    for path in (fifo, plain):
        with pytest.raises(OSError, match="is not a namespace file"):
            open_namespace(str(path))
    with pytest.raises(OSError, match="not a network namespace"):
        open_namespace("/proc/self/ns/uts")
    os.close(open_namespace("/proc/self/ns/net"))


# ---- what held ------------------------------------------------------------------------------

BOMB = (
    b'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    + b"".join(
        b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((98 + i,) * 2 + (97 + i,) * 9)
        for i in range(8)
    )
    + b"kind: HostConfiguration\n"
)
HELD = [
    ("an alias bomb", BOMB, "aliases expand it to"),
    ("nesting 5,000 deep", b"kind: HostConfiguration\nx: " + b"[" * 5000 + b"]" * 5000, "deeper"),
    ("a python tag", b"kind: !!python/object/apply:os.system ['id']\n", "could not determine"),
    ("a duplicate key", b"kind: HostConfiguration\nkind: Other\n", "duplicate key"),
]


@pytest.mark.parametrize(("text", "error"), [h[1:] for h in HELD], ids=[h[0] for h in HELD])
def test_a_hostile_yaml_file_is_refused_at_once_naming_why(text: bytes, error: str) -> None:
    # Refused before the work it asks for (the bomb would be 490 million values).
    with pytest.raises(InvalidResource, match=error):
        load_host_configuration(text, "host.yaml")


# ---- per-uid capture in a real network namespace ------------------------------------------

UID = 1001
OUTBOUND_PORT = 15001  # the workload's outbound listener: nothing listens (no host proxy)
SERVER_V4, SERVER_V6 = "10.203.0.2", "fd00:a3::2"


@dataclass
class UidHost:
    """A plain host (namespace) with uid 1001's capture rules installed and no host proxy
    running, and a server one link away answering HTTP on IPv4 and IPv6."""

    host_ns: str
    server_ns: str

    def curl(self, url: str, uid: int | None = UID) -> str:
        """The HTTP status `uid` (None: root, never captured) gets for `url` ("000": no
        answer)."""
        who = [] if uid is None else [
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"
        ]  # fmt: skip
        done = subprocess.run(
            ["ip", "netns", "exec", self.host_ns, *who, "curl", "-g", "-s", "-o",
             "/dev/null", "-w", "%{http_code}", "--max-time", "5", url],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return done.stdout.strip() or "000"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def uid_host() -> Iterator[UidHost]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("iptables") is None:
        pytest.fail("these tests need root, ip and iptables (network namespaces)")
    run = f"ga3{os.getpid()}"
    host_ns, server_ns = f"{run}-h", f"{run}-s"
    server: subprocess.Popen[bytes] | None = None
    try:
        _ip("netns", "add", host_ns)
        _ip("netns", "add", server_ns)
        _ip("link", "add", f"{run}h", "netns", host_ns, "type", "veth",
            "peer", "name", f"{run}s", "netns", server_ns)  # fmt: skip
        for ns, dev, v4, v6 in (
            (host_ns, f"{run}h", "10.203.0.1/24", "fd00:a3::1/64"),
            (server_ns, f"{run}s", f"{SERVER_V4}/24", f"{SERVER_V6}/64"),
        ):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", v4, "dev", dev)
            _ip("-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", server_ns, sys.executable, "-m", "http.server",
             "--bind", "::", "8080", "--directory", "/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # uid 1001's rules, as the host proxy installs them (gossamer.host.capture),
        # with no host proxy running: its connections must be refused, not sent out.
        spec = HostCaptureSpec(
            (UidCapture(UID, CaptureSpec(outbound_port=OUTBOUND_PORT, inbound_port=15006)),),
            proxy_uid=0,
        )
        code = (
            "from gossamer.host.capture import install\n"
            "from gossamer.capture.rules import *\n"
            f"install({spec!r})\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", host_ns, sys.executable, "-c", code],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        host = UidHost(host_ns, server_ns)
        for _ in range(100):  # the server is up
            if host.curl(f"http://{SERVER_V4}:8080/", uid=None) == "200":
                break
            time.sleep(0.1)
        yield host
    finally:
        if server is not None:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)
        for ns in (host_ns, server_ns):  # takes the veths and the rules with them
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_a_captured_uid_reaches_nothing_over_ipv4_while_no_host_proxy_runs(
    uid_host: UidHost,
) -> None:
    # The server answers on both (root is never captured); uid 1001 is refused.
    assert uid_host.curl(f"http://{SERVER_V4}:8080/", uid=None) == "200"
    assert uid_host.curl(f"http://[{SERVER_V6}]:8080/", uid=None) == "200"
    assert uid_host.curl(f"http://{SERVER_V4}:8080/") == "000"


# Fixed (capture.rules.host_ipv6_rules): per-uid capture was IPv4 only, and a uid
# workload reached any IPv6 address uncaptured, also while no host proxy ran.
def test_a_captured_uid_reaches_nothing_over_ipv6_while_no_host_proxy_runs(
    uid_host: UidHost,
) -> None:
    assert uid_host.curl(f"http://[{SERVER_V6}]:8080/") == "000"


UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
print("ready", flush=True)
while True:
    data, _ = s.recvfrom(2048)
    print(data.decode(errors="replace"), flush=True)
"""


# Fixed (capture.rules.host_chain_rules): a uid workload's IPv4 UDP other than DNS was
# neither captured nor refused; it is refused beyond loopback now.
def test_a_captured_uid_sends_no_udp_beyond_dns_while_no_host_proxy_runs(
    uid_host: UidHost,
) -> None:
    sink = subprocess.Popen(
        ["ip", "netns", "exec", uid_host.server_ns, sys.executable, "-c", UDP_SINK],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert sink.stdout is not None
        out = sink.stdout.fileno()  # read unbuffered: select sees what is still to read
        got = b""
        while b"ready\n" not in got and select.select([out], [], [], 10)[0]:
            got += os.read(out, 4096)
        assert b"ready\n" in got

        def send_as(who: list[str], text: str) -> None:
            subprocess.run(
                ["ip", "netns", "exec", uid_host.host_ns, *who, "bash", "-c",
                 f"echo {text} > /dev/udp/{SERVER_V4}/9999"],
                capture_output=True, timeout=30,
            )  # fmt: skip

        as_uid = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]
        send_as(as_uid, "from-uid")
        send_as([], "from-root")  # root is never captured: it arrives, and comes after
        deadline = time.monotonic() + 10
        while b"from-root" not in got and time.monotonic() < deadline:
            if select.select([out], [], [], 0.5)[0]:
                got += os.read(out, 4096)
        received = got.decode().split()
        assert "from-root" in received, f"the sink got {received}"
        assert "from-uid" not in received, f"uid {UID}'s datagram arrived: {received}"
    finally:
        sink.kill()
        sink.wait(timeout=10)
        if sink.stdout is not None:
            sink.stdout.close()
