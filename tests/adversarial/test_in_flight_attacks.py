"""The per-workload cap on requests in flight (decision 0109) attacked: can a client or a
peer keep places taken after its requests are over, or hold another workload's places?

Each test runs real proxies (an HTTP/2 client of hyperframe frames, or a plain socket
for HTTP/1.1) against the data plane's `InFlight` count, and looks at the count and at
what a later request gets. Loops and waits are bounded; sockets close in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gossamer.identity.tls import client_context
from gossamer.proxy.wire.limits import InFlight
from gossamer.proxy.wire.tls import ALPN_H1, sni_for
from tests.proxy.conftest import Mesh, Pki, mesh  # noqa: F401 (a fixture)
from tests.proxy.test_h2_hardening import (
    REFUSED_STREAM,
    RawH2,
    echo_mesh,
    inbound_context,
    open_to,
    request,
)


async def _count_settles(cap: InFlight, count: int, timeout: float = 5.0) -> int:
    """Wait (bounded) for the count to reach `count`; the count then."""
    for _ in range(int(timeout / 0.01)):
        if cap.count == count:
            break
        await asyncio.sleep(0.01)
    return cap.count


# Fixed (H2Connection._settle): a stream the proxy answered itself (404, 403, 503) kept
# its place while the client left its request open; the answer is now followed by
# RST_STREAM NO_ERROR (RFC 9113 8.1) and the pair ends.
@pytest.mark.asyncio
async def test_a_peer_cannot_hold_a_workloads_places_with_requests_answered_404(
    pki: Pki,
) -> None:
    async with echo_mesh(pki) as (client, server, _):
        cap = server.in_flight = InFlight(3, lambda: "workload default/echo-1")
        assert server.inbound_address is not None
        # A peer with a mesh certificate, to a port the workload does not have: each
        # stream is answered 404 by the proxy, and the peer never ends its request.
        peer = await RawH2.open(
            server.inbound_address,
            inbound_context(pki),
            server_hostname=sni_for(9999, "echo-1", "default"),
        )
        caller = None
        try:
            for i in range(3):
                await peer.send(peer.headers(2 * i + 1, request(b"/x", b"POST"), False))
            assert await peer.until(lambda: len(peer.heads) == 3)
            assert {peer.status(i) for i in (1, 3, 5)} == {404}
            # The answers are whole: the places are free again, and a caller of the
            # workload through the mesh is served.
            assert await _count_settles(cap, 0) == 0
            caller = await open_to(pki, client, server, "outbound")
            status = await caller.get(1, request(b"/anything"))
            assert caller.resets.get(1) != REFUSED_STREAM
            assert status == 200
        finally:
            await peer.close()
            if caller is not None:
                await caller.close()


@pytest.mark.asyncio
async def test_http1_requests_a_peer_leaves_open_after_a_404_give_their_places_back(
    pki: Pki,
) -> None:
    """The same attack over HTTP/1.1 (ALPN gossamer/h1) holds: the answer ends the
    exchange, and its place, though the body never comes."""
    async with echo_mesh(pki) as (_client, server, _):
        cap = server.in_flight = InFlight(3, lambda: "workload default/echo-1")
        assert server.inbound_address is not None
        creds = pki.issue("default", "web")
        tls = client_context(
            creds.chain_pem, creds.key_pem, creds.bundle_pem, alpn_protocols=[ALPN_H1]
        )
        writers = []
        try:
            answers = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection(
                    *server.inbound_address,
                    ssl=tls,
                    server_hostname=sni_for(9999, "echo-1", "default"),
                )
                writers.append(writer)
                writer.write(
                    b"POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 1000000\r\n\r\nabc"
                )
                answers.append(await asyncio.wait_for(reader.readuntil(b"\r\n"), 10))
            assert answers == [b"HTTP/1.1 404 Not Found\r\n"] * 3
            assert await _count_settles(cap, 0) == 0
        finally:
            for writer in writers:
                writer.transport.abort()


# Fixed (ServerConnection._dispatch): pipelined requests took their places when read,
# and a client that pipelined them to a slow app and left kept them all until the app
# answered (reading is paused while a request waits its turn, so the client's FIN or
# RST is not seen). A request now takes its place when its turn comes: a connection
# holds one at most, and that one until the response timeout, as any slow request.
@pytest.mark.asyncio
async def test_pipelined_requests_to_a_slow_app_hold_one_place_until_the_response_timeout(
    mesh: Mesh,  # noqa: F811
) -> None:
    mesh.client.config.response_timeout = 1.0
    cap = mesh.client.in_flight = InFlight(10, lambda: "workload default/web")
    _reader, writer = await asyncio.open_connection(*mesh.outbound)
    try:
        writer.write(b"GET /hang HTTP/1.1\r\nHost: echo\r\n\r\n" * 5)
        assert await _count_settles(cap, 1) == 1
        await asyncio.sleep(0.3)
        assert cap.count == 1  # the four waiting their turn hold none
    finally:
        writer.transport.abort()
    # The client is gone; the app never answers /hang: the response timeout ends it.
    assert await _count_settles(cap, 0, timeout=10.0) == 0


# What held: each of these, cut off by the client, gives every place back.
HELD = {
    "a malformed request between two pipelined ones": (
        b"GET /a HTTP/1.1\r\nHost: echo\r\n\r\nGARBAGE\r\n\r\nGET /b HTTP/1.1\r\nHost: echo\r\n\r\n"
    ),
    "a body cut short": b"POST /a HTTP/1.1\r\nHost: echo\r\nContent-Length: 100\r\n\r\nabc",
    "a bad chunk": b"POST /a HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "100-continue, then gone": (
        b"POST /a HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
    ),
    "an h2c upgrade": (
        b"GET /a HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    ),
    "one hung request": b"GET /hang HTTP/1.1\r\nHost: echo\r\n\r\n",
}


@pytest.mark.parametrize("data", list(HELD.values()), ids=list(HELD))
@pytest.mark.asyncio
async def test_a_client_cut_off_mid_exchange_gives_every_place_back(
    mesh: Mesh,  # noqa: F811
    data: bytes,
) -> None:
    cap = mesh.client.in_flight = InFlight(10, lambda: "workload default/web")
    reader, writer = await asyncio.open_connection(*mesh.outbound)
    try:
        writer.write(data)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(4096), 1.0)
    finally:
        writer.transport.abort()
    assert await _count_settles(cap, 0) == 0
