"""What a local or unauthenticated client can cost a real proxy process (`gossamer run`):
memory for connections that never finish a TLS handshake, and file descriptors.

Each test starts a control plane and an echo workload, floods its listeners from this
process with a bounded number of connections, and reads the proxy's own account of
itself (/proc/PID/status, /ready, /metrics). Every loop is bounded in count and time;
every socket and process is closed in `finally`.
"""

from __future__ import annotations

import re
import resource
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest

from tests.e2e import conftest
from tests.e2e.conftest import ControlPlaneProcess, Workload, echo_app, free_port, run_workload

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
"""
IDLE = 3000  # idle connections to the inbound listener (fewer if this process's limit says so)
HANDSHAKES = 1000  # connections that send a ClientHello and stop (the default cap)
PROXY_NOFILE = 256  # RLIMIT_NOFILE of the proxy in the descriptor test
FLOOD = 600  # connections to each of its outbound and inbound listeners then
MB = 1024 * 1024


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.1)


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def proxy_pid(workload: Workload) -> int:
    """The proxy process `gossamer run` started (its other child is the app)."""
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(workload.proc.pid)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    [pid] = [int(line.split()[0]) for line in out.stdout.splitlines() if " proxy " in line]
    return pid


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def admin_get(workload: Workload, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{workload.admin}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(workload: Workload, name: str, labels: str = "") -> float:
    _, text = admin_get(workload, "/metrics")
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name}{labels} not in /metrics"
    return float(found.group(1))


def connect(stack: ExitStack, where: tuple[str, int], n: int) -> list[socket.socket]:
    """`n` connections that say nothing; closed with `stack`."""
    out = []
    for _ in range(n):
        s = stack.enter_context(socket.socket())
        s.setblocking(False)
        with suppress(BlockingIOError):
            s.connect(where)
        out.append(s)
    return out


def client_hello() -> bytes:
    """The first flight of a TLS client that will never send its second."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="echo")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def request(sock: socket.socket) -> bytes:
    """One keep-alive GET through an outbound listener; the response's status line."""
    sock.sendall(b"GET /hello HTTP/1.1\r\nHost: echo.shop\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, "the proxy closed a connection it had accepted"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    assert length, head
    while len(body) < int(length.group(1)):
        body += sock.recv(65536)
    return head.split(b"\r\n", 1)[0]


def fresh_request(workload: Workload) -> bytes:
    with socket.create_connection(address(workload.outbound), 10) as sock:
        return request(sock)


@pytest.fixture
def nofile() -> Iterator[int]:
    """This process's descriptor limit, raised towards its hard limit for the flood."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE + 2 * FLOOD + 512
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard > soft):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    try:
        yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_echo(cp: ControlPlaneProcess, tmp: Path) -> Workload:
    cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    port = free_port()
    echo = run_workload(
        cp, tmp, "echo-1", service_account="echo", labels={"app": "echo"},
        app=echo_app("echo-1", port), port=f"http=8080:{port}",
    )  # fmt: skip
    try:
        echo.wait_ready()
    except BaseException:
        echo.stop()
        raise
    return echo


def test_idle_and_stalled_handshakes_cost_little_and_their_memory_is_given_back(
    control_plane: ControlPlaneProcess, tmp_path: Path, nofile: int
) -> None:
    idle = min(IDLE, nofile - 512)
    if idle < 2 * HANDSHAKES:
        pytest.skip(f"RLIMIT_NOFILE {nofile} leaves too few descriptors for the flood")
    echo = start_echo(control_plane, tmp_path)
    try:
        pid = proxy_pid(echo)
        inbound = address(echo.inbound)
        baseline = rss(pid)
        with ExitStack() as stack:
            connect(stack, inbound, idle)
            wait_for(
                lambda: metric(echo, "gossamer_inbound_handshakes") == HANDSHAKES
                and metric(echo, "gossamer_connections_refused_total",
                           '{listener="inbound",reason="handshake_limit"}') == idle - HANDSHAKES,
                "idle connections accepted up to the cap, the rest refused",
            )  # fmt: skip
            with_idle = rss(pid)
        wait_for(lambda: metric(echo, "gossamer_inbound_handshakes") == 0, "idle ones gone")
        after_idle = rss(pid)

        hello = client_hello()
        with ExitStack() as stack:
            for _ in range(HANDSHAKES):
                stack.enter_context(socket.create_connection(inbound, 10)).sendall(hello)
            wait_for(
                lambda: metric(echo, "gossamer_inbound_handshakes") == HANDSHAKES,
                "the stalled handshakes accepted",
            )
            with_stalled = rss(pid)
        wait_for(lambda: metric(echo, "gossamer_inbound_handshakes") == 0, "stalled ones gone")
        # Freed heap goes back to the system once the upkeep sees the burst is over.
        wait_for(lambda: rss(pid) - baseline < 25 * MB, "memory given back", timeout=30)
        after_stalled = rss(pid)
        print(
            f"proxy RSS: {baseline / MB:.1f} MB; with {idle} idle connections "
            f"{with_idle / MB:.1f} MB, after {after_idle / MB:.1f} MB; with {HANDSHAKES} "
            f"stalled handshakes {with_stalled / MB:.1f} MB, after {after_stalled / MB:.1f} MB"
        )
        # About 45 KB each of TLS state before the first byte came to 130 MB here.
        assert with_idle - baseline < 25 * MB
        assert after_idle - baseline < 25 * MB
    finally:
        echo.stop()


def test_a_client_exhausting_descriptors_leaves_ready_and_open_connections_working(
    control_plane: ControlPlaneProcess,
    tmp_path: Path,
    nofile: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if nofile < 2 * FLOOD + 512:
        pytest.skip(f"RLIMIT_NOFILE {nofile} leaves too few descriptors for the flood")
    # The workload (supervisor, proxy and app) runs with a low RLIMIT_NOFILE.
    limit = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({PROXY_NOFILE}, {PROXY_NOFILE})); "
        "os.execv(sys.executable, [sys.executable, '-m', 'gossamer.cli.main', *sys.argv[1:]])"
    )
    monkeypatch.setattr(conftest, "GOSSAMER", [sys.executable, "-c", limit])
    echo = start_echo(control_plane, tmp_path)
    try:
        with ExitStack() as stack:
            wait_for(lambda: fresh_request(echo).startswith(b"HTTP/1.1 200"), "echo answers")
            kept = stack.enter_context(socket.create_connection(address(echo.outbound), 10))
            assert request(kept).startswith(b"HTTP/1.1 200")
            connect(stack, address(echo.outbound), FLOOD)
            connect(stack, address(echo.inbound), FLOOD)
            pid = proxy_pid(echo)
            wait_for(
                lambda: len(list(Path(f"/proc/{pid}/fd").iterdir())) >= PROXY_NOFILE * 3 // 4,
                "the flood taking the proxy's descriptors",
            )
            status, body = admin_get(echo, "/ready")
            assert (status, body) == (200, "ready\n")
            assert request(kept).startswith(b"HTTP/1.1 200")
            for listener in ("outbound", "inbound"):
                wait_for(
                    lambda listener=listener: metric(
                        echo, "gossamer_connections_refused_total",
                        f'{{listener="{listener}",reason="fd_limit"}}') > 0,
                    f"the {listener} listener refusing connections past its descriptors",
                )  # fmt: skip
        # Once the flood is gone, new connections are served again.
        assert fresh_request(echo).startswith(b"HTTP/1.1 200")
        assert admin_get(echo, "/ready")[0] == 200
    finally:
        echo.stop()
