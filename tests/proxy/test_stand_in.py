"""`DataPlane.stand_in`: worker 0 accepts on another worker's listening sockets while
that worker cannot (gossamer.workers, decision 0100), and stops at `stand_down`.

Here the "other worker's" sockets are plain listening sockets on ports of their own:
what is checked is that each kind of listener is served on them with the data
plane's own protocols (outbound HTTP, inbound mTLS) and that standing down leaves
what arrives afterwards queued on them, for the worker, not taken.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import Iterator

import pytest

from tests.proxy.conftest import Mesh, curl


@pytest.fixture
def spare() -> Iterator[list[socket.socket]]:
    """Listening sockets a test makes; closed after it."""
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def listening(spare: list[socket.socket]) -> tuple[socket.socket, int]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    spare.append(sock)
    return sock, sock.getsockname()[1]


def accept_queue(port: int) -> int:
    """Connections in the accept queue of the listener on 127.0.0.1:`port` (a
    listener's rx_queue in /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # LISTEN
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no listener on 127.0.0.1:{port}")


@pytest.mark.asyncio
async def test_a_stand_in_serves_another_workers_outbound_and_inbound_sockets(
    mesh: Mesh, spare: list[socket.socket]
) -> None:
    outbound, outbound_port = listening(spare)
    inbound, inbound_port = listening(spare)
    echo = mesh.workloads[0]
    await mesh.client.stand_in(1, {"outbound": outbound})
    await echo.proxy.stand_in(1, {"inbound": inbound})
    # The client's only endpoint is echo-1 at the stood-in inbound port: each call goes
    # in on the spare outbound socket and out to the spare inbound socket, over mTLS.
    service = mesh.client_snapshot().services[0]
    port = dataclasses.replace(
        service.ports[0],
        endpoints=(dataclasses.replace(echo.endpoint(), inbound_port=inbound_port),),
    )
    snapshot = mesh.client_snapshot(services=(dataclasses.replace(service, ports=(port,)),))
    mesh.client.apply_snapshot(dataclasses.replace(snapshot, version="2"))

    rc, out, err = await curl(
        "--fail-with-body", "-H", "Host: echo", f"http://127.0.0.1:{outbound_port}/stood-in"
    )
    assert rc == 0, out + err
    body = json.loads(out)
    assert (body["instance"], body["path"]) == ("echo-1", "/stood-in")


@pytest.mark.asyncio
async def test_after_stand_down_new_connections_wait_for_their_own_worker(
    mesh: Mesh, spare: list[socket.socket]
) -> None:
    outbound, outbound_port = listening(spare)
    await mesh.client.stand_in(1, {"outbound": outbound})
    rc, _, err = await curl("-H", "Host: echo", f"http://127.0.0.1:{outbound_port}/before")
    assert rc == 0, err
    mesh.client.stand_down(1)
    _, writer = await asyncio.open_connection("127.0.0.1", outbound_port)
    try:
        # A call on the client's own listener: its loop has gone round since.
        rc, _, err = await curl("-H", "Host: echo", f"{mesh.proxy_url}/own")
        assert rc == 0, err
        assert accept_queue(outbound_port) == 1  # still there, for its worker
    finally:
        writer.close()
    # ...and the socket is still the caller's: standing down closed nothing.
    assert outbound.fileno() != -1
    conn, _ = outbound.accept()
    conn.close()
