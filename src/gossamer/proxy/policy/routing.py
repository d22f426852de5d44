"""Routing tables built from a snapshot: host → route → endpoints.

A `RouteTable` is made once per snapshot and never changed after, except for its
host cache, which only memoises what the snapshot already implies. Requests read
whichever table is current when their head arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from gossamer.proxy.observe.metrics import Metrics, RequestStats, ResilienceStats
from gossamer.proxy.policy.balancer import Balancer, EndpointLoad
from gossamer.proxy.policy.control import ControlRegistry, EdgeControl
from gossamer.proxy.policy.resilience import Limits, OutlierDetector, RetryBudget, RetryPolicy
from gossamer.proxy.policy.routematch import Router
from gossamer.resources import resolve_authority
from gossamer.translate.routetypes import FaultSpec, RetrySpec
from gossamer.translate.snapshot import Endpoint, LocalPort, ServiceView, Snapshot

if TYPE_CHECKING:
    from gossamer.proxy.inbound.http import AppPool

P = TypeVar("P")

_HOST_CACHE_MAX: Final = 4096


class Route(Generic[P]):
    """One service port: where its requests go and where they are counted."""

    __slots__ = (
        "_metrics",
        "_stat_labels",
        "balancer",
        "budget",
        "controls",
        "fault",
        "grpc_stats",
        "label",
        "limits",
        "managed",
        "name",
        "namespace",
        "outlier",
        "port",
        "retry",
        "route_grpc_stats",
        "route_stats",
        "router",
        "stats",
    )

    def __init__(
        self,
        name: str,
        namespace: str,
        port: int,
        balancer: Balancer[P],
        metrics: Metrics,
        src: tuple[str, str],
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.port = port
        self.label = f"{name}.{namespace}:{port}"
        self.balancer = balancer
        self._metrics = metrics
        self._stat_labels = src
        self.stats: dict[int, RequestStats] = {}
        self.grpc_stats: dict[tuple[int, bytes], RequestStats] = {}
        # The same, for requests an HTTPRoute (or GRPCRoute) rule sent here, by that
        # route's "namespace/name": as many as the snapshot has routes, no more.
        self.route_stats: dict[str, dict[int, RequestStats]] = {}
        self.route_grpc_stats: dict[str, dict[tuple[int, bytes], RequestStats]] = {}
        # Traffic management, all None unless a route or policy applies: the HTTPRoutes
        # attached to this service port, and the policies for calls to the service.
        self.router: Router[Route[P]] | None = None
        self.retry: RetryPolicy | None = None
        self.budget: RetryBudget | None = None
        self.outlier: OutlierDetector | None = None
        self.limits: Limits | None = None
        self.fault: FaultSpec | None = None
        # The TrafficControls on calls from this proxy to the service (proxy.policy.control).
        self.controls: tuple[EdgeControl, ...] = ()
        self.managed = False  # whether any of the above is set (the fast path skips them)

    def grpc_stats_for(self, code: int, grpc_status: bytes, via: str | None = None) -> RequestStats:
        """The cell for a gRPC call: labelled with its grpc-status as well."""
        key = (code, grpc_status)
        if via is None:
            stats = self.grpc_stats.get(key)
        else:
            cells = self.route_grpc_stats.get(via)
            stats = None if cells is None else cells.get(key)
        if stats is None:
            stats = self._metrics.request_stats(
                "outbound", *self._stat_labels, self.namespace, self.name, code, True,
                grpc_status.decode("ascii"), _route_labels(via),
            )  # fmt: skip
            by_via = self.grpc_stats if via is None else self.route_grpc_stats.setdefault(via, {})
            by_via[key] = stats
        return stats

    def stats_for(self, code: int, via: str | None = None) -> RequestStats:
        """The cell for a request to this service port that ended with `code`.

        `via` is the "namespace/name" of the route whose rule matched the request
        (`RuleSpec.route`), None when no route did: that cell has no route labels
        (decision 0031). Either way the cell is made once and then only looked up.
        """
        if via is None:
            stats = self.stats.get(code)
        else:
            cells = self.route_stats.get(via)
            stats = None if cells is None else cells.get(code)
        if stats is None:
            stats = self._metrics.request_stats(
                "outbound", *self._stat_labels, self.namespace, self.name, code, True,
                None, _route_labels(via),
            )  # fmt: skip
            by_via = self.stats if via is None else self.route_stats.setdefault(via, {})
            by_via[code] = stats
        return stats


def _route_labels(via: str | None) -> tuple[str, str] | None:
    if via is None:
        return None
    namespace, _, name = via.partition("/")
    return namespace, name


@dataclass(frozen=True, slots=True)
class NoRoute:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class LocalRoute:
    """A port of this proxy's own workload: where peers' requests for it go."""

    label: str
    port: int
    balancer: Balancer[Any]
    pool: AppPool
    # The port's appProtocol says gRPC: the app speaks nothing but HTTP/2, and an
    # HTTP/1.1 request to it is answered by the proxy (not translated).
    grpc_only: bool = False
    # The port's appProtocol says the app speaks HTTP/2 (http2, grpc, h2c): streams go
    # to it as HTTP/2, else they are translated to HTTP/1.1 (proxy.inbound.h2to1).
    speaks_h2: bool = False

    def http1_refusal(self) -> str:
        """Why an HTTP/1.x request is not carried to a `grpc_only` app: over HTTP/1.1
        from the peer, or carried as a stream by it (proxy.outbound.h1to2)."""
        return (
            f"the app on port {self.port} is declared appProtocol grpc, which speaks only "
            "HTTP/2, and HTTP/1.1 is not translated to HTTP/2: call it with a gRPC client "
            "or HTTP/2 (h2c prior knowledge)"
        )


class RouteTable(Generic[P]):
    """What one snapshot says about where requests go.

    `lookup_host` answers a Route, a NoRoute, or a string: the "name.namespace" of a
    service the control plane has not been asked about yet.
    """

    def __init__(
        self,
        snapshot: Snapshot | None,
        cluster_domain: str,
        metrics: Metrics,
        peer: Callable[[Endpoint], tuple[P, EndpointLoad]],
        controls: ControlRegistry | None = None,
    ) -> None:
        """`controls` keeps the TrafficControls' state from one table to the next (the
        data plane's); without one, they start afresh."""
        self.snapshot = snapshot
        self.cluster_domain = cluster_domain
        self.metrics = metrics
        self.services: dict[tuple[str, str], ServiceView] = {}
        self.routes: dict[tuple[str, str, int], Route[P]] = {}
        self.local_ports: dict[int, LocalPort] = {}
        self.interests: frozenset[str] = frozenset()
        self.namespace = ""
        self.workload = ""
        self.service = ""
        self.src_service_line = b""
        self.src_service = b""  # its value, as an HTTP/2 stream carries it
        self._host_cache: dict[bytes, Route[P] | NoRoute | str] = {}
        # Filled in by the data plane: TLS server name → the local port it names.
        self.local_routes: dict[str, LocalRoute] = {}
        # Inbound cells by (peer namespace, source service, status, tls, grpc-status):
        # one lookup for HTTP/1.1 and HTTP/2, mTLS and plaintext (inbound_stats_for).
        self.inbound_stats: dict[
            tuple[str, bytes | None, int, bool, bytes | None], RequestStats
        ] = {}
        if snapshot is None:
            return
        me = snapshot.proxy
        self.namespace = me.namespace
        self.workload = me.workload
        self.service = me.services[0] if me.services else me.workload
        self.src_service = self.service.encode()
        self.src_service_line = b"gossamer-src-service: " + self.src_service + b"\r\n"
        self.interests = frozenset(snapshot.interests)
        self.local_ports = {p.port: p for p in me.ports}
        src = (self.namespace, self.service)
        for svc in snapshot.services:
            self.services[(svc.name, svc.namespace)] = svc
            for sp in svc.ports:
                pairs = [peer(e) for e in sp.endpoints]
                balancer = Balancer([p for p, _ in pairs], [load for _, load in pairs])
                self.routes[(svc.name, svc.namespace, sp.port)] = Route(
                    svc.name, svc.namespace, sp.port, balancer, metrics, src
                )
        self._apply_traffic_management(snapshot, controls or ControlRegistry())

    def _apply_traffic_management(self, snapshot: Snapshot, registry: ControlRegistry) -> None:
        policies = {p.service: p for p in snapshot.policies}
        governed = registry.update(snapshot.controls)
        # A TrafficControl's retryBudget replaces the service's own (the smallest, when
        # several apply).
        budgets: dict[str, RetryBudget] = {}
        for service, edges in governed.items():
            found = [e.retry_budget for e in edges if e.retry_budget is not None]
            if found:
                budgets[service] = min(found, key=lambda b: b.ratio)
        for route in self.routes.values():
            on_route = governed.get(f"{route.name}.{route.namespace}")
            if on_route:
                route.controls = on_route
                route.managed = True
        watched: set[int] = set()
        for route in self.routes.values():
            policy = policies.get(f"{route.name}.{route.namespace}")
            if policy is None:
                continue
            stats = self.metrics.resilience_stats(route.namespace, route.name)
            if policy.retry is not None:
                route.budget = budgets.get(f"{route.name}.{route.namespace}") or _budget(
                    policy.retry
                )
                route.retry = RetryPolicy(
                    policy.retry,
                    route.budget,
                    stats=stats,
                    stats_via=self._stats_via(route.namespace, route.name),
                )
            if policy.outlier is not None:
                route.outlier = OutlierDetector(policy.outlier, route.balancer.loads, stats)
                watched.update(id(load) for load in route.balancer.loads)
            if policy.limits is not None:
                route.limits = Limits(policy.limits)
            route.fault = policy.fault
            route.managed = True

        # Ejections outlive snapshots on the endpoints' loads; those no outlier policy
        # watches any more (it was removed) end now.
        for route in self.routes.values():
            for load in route.balancer.loads:
                if load.ejected_until and id(load) not in watched:
                    load.ejected_until = 0.0

        def resolve(service: str, port: int) -> Route[P] | None:
            name, _, namespace = service.partition(".")
            return self.routes.get((name, namespace, port))

        for sr in snapshot.routes:
            parent = resolve(sr.service, sr.port)
            if parent is None:
                continue
            router: Router[Route[P]] = Router(sr, resolve)
            for rule in router.rules:
                if rule.spec.retry is not None:
                    budget = (
                        parent.budget
                        or budgets.get(f"{parent.name}.{parent.namespace}")
                        or _budget(rule.spec.retry)
                    )
                    parent.budget = budget
                    rule.retry = RetryPolicy(
                        rule.spec.retry,
                        budget,
                        stats=self.metrics.resilience_stats(parent.namespace, parent.name),
                        stats_via=self._stats_via(parent.namespace, parent.name),
                    )
            parent.router = router
            parent.managed = True

    def _stats_via(self, namespace: str, name: str) -> Callable[[str], ResilienceStats]:
        """The retry counters of the calls a route ("namespace/name") sends to a service."""
        metrics = self.metrics

        def stats(via: str) -> ResilienceStats:
            route_ns, _, route_name = via.partition("/")
            return metrics.resilience_stats(namespace, name, (route_ns, route_name))

        return stats

    def inbound_stats_for(
        self,
        peer_namespace: str,
        src: bytes | None,
        code: int,
        tls: bool = True,
        grpc_status: bytes | None = None,
    ) -> RequestStats:
        """The cell for a request from a peer to this workload (HTTP/1.1 or HTTP/2):
        made once per snapshot, then only looked up. `src` is the caller's service as
        its proxy said (`l5d-dst`-like header), `grpc_status` already bounded."""
        key = (peer_namespace, src, code, tls, grpc_status)
        stats = self.inbound_stats.get(key)
        if stats is None:
            if len(self.inbound_stats) >= _HOST_CACHE_MAX:
                # The source service is a peer's word: never let it grow memory unbounded.
                self.inbound_stats.clear()
            stats = self.inbound_stats[key] = self.metrics.request_stats(
                "inbound",
                peer_namespace,
                src.decode("latin-1") if src else "unknown",
                self.namespace,
                self.service,
                code,
                tls,
                None if grpc_status is None else grpc_status.decode("ascii"),
            )
        return stats

    def unrouted_stats(self, code: int) -> RequestStats:
        """The cell for an outbound request answered before its service was known."""
        return self.metrics.request_stats(
            "outbound", self.namespace, self.service, "unknown", "unknown", code, True
        )

    def lookup_host(self, host: bytes) -> Route[P] | NoRoute | str:
        found = self._host_cache.get(host)
        if found is not None:
            return found
        found = self._resolve(host)
        if not isinstance(found, str):
            if len(self._host_cache) >= _HOST_CACHE_MAX:
                # Hosts come from applications; never let them grow memory unbounded.
                self._host_cache.clear()
            self._host_cache[host] = found
        return found

    def _resolve(self, host: bytes) -> Route[P] | NoRoute | str:
        text = host.decode("latin-1")
        ref = resolve_authority(text, self.namespace, self.cluster_domain)
        if ref is None:
            return NoRoute(503, f"no route for host {text}")
        return self.lookup_service(ref.name, ref.namespace, ref.port, text)

    def lookup_service(
        self, name: str, namespace: str, port: int | None, host: str
    ) -> Route[P] | NoRoute | str:
        svc = self.services.get((name, namespace))
        if svc is None:
            key = f"{name}.{namespace}"
            if key in self.interests:
                return NoRoute(503, f"no route for host {host}")
            return key
        if port is None:
            ports = [p.port for p in svc.ports]
            # Port 80 unless the service has exactly one other port.
            port = 80 if 80 in ports or len(ports) != 1 else ports[0]
        route = self.routes.get((name, namespace, port))
        if route is None:
            return NoRoute(503, f"no route for host {host}: service {svc.key} has no port {port}")
        return route


def _budget(spec: RetrySpec) -> RetryBudget:
    return RetryBudget(spec.budget_ratio, spec.budget_min_per_second, spec.budget_ttl)
