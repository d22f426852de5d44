"""A data plane's cap on requests in flight (proxy.wire.limits.InFlight), HTTP/1.1 side:
a request over the cap is answered 503 saying why, and every request gives its place
back however it ends — answered, or its client gone mid-wait; a pipelined request holds
one only once its turn comes.
(HTTP/2 streams, REFUSED_STREAM and cancelled streams: tests/perhost/test_perhost_in_flight.py,
through a host proxy, where the cap is set.)"""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest

from gossamer.proxy.wire.limits import InFlight
from tests.proxy.conftest import Mesh


async def _wait_count(cap: InFlight, count: int) -> None:
    for _ in range(500):
        if cap.count == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"in flight: {cap.count}, expected {count}")


async def _drop(writer: asyncio.StreamWriter, *, abort: bool = False) -> None:
    if abort:
        writer.transport.abort()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _get(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: echo\r\n\r\n".encode())
    return reader, writer


@pytest.mark.asyncio
async def test_requests_over_the_cap_get_503_and_a_gone_client_gives_its_place_back(
    mesh: Mesh,
) -> None:
    cap = mesh.client.in_flight = InFlight(2, lambda: "workload default/web")
    port = mesh.outbound[1]
    held = [await _get(port, "/hang") for _ in range(2)]
    try:
        await _wait_count(cap, 2)
        reader, writer = await _get(port, "/")
        answer = await asyncio.wait_for(reader.read(-1), 10)
        await _drop(writer)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert (
            b"gossamer-error: workload default/web has 2 requests in flight, its cap on this "
            b"proxy" in answer
        )
        assert cap.refused == 1
        # One held client goes away: its place is given back, and a request fits again.
        await _drop(held.pop()[1], abort=True)
        await _wait_count(cap, 1)
        reader, writer = await _get(port, "/ok")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await _drop(writer)
        assert head.startswith(b"HTTP/1.1 200 ")
        await _wait_count(cap, 1)
    finally:
        for _, w in held:
            await _drop(w, abort=True)
    await _wait_count(cap, 0)


@pytest.mark.asyncio
async def test_pipelined_requests_hold_one_place_at_a_time_and_all_give_back(mesh: Mesh) -> None:
    for w in mesh.workloads:
        w.app.delay = 0.3
    cap = mesh.client.in_flight = InFlight(1, lambda: "workload default/web")
    reader, writer = await asyncio.open_connection(*mesh.outbound)
    try:
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: echo\r\n\r\n" % i for i in range(3)))
        await _wait_count(cap, 1)
        answers = b""
        while len(re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)) < 3:
            answers += await asyncio.wait_for(reader.read(65536), 10)
            assert cap.count <= 1  # a request waiting its turn holds no place
    finally:
        await _drop(writer)
    # One at a time, each in its turn: none is refused, though the cap is 1.
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"200"] * 3
    assert cap.refused == 0
    await _wait_count(cap, 0)
