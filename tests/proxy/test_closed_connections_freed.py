"""A closed connection is freed when it closes, not when the cycle collector runs.

A connection's protocol, its readers and its exchanges refer to one another, and a
running proxy collects its old generations rarely (cli/proxy.py raises the thresholds and
freezes start-up objects), so whatever a closed connection still referred to stayed.
Its transport was the costly part: uvloop's SSLProtocol with OpenSSL's state and
buffers, about 60 KiB a TLS connection. A server proxy whose clients' pooled
connections were closed and opened again (an idle timeout, an endpoint leaving and
coming back) grew by about 0.9 MB per 16 connections, without bound in practice:
bench/run.py's server proxy went over its 40 MB in the fourth round.

The tests churn real connections through two real proxies (mTLS between them): with
the collector off, what is still alive of the closed ones is counted; and closing them
logs nothing (asyncio warned for each TLS connection a peer closed).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
from collections.abc import Iterator
from typing import cast

import pytest

from gossamer.proxy.forward.exchange import (
    ConnectError,
    Exchange,
    Phase,
    Pool,
    ServerConnection,
    UpstreamConnection,
)
from gossamer.proxy.wire.http2 import H2Connection
from gossamer.proxy.wire.limits import LOST
from tests.proxy.conftest import Mesh, parse_responses

ROUNDS = 6
CONNECTIONS = 4  # at once, each round: the client proxy opens as many to its peers


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The cycle collector off: what is freed is freed by reference counts."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def tls_objects() -> int:
    """TLS connections' state still alive (counted without collecting)."""
    return sum(1 for o in gc.get_objects() if type(o) is ssl.SSLObject)


def _closed_connections() -> int:
    """Closed HTTP/1.1 connections from clients and HTTP/2 connections, still alive."""
    return sum(
        1
        for o in gc.get_objects()
        if (type(o) is ServerConnection and o.closing) or (type(o) is H2Connection and o.closed)
    )


async def _round(mesh: Mesh, request: bytes) -> None:
    """CONNECTIONS clients at once, a request each, all answered; then the clients close,
    and the client proxy's connections to its peers close (the endpoints leave its
    snapshot, and come back)."""
    opened = [await asyncio.open_connection(*mesh.outbound) for _ in range(CONNECTIONS)]
    try:
        for _, writer in opened:
            writer.write(request)
        for reader, _ in opened:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            [(status, headers, _)] = parse_responses(head)
            assert status == 200
            await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    finally:
        for _, writer in opened:
            writer.close()
    mesh.client.apply_snapshot(mesh.client_snapshot(services=()))
    await asyncio.sleep(0.2)
    mesh.client.apply_snapshot(mesh.client_snapshot())
    for _ in range(100):
        if not mesh.client.connections and not any(
            w.proxy.connections or w.proxy.h2_connections for w in mesh.workloads
        ):
            break
        await asyncio.sleep(0.02)


@pytest.fixture(params=["connections", "streams"])
def carriage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """HTTP/1.1 between the proxies on a connection per request, or as HTTP/2 streams
    (set before the mesh is made: the tests ask for it first)."""
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "1" if request.param == "streams" else "0")
    return str(request.param)


@pytest.mark.asyncio
async def test_closed_connections_are_freed_as_they_close(
    carriage: str, mesh: Mesh, no_collector: None
) -> None:
    assert mesh.client.config.multiplex_http1 is (carriage == "streams")
    request = b"GET /hello HTTP/1.1\r\nHost: echo\r\n\r\n"
    await _round(mesh, request)  # the first connections, and what start-up keeps
    tls_before = tls_objects()
    closed_before = _closed_connections()
    for _ in range(ROUNDS):
        await _round(mesh, request)
    # A connection closing is let go within DELAYED_CLOSE (and TLS's close_notify):
    # waited for. Without letting go, each round left CONNECTIONS connections' TLS state
    # on each side (and the closed connections with them) to the collector: 48 more.
    for _ in range(100):
        if tls_objects() <= tls_before:
            break
        await asyncio.sleep(0.05)
    assert tls_objects() <= tls_before
    assert _closed_connections() - closed_before <= 2 * CONNECTIONS


@pytest.mark.asyncio
async def test_a_peer_closing_its_tls_connections_logs_no_warning(
    carriage: str, mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy closes a connection itself when its client or peer closes (close_soon)
    and asks its transport to stay open meanwhile; a TLS transport shuts down whatever
    it is told, and being asked made asyncio log a warning for every TLS connection a
    peer closed: one line per connection in every server proxy's log."""
    request = b"GET /hello HTTP/1.1\r\nHost: echo\r\n\r\n"
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            await _round(mesh, request)
        await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]


class _Request:
    """What Pool._connect asks of the exchange it opens a connection for."""

    phase = Phase.WAITING
    attempts = 1

    def __init__(self) -> None:
        self.failed: list[ConnectError] = []
        self.bound: list[UpstreamConnection] = []

    def connect_failed(self, err: ConnectError) -> None:
        self.failed.append(err)

    def bind(self, upstream: UpstreamConnection) -> None:
        self.bound.append(upstream)


class _ClosingPool(Pool):
    """Opens a connection that is lost before the request gets to it (its peer closed
    it at once)."""

    async def open(self) -> UpstreamConnection:
        upstream = UpstreamConnection(self)
        upstream.connection_made(LOST)
        upstream.connection_lost(None)
        return upstream


@pytest.mark.asyncio
async def test_a_connection_lost_before_its_request_is_a_failed_connect() -> None:
    """Its reader is released and nothing can be sent on it: the request goes on as
    after a failed connect (another endpoint, or a 502), not bound to it."""
    pool = _ClosingPool(asyncio.get_running_loop(), "echo-1")
    ex = _Request()
    await pool._connect(cast(Exchange, ex), 1)
    assert ex.bound == []
    [err] = ex.failed
    assert err.status == 502 and "closed the connection at once" in err.reason
