"""What happens when a request ends, beyond its metrics: tap, access log, span.

The sides call `dp.hooks.finished(...)` where they record metrics, and only when
`dp.hooks` is not None: with no tapper, no access log and no tracing, that one
attribute read is all the hot path pays. The event built here is the same for the
three: a tap line, an access log line, and the source of a span's attributes.

A request is an HTTP/1.1 `Exchange` or an HTTP/2 stream's `StreamRequest`: both offer
what `Observed` names, so one event builder serves both. HTTP/2 sides read `dp.hooks`
once when a stream starts and make a `StreamRequest` only when it is not None.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from gossamer.proxy.observe.accesslog import AccessLog
from gossamer.proxy.observe.tap import TapHub
from gossamer.proxy.wire.http1 import SRC_SERVICE_HEADER, Headers, RequestHead
from gossamer.proxy.wire.http2 import header

if TYPE_CHECKING:
    from collections.abc import Callable

    from gossamer.proxy.observe.tracing import ProxyTracer
    from gossamer.proxy.policy.balancer import Balancer
    from gossamer.proxy.policy.routing import LocalRoute, Route
    from gossamer.telemetry.tracing import Span

HTTP2: Final = "HTTP/2"


@dataclass(frozen=True, slots=True)
class Local:
    """This proxy as its events name it (the data plane says, from its snapshot)."""

    workload: str
    namespace: str
    service: str
    identity: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "namespace": self.namespace,
            "service": self.service,
            "identity": self.identity,
        }


class Caller(Protocol):
    """What the hooks read of the connection a request came on."""

    @property
    def peer_address(self) -> bytes: ...
    @property
    def peer_identity(self) -> str | None: ...
    @property
    def peer_namespace(self) -> str: ...


class Observed(Protocol):
    """A request as the hooks read it: an `httpproxy.Exchange`, or a `StreamRequest`."""

    trace: Span | None  # this hop's span while tracing is on and the request sampled

    @property
    def head(self) -> RequestHead: ...
    @property
    def conn(self) -> Caller: ...
    @property
    def route(self) -> Route[Any] | LocalRoute | None: ...
    @property
    def peer(self) -> str: ...
    @property
    def balancer(self) -> Balancer[Any] | None: ...
    @property
    def tried(self) -> int: ...
    @property
    def retries(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StreamCaller:
    """The connection of an HTTP/2 stream, as `Caller` (a `ServerConnection` is one for
    HTTP/1.1)."""

    peer_address: bytes
    peer_identity: str | None
    peer_namespace: str


# Outbound, the caller is the local app: as for HTTP/1.1, no address or identity.
APP_CALLER: Final = StreamCaller(b"", None, "")


class StreamRequest:
    """An HTTP/2 stream as the hooks read it: the parts of an `Exchange` they use.

    Made when the stream starts, only while hooks are on; the side fills in where it
    went (`route`, `balancer`, `tried`, `peer`) as it routes the stream.
    """

    __slots__ = (
        "balancer",
        "conn",
        "head",
        "peer",
        "protocol",
        "retries",
        "route",
        "trace",
        "tried",
    )

    def __init__(self, headers: Headers, conn: Caller) -> None:
        head = RequestHead()
        head.method = header(headers, b":method") or b""
        head.target = header(headers, b":path") or header(headers, b":authority") or b""
        head.host = header(headers, b":authority") or header(headers, b"host")
        head.src_service = header(headers, SRC_SERVICE_HEADER)
        self.head = head
        self.conn = conn
        self.route: Route[Any] | LocalRoute | None = None
        self.peer = "upstream"
        self.balancer: Balancer[Any] | None = None
        self.tried = -1
        self.retries = 0
        self.trace: Span | None = None
        # What the caller spoke: HTTP/2, or HTTP/1.x carried as a stream between proxies.
        self.protocol = HTTP2


class RequestHooks:
    def __init__(
        self,
        local: Callable[[], Local],
        taps: TapHub,
        access_log: AccessLog | None,
        tracer: ProxyTracer | None,
    ) -> None:
        self.local = local
        self.taps = taps
        self.access_log = access_log
        self.tracer = tracer

    @property
    def active(self) -> bool:
        return self.taps.active or self.access_log is not None or self.tracer is not None

    def finished(
        self,
        direction: str,
        ex: Observed,
        status: int,
        seconds: float,
        *,
        protocol: str | None = None,
        grpc_status: bytes | None = None,
    ) -> None:
        """`ex` ended with `status` after `seconds`. `protocol` is None for HTTP/1.x
        (the head says which), `HTTP2` for a stream; `grpc_status` as the response
        carried it."""
        head = ex.head
        span = ex.trace
        tapped = self.taps.active and self.taps.wanted(direction, head.method, head.target)
        if not tapped and self.access_log is None and span is None:
            return
        me = self.local()
        event = request_event(me, direction, ex, status, seconds, protocol, grpc_status)
        if span is not None and self.tracer is not None:
            ex.trace = None
            self.tracer.finish(span, event, (me.workload, me.namespace, me.service))
            event["trace_id"] = span.trace_id.hex()
            event["span_id"] = span.span_id.hex()
        if tapped:
            self.taps.publish(direction, head.method, head.target, event)
        if self.access_log is not None:
            self.access_log.write(event)


def request_event(
    local: Local,
    direction: str,
    ex: Observed,
    status: int,
    seconds: float,
    protocol: str | None = None,
    grpc_status: bytes | None = None,
) -> dict[str, Any]:
    """One finished request as the mesh sees it: who called whom, what, how it went."""
    head = ex.head
    me = local.as_dict()
    conn = ex.conn
    route = ex.route
    route_label = route.label if route is not None else None
    upstream = None if ex.peer == "upstream" else ex.peer
    if direction == "outbound":
        source = me
        destination: dict[str, Any] = {
            "workload": None,
            "namespace": getattr(route, "namespace", None),
            "service": getattr(route, "name", None),
            "identity": None,
        }
        balancer = ex.balancer
        if balancer is not None and 0 <= ex.tried < len(balancer.items):
            endpoint = getattr(balancer.items[ex.tried], "endpoint", None)
            if endpoint is not None:
                destination["workload"] = endpoint.workload
                destination["namespace"] = endpoint.namespace
                destination["identity"] = endpoint.identity
        tls = True
    else:
        src = head.src_service
        source = {
            "workload": None,
            "namespace": conn.peer_namespace or None,
            "service": src.decode("latin-1") if src else None,
            "identity": conn.peer_identity,
        }
        destination = me
        tls = conn.peer_identity is not None
    return {
        "type": "request",
        "time": _rfc3339(time.time() - seconds),
        "direction": direction,
        "source": source,
        "client_address": conn.peer_address.decode("latin-1") or None,
        "destination": destination,
        "protocol": protocol or ("HTTP/1.1" if head.http11 else "HTTP/1.0"),
        "method": head.method.decode("latin-1"),
        "path": head.target.decode("latin-1"),
        "authority": head.host.decode("latin-1") if head.host is not None else None,
        "status": status,
        "grpc_status": int(grpc_status) if grpc_status and grpc_status.isdigit() else None,
        "latency_ms": round(seconds * 1000, 3),
        "tls": tls,
        "route": route_label,
        "upstream": upstream,
        "retries": ex.retries,
    }


def _rfc3339(t: float) -> str:
    whole = int(t)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((t - whole) * 1000):03d}Z"
    )
