"""The proxy's metrics: plain counters and fixed-bucket histograms in memory.

A label set is looked up once and its cell kept by whoever records into it (a route,
a connection), so recording a request is attribute arithmetic, not string building.
Text is produced only when Prometheus scrapes.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Final

# Seconds; Linkerd's and Envoy's latency buckets cover the same span.
BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BUCKET_TEXT: Final = tuple(f"{b:g}" for b in BUCKETS)

REQUEST_LABELS: Final = (
    "direction",
    "src_namespace",
    "src_service",
    "dst_namespace",
    "dst_service",
    "code",
    "tls",
)
# gRPC responses carry one more: the grpc-status the call ended with.
GRPC_REQUEST_LABELS: Final = (*REQUEST_LABELS, "grpc_status")
# An outbound request that an HTTPRoute or GRPCRoute rule matched names that route last
# (decision 0031); one that no rule matched has neither label, so it is no route's.
ROUTE_LABELS: Final = ("route_namespace", "route_name")
# A cell's label values alone say which names they go with: each set has its own length.
_REQUEST_LABEL_NAMES: Final[dict[int, tuple[str, ...]]] = {
    len(names): names
    for names in (
        REQUEST_LABELS,
        GRPC_REQUEST_LABELS,
        (*REQUEST_LABELS, *ROUTE_LABELS),
        (*GRPC_REQUEST_LABELS, *ROUTE_LABELS),
    )
}
TCP_LABELS: Final = ("direction", "peer_namespace", "peer_service", "tls")

# Label sets made from what peers send (the source service header) are capped, so a
# peer cannot grow this proxy's memory without bound.
MAX_SERIES: Final = 10_000


class RequestStats:
    """`gossamer_requests_total` and `gossamer_request_duration_seconds` for one label set."""

    __slots__ = ("buckets", "count", "labels", "sum")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        self.buckets[bisect_left(BUCKETS, seconds)] += 1


class TcpStats:
    """Open connections and bytes carried for one label set."""

    __slots__ = ("bytes_received", "bytes_sent", "labels", "open")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.open = 0
        # From the point of view of the side that opened the connection.
        self.bytes_sent = 0
        self.bytes_received = 0


class ResilienceStats:
    """What retries and outlier detection did for one destination service: counters
    that outlive snapshots, like the service's request series."""

    __slots__ = ("budget_exhausted", "ejections", "labels", "retries")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.retries = 0  # tries sent again
        self.budget_exhausted = 0  # retries the retry budget refused
        self.ejections = 0  # endpoints ejected by outlier detection


RESILIENCE_LABELS: Final = ("dst_namespace", "dst_service")
ROUTED_RESILIENCE_LABELS: Final = (*RESILIENCE_LABELS, *ROUTE_LABELS)


