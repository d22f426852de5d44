"""What a registrant sends the host proxy with its registration: the descriptor of its
network namespace (SCM_RIGHTS). A hostile one may send any descriptor: a FIFO, a file,
another kind of namespace. Each is refused with the reason, and the host proxy goes on
serving the next registration (host.netns.check_namespace)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from gossamer.host.run import register
from tests.e2e.conftest import GOSSAMER, ControlPlaneProcess, stop_process
from tests.perhost.hosts import host_object
from tests.perhost.test_host_config import wait, workload

pytestmark = pytest.mark.e2e


def _register_with(path: Path, request: dict[str, object], fd: int) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [fd])
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    reply: dict[str, object] = json.loads(data.split(b"\n", 1)[0])
    return reply


def test_a_descriptor_that_is_not_a_network_namespace_is_refused(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    cp.cli("apply", "-f", "-", stdin=host_object("node-1", ("shop", "web")), check=True)
    sock_path, log = tmp_path / "host.sock", tmp_path / "host.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*GOSSAMER, "host", "--name", "node-1", "--discovery", cp.discovery,
             "--server", cp.api, "--token-file", str(cp.token_file),
             "--socket", str(sock_path), "--state-dir", str(tmp_path / "state"),
             "--ready-file", str(tmp_path / "ready"), "--log-level", "debug"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    plain = tmp_path / "plain"
    plain.write_text("x")
    held: list[socket.socket] = []
    try:
        wait(lambda: (tmp_path / "ready").exists(), "gossamer host never became ready", log)
        fds = {
            "a FIFO": os.open(fifo, os.O_RDONLY | os.O_NONBLOCK),
            "a file": os.open(plain, os.O_RDONLY),
            "a uts namespace": os.open("/proc/self/ns/uts", os.O_RDONLY),
        }
        try:
            for what, fd in fds.items():
                reply = _register_with(sock_path, {"name": "web-1", **_request()}, fd)
                assert reply["ok"] is False, what
                assert "the descriptor sent as the workload's namespace" in str(reply["error"]), (
                    what,
                    reply,
                )
        finally:
            for fd in fds.values():
                os.close(fd)
        # The host proxy is still there, and a proper registration is served.
        conn, addresses = register(sock_path, {"name": "web-1", **_request()})
        held.append(conn)
        assert set(addresses) == {"outbound", "inbound", "admin"}
        assert proc.poll() is None
    finally:
        for conn in held:
            conn.close()
        stop_process(proc)


def _request() -> dict[str, object]:
    w = workload("web-1", "web", 0)
    return {k: v for k, v in w.items() if k not in ("name", "admin")} | {"admin": "127.0.0.1:0"}
