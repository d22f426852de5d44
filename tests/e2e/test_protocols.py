"""Opaque TCP through the mesh, including a protocol where the server speaks first."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ControlPlaneProcess, free_port, run_workload, sleeper

pytestmark = pytest.mark.e2e

SMTP_LIKE = """
import asyncio

async def serve(reader, writer):
    writer.write(b"220 mail.shop ready\\r\\n")  # the server talks first, as SMTP does
    await writer.drain()
    while line := await reader.readline():
        if line.strip().upper() == b"QUIT":
            writer.write(b"221 bye\\r\\n")
            await writer.drain()
            break
        writer.write(b"250 " + line)
        await writer.drain()
    writer.close()

async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()

import sys
asyncio.run(main(int(sys.argv[1])))
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: mail, namespace: shop}
spec:
  selector: {app: mail}
  ports: [{name: smtp, port: 25, targetPort: smtp, appProtocol: tcp}]
"""


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def test_a_server_speaks_first_protocol_is_never_stalled(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    app_port, local_port = free_port(), free_port()
    server = run_workload(
        control_plane, tmp_path, "mail-1", service_account="mail", labels={"app": "mail"},
        app=[sys.executable, "-c", SMTP_LIKE, str(app_port)], port=f"smtp=2525:{app_port}",
    )  # fmt: skip
    client = run_workload(
        control_plane, tmp_path, "sender", service_account="sender", labels={}, app=sleeper(),
        extra=("--upstream", f"mail.shop:25=127.0.0.1:{local_port}"),
    )  # fmt: skip
    try:
        server.wait_ready()
        client.wait_ready()
        deadline = time.monotonic() + 30
        while True:
            # The client sends nothing first: the banner must come by itself.
            with socket.create_connection(("127.0.0.1", local_port), timeout=5) as sock:
                banner = _read_line(sock)
                if banner.startswith(b"220 "):
                    sock.sendall(b"HELO client\r\n")
                    assert _read_line(sock) == b"250 HELO client\r\n"
                    sock.sendall(b"QUIT\r\n")
                    assert _read_line(sock) == b"221 bye\r\n"
                    break
            # The app may not listen yet: its workload is not ready, so no endpoint.
            assert time.monotonic() < deadline, f"no banner through the mesh: {banner!r}"
            time.sleep(0.3)
        assert banner == b"220 mail.shop ready\r\n"
    finally:
        client.stop()
        server.stop()
