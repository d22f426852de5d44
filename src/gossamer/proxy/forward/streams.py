"""What HTTP/2 streams routed through the mesh share in both directions.

The outbound side (proxy.outbound.h2) routes a stream by `:authority` to a peer; the
inbound side (proxy.inbound.h2) carries it to the app. Both open their upstream
connections through `Links` (one multiplexed connection per peer endpoint or app
port), take over a downstream connection with `serve`, and report a finished stream to
the hooks (tap, access log, span: proxy.observe.hooks) with `observe`/`observed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Final

from gossamer.proxy.forward.exchange import ConnectError, Pool
from gossamer.proxy.observe.hooks import Caller, StreamRequest
from gossamer.proxy.wire.http2 import H2Connection, Headers, StreamHandler, StreamPair

if TYPE_CHECKING:
    from gossamer.proxy.forward.plane import Streams

log = logging.getLogger("gossamer.proxy")

_Waiter = Callable[[H2Connection | ConnectError], None]
# How long a new HTTP/2 connection may take to send its SETTINGS (the first frame a
# server sends, RFC 9113 3.4) before it is given up.
SETTINGS_TIMEOUT: Final = 10.0
# Opens a connection to a peer or the app with the given protocol factory.
Opener = Callable[
    [Callable[[], H2Connection]], Awaitable[tuple[asyncio.BaseTransport, asyncio.Protocol]]
]


def grpc_status_label(value: bytes | None) -> bytes | None:
    """grpc-status as a metric label: one of gRPC's 17 codes, or "unknown" (bounded)."""
    if value is None:
        return None
    return value if value.isdigit() and int(value) <= 16 else b"unknown"


class Links:
    """One multiplexed HTTP/2 connection per upstream (a peer endpoint or an app port).

    A draining connection (a GOAWAY either way, or its streams used up) takes no new
    streams: the next stream opens another, and the old one closes once idle.
    """

    def __init__(self, dp: Streams) -> None:
        self.dp = dp
        self.conns: dict[Pool, H2Connection] = {}
        self.waiting: dict[Pool, list[_Waiter]] = {}

    def get(
        self,
        key: Pool,
        name: str,
        opener: Opener,
        then: _Waiter,
    ) -> None:
        conn = self.conns.get(key)
        if conn is not None and not conn.closed and not conn.draining:
            then(conn)
            return
        waiters = self.waiting.get(key)
        if waiters is not None:
            waiters.append(then)
            return
        self.waiting[key] = [then]
        self.dp.spawn(self._open(key, name, opener))

    def sweep(self) -> None:
        """Drain the connections of endpoints gone from the snapshot (their pool is
        closed): no new streams, closed once their last one ends."""
        for key, conn in list(self.conns.items()):
            if key.closed:
                del self.conns[key]
                conn.draining = True
                if not conn.halves:
                    conn.close()

    async def _open(
        self,
        key: Pool,
        name: str,
        opener: Opener,
    ) -> None:
        def lost(conn: H2Connection) -> None:
            self.dp.h2_connections.discard(conn)
            if self.conns.get(key) is conn:
                del self.conns[key]

        def factory() -> H2Connection:
            conn = H2Connection(client_side=True, on_lost=lost, name=name)
            self.dp.h2_connections.add(conn)
            return conn

        result: H2Connection | ConnectError
        try:
            _, protocol = await opener(factory)
            assert isinstance(protocol, H2Connection)
            await _settled(protocol, name)
            result = protocol
            self.conns[key] = protocol
        except ConnectError as e:
            result = e
        except Exception as e:
            log.exception("proxy error connecting to %s", name)
            result = ConnectError(502, f"connect to {name} failed: {e}")
        for waiter in self.waiting.pop(key, []):
            waiter(result)


async def _settled(conn: H2Connection, name: str) -> None:
    """Wait for the peer's first SETTINGS on a new connection: streams opened before it
    are held to the engine's assumption of 100 at once (RFC 9113 6.5.2 leaves it open),
    and a burst past that was refused where the peer takes MAX_STREAMS."""
    if conn.peer_settings:
        return
    conn.settled = asyncio.get_running_loop().create_future()
    try:
        async with asyncio.timeout(SETTINGS_TIMEOUT):
            await conn.settled
    except TimeoutError:
        conn.close()
        raise ConnectError(
            504, f"{name} sent no HTTP/2 SETTINGS in {SETTINGS_TIMEOUT:g}s"
        ) from None
    if conn.closed:
        raise ConnectError(502, f"{name} closed the connection before its HTTP/2 SETTINGS")


def observe(
    dp: Streams, direction: str, pair: StreamPair, headers: Headers, caller: Caller
) -> tuple[StreamRequest, Headers]:
    """Hooks are on (proxy.hooks): what they will read of this stream, and the headers
    it goes on with (a span started, its context written in their place). Until the
    side sets its own `on_done` (which must call `observed`), one reports the end."""
    request = StreamRequest(headers, caller)
    tracer = dp.tracer
    if tracer is not None:
        request.trace, headers = tracer.start_stream(
            request.head.method, headers, direction == "outbound"
        )
    pair.on_done = lambda p: observed(dp, direction, request, p)
    return request, headers


def observed(dp: Streams, direction: str, request: StreamRequest, pair: StreamPair) -> None:
    """A stream with a `StreamRequest` ended: tap, access log, span."""
    hooks = dp.hooks
    if hooks is not None:
        seconds = perf_counter() - pair.started
        hooks.finished(
            direction,
            request,
            pair.status,
            seconds,
            protocol=request.protocol,
            grpc_status=pair.grpc_status,
        )


def serve(
    dp: Streams,
    transport: asyncio.BaseTransport,
    handler: StreamHandler,
    data: bytes,
    name: str,
) -> None:
    """Make `transport` an HTTP/2 server connection whose streams go to `handler`."""
    conn = H2Connection(client_side=False, handler=handler, name=name)
    conn.in_flight = dp.in_flight
    dp.h2_connections.add(conn)
    conn.on_lost = dp.h2_connections.discard
    transport.set_protocol(conn)
    conn.connection_made(transport)
    if data:
        conn.data_received(data)
