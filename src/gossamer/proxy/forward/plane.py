"""What the two sides of the proxy need of the data plane, as small Protocols.

`proxy.dataplane.DataPlane` owns the listeners, the route table, the certificates and
the sets of live connections; the sides (proxy.inbound, proxy.outbound) and the
HTTP/2 stream plumbing (proxy.forward.streams) read only what is named here, so they
never import the data plane and a test can hand them something smaller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from gossamer.proxy.forward.connect import ConnectSettings, Peers

if TYPE_CHECKING:
    from gossamer.proxy.forward.connect import PeerPool
    from gossamer.proxy.forward.exchange import ServerConnection
    from gossamer.proxy.observe.hooks import RequestHooks
    from gossamer.proxy.observe.metrics import Metrics
    from gossamer.proxy.observe.tracing import ProxyTracer
    from gossamer.proxy.policy.routing import RouteTable
    from gossamer.proxy.wire.detect import Sniffer
    from gossamer.proxy.wire.http2 import H2Connection
    from gossamer.proxy.wire.limits import InFlight
    from gossamer.proxy.wire.splice import Splice


class Settings(ConnectSettings, Protocol):
    """The data plane's settings that the sides read (DataPlaneConfig)."""

    @property
    def detect_timeout(self) -> float: ...
    @property
    def interest_timeout(self) -> float: ...
    @property
    def multiplex_http1(self) -> bool: ...


class Streams(Protocol):
    """What HTTP/2 connections and the hooks around their streams need."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def h2_connections(self) -> set[H2Connection]: ...
    @property
    def hooks(self) -> RequestHooks | None: ...
    @property
    def tracer(self) -> ProxyTracer | None: ...
    @property
    def in_flight(self) -> InFlight | None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class Plane(Peers, Streams, Protocol):
    """What either side reads: the route table of the current snapshot, the settings,
    the live connections it registers for sweeping and shutdown, and the metrics."""

    @property
    def config(self) -> Settings: ...
    @property
    def table(self) -> RouteTable[PeerPool]: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def connections(self) -> set[ServerConnection]: ...
    @property
    def splices(self) -> set[Splice]: ...
    @property
    def sniffers(self) -> set[Sniffer]: ...
    def await_interest(self, key: str, callback: Callable[[], None]) -> None: ...
