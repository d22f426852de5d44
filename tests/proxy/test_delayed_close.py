"""A connection the proxy closes with data still buffered for its client
(proxy.wire.limits.close_soon): a client that reads nothing is aborted once
DELAYED_CLOSE passes without it taking any, so that it cannot hold its socket and the
buffer for good; one that reads slowly gets every byte.

The client's receive buffer and the proxy's send buffer for it are made small, so that
most of a 60 KB response waits in the proxy's transport buffer, under its high-water
mark: the response is whole there, and `Connection: close` has the proxy close the
connection. (The echo apps answer after a delay, for the send buffer to be set first.)
(HTTP/2: tests/proxy/test_h2_hardening.py, refusals a client never reads.)
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from gossamer.proxy.wire.limits import DELAYED_CLOSE
from tests.proxy.conftest import Mesh

SIZE = 60_000
REQUEST = b"GET /bytes?n=%d HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n" % SIZE


async def _connect(mesh: Mesh, request: bytes = REQUEST) -> socket.socket:
    for workload in mesh.workloads:
        workload.app.delay = 0.5
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    await asyncio.to_thread(sock.connect, mesh.outbound)
    sock.sendall(request)
    for _ in range(200):
        if mesh.client.connections:
            break
        await asyncio.sleep(0.01)
    [conn] = mesh.client.connections
    assert conn.transport is not None
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return sock


def read_all(sock: socket.socket, chunk: int, pause: float) -> tuple[bytes, str]:
    """Read until EOF, `chunk` bytes every `pause` seconds; what came and how it ended."""
    got = bytearray()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            data = sock.recv(chunk)
        except OSError as e:
            return bytes(got), type(e).__name__
        if not data:
            return bytes(got), "eof"
        got += data
        time.sleep(pause)
    return bytes(got), "still open"


def _body(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


@pytest.mark.asyncio
async def test_a_client_that_reads_nothing_after_the_close_is_aborted(mesh: Mesh) -> None:
    sock = await _connect(mesh)
    try:
        await asyncio.sleep(DELAYED_CLOSE * 3)  # reads nothing meanwhile
        response, end = await asyncio.to_thread(read_all, sock, 65536, 0)
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:100]
    # What the kernel held came, then the end (uvloop's abort closes the socket: the
    # kernel sends what it has, then FIN); what the proxy held was thrown away.
    assert end in ("eof", "ConnectionResetError")
    assert len(_body(response)) < SIZE


@pytest.mark.asyncio
async def test_a_client_that_reads_slowly_gets_the_whole_response(mesh: Mesh) -> None:
    sock = await _connect(mesh)
    try:
        # About 20 KB a second: the response takes three times DELAYED_CLOSE to read.
        response, end = await asyncio.to_thread(read_all, sock, 2048, 0.1)
    finally:
        sock.close()
    assert end == "eof"
    assert _body(response) == b"x" * SIZE


@pytest.mark.asyncio
async def test_a_keep_alive_client_reading_slowly_outlasts_the_idle_timeout(mesh: Mesh) -> None:
    """A client that reads none of its response for the idle timeout loses its
    connection (decision 0114); one that reads slowly keeps the proxy's writing paused
    for longer than that (about 2.4 s at a time here: 48 KiB from the high mark to the
    low at 20 KB/s, with a 1 s idle timeout) but takes bytes all along, and gets them
    all, on a connection that stays open."""
    mesh.client.config.idle_timeout = 1.0
    size = 120_000
    sock = await _connect(mesh, b"GET /bytes?n=%d HTTP/1.1\r\nHost: echo\r\n\r\n" % size)
    [conn] = mesh.client.connections
    try:

        def read_response() -> bytes:
            got = bytearray()
            while b"\r\n\r\n" not in got or len(got.partition(b"\r\n\r\n")[2]) < size:
                data = sock.recv(2048)
                if not data:
                    break
                got += data
                time.sleep(0.1)
            return bytes(got)

        response = await asyncio.to_thread(read_response)
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert _body(response) == b"x" * size
    assert conn.paused_at > 0  # its writing was paused on the way
