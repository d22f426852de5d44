"""What happens when a request ends, beyond its metrics: tap, access log, span.

The sides call `dp.hooks.finished(...)` where they record metrics, and only when
`dp.hooks` is not None: with no tapper, no access log and no tracing, that one
attribute read is all the hot path pays. The event built here is the same for the
three: a tap line, an access log line, and the source of a span's attributes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gossamer.proxy.accesslog import AccessLog
from gossamer.proxy.tap import TapHub

if TYPE_CHECKING:
    from gossamer.proxy.dataplane import DataPlane
    from gossamer.proxy.httpproxy import Exchange
    from gossamer.proxy.tracing_hooks import ProxyTracer


class RequestHooks:
    def __init__(
        self,
        dp: DataPlane,
        taps: TapHub,
        access_log: AccessLog | None,
        tracer: ProxyTracer | None,
    ) -> None:
        self.dp = dp
        self.taps = taps
        self.access_log = access_log
        self.tracer = tracer

    @property
    def active(self) -> bool:
        return self.taps.active or self.access_log is not None or self.tracer is not None

    def finished(self, direction: str, ex: Exchange, status: int, seconds: float) -> None:
        head = ex.head
        span = ex.trace
        tapped = self.taps.active and self.taps.wanted(direction, head.method, head.target)
        if not tapped and self.access_log is None and span is None:
            return
        event = request_event(self.dp, direction, ex, status, seconds)
        if span is not None and self.tracer is not None:
            ex.trace = None
            table = self.dp.table
            self.tracer.finish(span, event, (table.workload, table.namespace, table.service))
            event["trace_id"] = span.trace_id.hex()
            event["span_id"] = span.span_id.hex()
        if tapped:
            self.taps.publish(direction, head.method, head.target, event)
        if self.access_log is not None:
            self.access_log.write(event)


def request_event(
    dp: DataPlane, direction: str, ex: Exchange, status: int, seconds: float
) -> dict[str, Any]:
    """One finished request as the mesh sees it: who called whom, what, how it went."""
    head = ex.head
    table = dp.table
    snapshot = dp.snapshot
    me = {
        "workload": table.workload,
        "namespace": table.namespace,
        "service": table.service,
        "identity": snapshot.proxy.identity if snapshot is not None else None,
    }
    conn = ex.conn
    route = ex.route
    route_label = getattr(route, "label", None)
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
        "method": head.method.decode("latin-1"),
        "path": head.target.decode("latin-1"),
        "authority": head.host.decode("latin-1") if head.host is not None else None,
        "status": status,
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