def _request_label_text(labels: tuple[str, ...]) -> str:
    return _label_text(_REQUEST_LABEL_NAMES[len(labels)], labels)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(names: Iterable[str], values: Iterable[str]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


class Metrics:
    def __init__(self) -> None:
        self._requests: dict[tuple[str, ...], RequestStats] = {}
        self._tcp: dict[tuple[str, ...], TcpStats] = {}
        self._resilience: dict[tuple[str, ...], ResilienceStats] = {}
        # Captured connections to addresses outside the mesh, by what became of them
        # (passthrough, refused), and mesh DNS queries by how they were answered
        # (mesh, forwarded, failed, malformed): docs/decisions/0061.
        self.outside_mesh: dict[str, int] = {"passthrough": 0, "refused": 0}
        self.dns_queries: dict[str, int] = {}
        # When the counters began: a scraper tells a restart from a quiet spell by it.
        self.started_at = time.time()

    def request_stats(
        self,
        direction: str,
        src_namespace: str,
        src_service: str,
        dst_namespace: str,
        dst_service: str,
        code: int,
        tls: bool,
        grpc_status: str | None = None,
        route: tuple[str, str] | None = None,
    ) -> RequestStats:
        """The cell for one label set; `route` is (route_namespace, route_name)."""
        labels: tuple[str, ...] = (
            direction,
            src_namespace,
            src_service,
            dst_namespace,
            dst_service,
            str(code),
            "true" if tls else "false",
        )
        if grpc_status is not None:
            labels = (*labels, grpc_status)
        if route is not None:
            labels = (*labels, *route)
        stats = self._requests.get(labels)
        if stats is None:
            if len(self._requests) >= MAX_SERIES:
                labels = (*labels[:2], "overflow", *labels[3:])
                stats = self._requests.get(labels)
            if stats is None:
                stats = self._requests[labels] = RequestStats(labels)
        return stats

    def tcp_stats(
        self, direction: str, peer_namespace: str, peer_service: str, tls: bool
    ) -> TcpStats:
        labels = (direction, peer_namespace, peer_service, "true" if tls else "false")
        stats = self._tcp.get(labels)
        if stats is None:
            stats = self._tcp[labels] = TcpStats(labels)
        return stats

    def resilience_stats(
        self, dst_namespace: str, dst_service: str, route: tuple[str, str] | None = None
    ) -> ResilienceStats:
        """The retry and ejection counters for one destination service (from the
        snapshot's services, so bounded by them); `route` (route_namespace,
        route_name): those of the calls a route's rule sent there (decision 0082)."""
        labels = (
            (dst_namespace, dst_service) if route is None else (dst_namespace, dst_service, *route)
        )
        stats = self._resilience.get(labels)
        if stats is None:
            stats = self._resilience[labels] = ResilienceStats(labels)
        return stats

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        out: list[str] = [
            "# HELP gossamer_requests_total HTTP requests the proxy answered.",
            "# TYPE gossamer_requests_total counter",
        ]
        requests = sorted(self._requests.values(), key=lambda s: s.labels)
        for s in requests:
            out.append(f"gossamer_requests_total{{{_request_label_text(s.labels)}}} {s.count}")
        out.append(
            "# HELP gossamer_request_duration_seconds Time from a request's head to the "
            "end of its response."
        )
        out.append("# TYPE gossamer_request_duration_seconds histogram")
        for s in requests:
            labels = _request_label_text(s.labels)
            cumulative = 0
            for le, n in zip(_BUCKET_TEXT, s.buckets, strict=False):
                cumulative += n
                out.append(
                    f'gossamer_request_duration_seconds_bucket{{{labels},le="{le}"}} {cumulative}'
                )
            out.append(f'gossamer_request_duration_seconds_bucket{{{labels},le="+Inf"}} {s.count}')
            out.append(f"gossamer_request_duration_seconds_sum{{{labels}}} {s.sum!r}")
            out.append(f"gossamer_request_duration_seconds_count{{{labels}}} {s.count}")
        tcp = sorted(self._tcp.values(), key=lambda s: s.labels)
        out.append("# HELP gossamer_tcp_open_connections Opaque TCP connections open now.")
        out.append("# TYPE gossamer_tcp_open_connections gauge")
        for t in tcp:
            out.append(
                f"gossamer_tcp_open_connections{{{_label_text(TCP_LABELS, t.labels)}}} {t.open}"
            )
        out.append("# HELP gossamer_tcp_bytes_total Bytes carried over opaque TCP connections.")
        out.append("# TYPE gossamer_tcp_bytes_total counter")
        for t in tcp:
            labels = _label_text(TCP_LABELS, t.labels)
            out.append(f'gossamer_tcp_bytes_total{{{labels},flow="sent"}} {t.bytes_sent}')
            out.append(f'gossamer_tcp_bytes_total{{{labels},flow="received"}} {t.bytes_received}')
        resilience = sorted(self._resilience.values(), key=lambda s: s.labels)
        for name, help_text, attr in (
            ("gossamer_retries_total", "Requests sent again by a retry policy.", "retries"),
            (
                "gossamer_retry_budget_exhausted_total",
                "Retries the retry budget refused (the request failed instead).",
                "budget_exhausted",
            ),
            (
                "gossamer_outlier_ejections_total",
                "Endpoints ejected by outlier detection.",
                "ejections",
            ),
        ):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} counter")
            for r in resilience:
                names = (
                    RESILIENCE_LABELS if len(r.labels) == 2 else (*RESILIENCE_LABELS, *ROUTE_LABELS)
                )
                labels = _label_text(names, r.labels)
                out.append(f"{name}{{{labels}}} {getattr(r, attr)}")
        out.append(
            "# HELP gossamer_outside_mesh_connections_total Captured connections to "
            "addresses outside the mesh: passed through, or refused (REGISTRY_ONLY)."
        )
        out.append("# TYPE gossamer_outside_mesh_connections_total counter")
        for action, n in sorted(self.outside_mesh.items()):
            out.append(f'gossamer_outside_mesh_connections_total{{action="{action}"}} {n}')
        out.append("# HELP gossamer_dns_queries_total DNS queries the proxy's resolver took.")
        out.append("# TYPE gossamer_dns_queries_total counter")
        for how, n in sorted(self.dns_queries.items()):
            out.append(f'gossamer_dns_queries_total{{answer="{_escape(how)}"}} {n}')
        out.append("# HELP process_start_time_seconds When the proxy started (Unix time).")
        out.append("# TYPE process_start_time_seconds gauge")
        out.append(f"process_start_time_seconds {self.started_at:.3f}")
        out.append("")
        return "\n".join(out)
