"""A proxy's snapshot as Envoy resources: listeners, clusters, routes, endpoints, secrets.

Pure, like `build_snapshot`: `envoy_resources(snapshot, node)` reads one snapshot and
where the Envoy listens, and returns protobuf-JSON dicts the xDS server
(`gossamer.xds`) packs into its responses. Envoy then speaks Gossamer's wire
convention (`docs/envoy.md`, decision 0070), so Envoy and Gossamer proxies call each
other in one mesh:

- to a peer: mTLS 1.3 to the endpoint's inbound listener, SNI
  `p<target_port>.<workload>.<namespace>.gossamer`, the peer's SPIFFE ID checked,
  ALPN `gossamer/h2` (HTTP/2 for every HTTP request) or `gossamer/tcp` (opaque bytes);
- from a peer: one inbound listener whose filter chains are chosen by that SNI and
  ALPN (`gossamer/h1`, `gossamer/h2`, `gossamer/tcp`), authorized by RBAC, then
  carried to the app on 127.0.0.1.

Resource names: listeners `outbound`, `inbound`, `tcp|SVC.NS|PORT`; route config
`outbound`; clusters and their endpoints `outbound|PORT||SVC.NS` and
`inbound|PORT`; secrets `default` (the workload's certificate) and `ROOTCA` (the trust
bundle).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Final

from gossamer.translate.envoy_rbac import http_rbac_filters, network_rbac_filters
from gossamer.translate.envoy_routes import (
    FAULT_FILTER,
    UNRESOLVED_CLUSTER,
    default_route,
    duration,
    routes_for,
)
from gossamer.translate.routetypes import ServicePolicy, ServiceRoutes
from gossamer.translate.snapshot import Endpoint, LocalPort, ServicePort, Snapshot

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "SECRET",
    "TYPE_ORDER",
    "EnvoyNode",
    "EnvoyResources",
    "TcpUpstream",
    "envoy_resources",
    "own_service",
    "secrets",
    "stat_prefix",
]

_T = "type.googleapis.com/"
LISTENER: Final = _T + "envoy.config.listener.v3.Listener"
CLUSTER: Final = _T + "envoy.config.cluster.v3.Cluster"
ROUTE: Final = _T + "envoy.config.route.v3.RouteConfiguration"
ENDPOINT: Final = _T + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET: Final = _T + "envoy.extensions.transport_sockets.tls.v3.Secret"
# The order an ADS server sends a change in, so nothing names what Envoy lacks yet:
# clusters, then their endpoints, then listeners, then their routes (Envoy's xDS
# protocol doc, "eventual consistency considerations"). Secrets go first: a cluster
# or listener waits for them.
TYPE_ORDER: Final = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)

ALPN_H1: Final = "gossamer/h1"
ALPN_H2: Final = "gossamer/h2"
ALPN_TCP: Final = "gossamer/tcp"
CERTIFICATE_SECRET: Final = "default"
TRUST_SECRET: Final = "ROOTCA"

# As docs/protocols.md says: these appProtocols are opaque TCP, these HTTP/2 to the app.
OPAQUE_APP_PROTOCOLS: Final = frozenset(
    ("tcp", "opaque", "tls", "https", "kubernetes.io/wss", "mysql", "mongo", "redis")
)
H2_APP_PROTOCOLS: Final = frozenset(("http2", "grpc", "h2c", "kubernetes.io/h2c"))

_ADS: Final = {"ads": {}, "resource_api_version": "V3"}
_HTTP_OPTIONS: Final = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HCM: Final = (
    _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_TCP_PROXY: Final = _T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_ROUTER: Final = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"},
}
_TLS_PARAMS: Final = {
    "tls_minimum_protocol_version": "TLSv1_3",
    "tls_maximum_protocol_version": "TLSv1_3",
}


@dataclass(frozen=True, slots=True)
class TcpUpstream:
    """`--upstream SVC.NS:PORT=HOST:LISTEN_PORT`: a local listener for one service port."""

    service: str  # "name.namespace"
    port: int
    host: str
    listen_port: int


@dataclass(frozen=True, slots=True)
class EnvoyNode:
    """Where one Envoy listens, from the node metadata its bootstrap sends."""

    inbound: tuple[str, int] | None = None
    outbound: tuple[str, int] | None = None
    upstreams: tuple[TcpUpstream, ...] = ()
    app_host: str = "127.0.0.1"


@dataclass(frozen=True)
class EnvoyResources:
    """Every resource of one snapshot, per type URL and name, with a version each."""

    by_type: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def version(self, type_url: str, names: frozenset[str] | None = None) -> str:
        """A version that changes exactly when the resources (of `names`) change."""
        chosen = self.pick(type_url, names)
        body = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def pick(self, type_url: str, names: frozenset[str] | None) -> dict[str, dict[str, Any]]:
        """The resources of one type: all of them (`names` None: a wildcard
        subscription) or those named that exist."""
        resources = self.by_type.get(type_url, {})
        if names is None:
            return dict(sorted(resources.items()))
        return {n: resources[n] for n in sorted(names) if n in resources}


SRC_SERVICE_HEADER: Final = "gossamer-src-service"


def own_service(snapshot: Snapshot) -> str:
    """The service a proxy's own metrics name it by: the first that selects its
    workload, else the workload's name (as the Gossamer proxy does)."""
    me = snapshot.proxy
    return me.services[0] if me.services else me.workload


def stat_prefix(direction: str, snapshot: Snapshot) -> str:
    """An HTTP connection manager's stat prefix: `DIRECTION~NAMESPACE~SERVICE`, so
    Envoy's own stats say which service they are (gossamer.xds.metrics reads it back;
    names hold no `~` and a stat prefix no `.`)."""
    return f"{direction}~{snapshot.proxy.namespace}~{own_service(snapshot)}"


def _cluster_name(service: str, port: int) -> str:
    return f"outbound|{port}||{service}"


def _tcp_cluster_name(service: str, port: int) -> str:
    """Opaque TCP to a service port goes over its own cluster (ALPN `gossamer/tcp`)."""
    return f"outbound|{port}|tcp|{service}"


def _sni(endpoint: Endpoint) -> str:
    return f"p{endpoint.target_port}.{endpoint.workload}.{endpoint.namespace}.gossamer"


def _sds(name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": _ADS}


def _common_tls(alpn: list[str], san: dict[str, Any]) -> dict[str, Any]:
    return {
        "tls_params": _TLS_PARAMS,
        "alpn_protocols": alpn,
        "tls_certificate_sds_secret_configs": [_sds(CERTIFICATE_SECRET)],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}]
            },
            "validation_context_sds_secret_config": _sds(TRUST_SECRET),
        },
    }


def _upstream_tls(endpoint: Endpoint, alpn: str) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": _sni(endpoint),
            "common_tls_context": _common_tls([alpn], {"exact": endpoint.identity}),
        },
    }


def _downstream_tls(trust_domain: str) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _common_tls(
                [ALPN_H2, ALPN_H1, ALPN_TCP], {"prefix": f"spiffe://{trust_domain}/"}
            ),
        },
    }


def _endpoint_key(endpoint: Endpoint) -> str:
    return f"{endpoint.workload}.{endpoint.namespace}:{endpoint.target_port}"


def _h2_options() -> dict[str, Any]:
    return {
        _HTTP_OPTIONS: {
            "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_opaque(port: ServicePort, routes: ServiceRoutes | None) -> bool:
    """Whether a service port carries opaque TCP only (no HTTP route for it)."""
    return bool(routes is not None and routes.tcp_rules) or (
        (port.app_protocol or "").lower() in OPAQUE_APP_PROTOCOLS
    )


def _tcp_targets(snapshot: Snapshot, node: EnvoyNode) -> set[tuple[str, int]]:
    """The service ports opaque TCP may go to: a TCP upstream's, its TCPRoute's
    backends, and every port declared opaque."""
    routes = {(r.service, r.port): r for r in snapshot.routes}
    out = {
        (svc.key, p.port)
        for svc in snapshot.services
        for p in svc.ports
        if _is_opaque(p, routes.get((svc.key, p.port)))
    }
    for up in node.upstreams:
        out.add((up.service, up.port))
    for r in snapshot.routes:
        for i in r.tcp_rules[:1]:
            out.update((b.service, b.port) for b in r.rules[i].backends if b.error is None)
    return out


def _outbound_cluster(
    service: str, port: ServicePort, opaque: bool, policy: ServicePolicy | None
) -> dict[str, Any]:
    name = (_tcp_cluster_name if opaque else _cluster_name)(service, port.port)
    alpn = ALPN_TCP if opaque else ALPN_H2
    cluster: dict[str, Any] = {
        "name": name,
        # Stats name the cluster up to its first dot: none in this one
        # (gossamer.xds.metrics reads the service back from it).
        "alt_stat_name": name.replace(".", "~"),
        "type": "EDS",
        "eds_cluster_config": {"eds_config": _ADS, "service_name": name},
        "connect_timeout": "5s",
        "lb_policy": "LEAST_REQUEST",
        # Each endpoint gets the TLS its SNI and SPIFFE ID call for (its metadata
        # picks the match; see _load_assignment).
        "transport_socket_matches": [
            {
                "name": _endpoint_key(ep),
                "match": {"endpoint": _endpoint_key(ep)},
                "transport_socket": _upstream_tls(ep, alpn),
            }
            for ep in port.endpoints
        ],
    }
    if not opaque:
        cluster["typed_extension_protocol_options"] = _h2_options()
    if policy is not None and policy.outlier is not None:
        o = policy.outlier
        outlier: dict[str, Any] = {
            "consecutive_5xx": o.consecutive_failures,
            "consecutive_gateway_failure": o.consecutive_failures,
            "interval": duration(o.interval),
            "base_ejection_time": duration(o.base_ejection_time),
            "max_ejection_time": duration(o.max_ejection_time),
            "max_ejection_percent": o.max_ejected_percent,
        }
        if o.failure_rate_percent is not None:
            outlier["failure_percentage_threshold"] = o.failure_rate_percent
            outlier["enforcing_failure_percentage"] = 100
            outlier["failure_percentage_request_volume"] = o.failure_rate_minimum_requests
            outlier["failure_percentage_minimum_hosts"] = 1
        cluster["outlier_detection"] = outlier
    thresholds: dict[str, Any] = {}
    if policy is not None and policy.limits is not None:
        limits = policy.limits
        for key, value in (
            ("max_connections", limits.max_connections),
            ("max_pending_requests", limits.max_pending_requests),
            ("max_requests", limits.max_requests),
        ):
            if value is not None:
                thresholds[key] = value
    if policy is not None and policy.retry is not None:
        # Envoy's budget is of retries in flight, not per second (decision 0071).
        thresholds["retry_budget"] = {
            "budget_percent": {"value": policy.retry.budget_ratio * 100},
            "min_retry_concurrency": max(1, round(policy.retry.budget_min_per_second)),
        }
    if thresholds:
        cluster["circuit_breakers"] = {"thresholds": [thresholds]}
    return cluster


def _load_assignment(name: str, endpoints: list[tuple[Endpoint, str]]) -> dict[str, Any]:
    lb_endpoints = [
        {
            "endpoint": {"address": _address(ep.address, ep.inbound_port)},
            "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"endpoint": key}}},
        }
        for ep, key in endpoints
    ]
    out: dict[str, Any] = {"cluster_name": name}
    if lb_endpoints:
        out["endpoints"] = [{"lb_endpoints": lb_endpoints}]
    return out


def _domains(service: str, port: int, own_namespace: str) -> list[str]:
    name, _, namespace = service.partition(".")
    hosts = [
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.cluster.local",
    ]
    if namespace == own_namespace:
        hosts.insert(0, name)
    out = [f"{h}:{port}" for h in hosts]
    if port == 80:
        out = hosts + out
    return out


def _hcm(
    stat_prefix: str,
    codec: str,
    filters: list[dict[str, Any]],
    routes: dict[str, Any],
) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": stat_prefix,
            "codec_type": codec,
            **routes,
            "http_filters": [*filters, _ROUTER],
            # Gossamer's own proxy has no idle limit on a request either.
            "stream_idle_timeout": "0s",
        },
    }


def _fault_filter() -> dict[str, Any]:
    return {
        "name": FAULT_FILTER,
        "typed_config": {"@type": _T + "envoy.extensions.filters.http.fault.v3.HTTPFault"},
    }


def _tcp_proxy(stat_prefix: str, clusters: list[tuple[str, int]]) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": _TCP_PROXY, "stat_prefix": stat_prefix}
    if len(clusters) == 1:
        config["cluster"] = clusters[0][0]
    else:
        config["weighted_clusters"] = {
            "clusters": [{"name": name, "weight": weight} for name, weight in clusters]
        }
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}


def _inbound(
    snapshot: Snapshot, host: str, port: int, app_host: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The inbound listener: per local port, one filter chain for each ALPN a peer may
    send; and a cluster per local port, to the app."""
    me = snapshot.proxy
    http_filters = http_rbac_filters(snapshot.security)
    network_filters = network_rbac_filters(snapshot.security)
    tls = _downstream_tls(snapshot.trust_domain)
    chains: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    for lp in me.ports:
        sni = f"p{lp.port}.{me.workload}.{me.namespace}.gossamer"
        cluster = f"inbound|{lp.port}"
        clusters.append(_inbound_cluster(cluster, lp, app_host))
        route = {
            "route_config": {
                "name": cluster,
                "virtual_hosts": [
                    {
                        "name": cluster,
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {"cluster": cluster, "timeout": "0s"},
                            }
                        ],
                    }
                ],
            }
        }
        for alpn, codec in ((ALPN_H1, "HTTP1"), (ALPN_H2, "HTTP2")):
            chains.append(
                {
                    "name": f"{cluster}|{alpn}",
                    "filter_chain_match": {
                        "server_names": [sni],
                        "application_protocols": [alpn],
                    },
                    "filters": [_hcm(stat_prefix("inbound", snapshot), codec, http_filters, route)],
                    "transport_socket": tls,
                }
            )
        chains.append(
            {
                "name": f"{cluster}|{ALPN_TCP}",
                "filter_chain_match": {"server_names": [sni], "application_protocols": [ALPN_TCP]},
                "filters": [
                    *network_filters,
                    _tcp_proxy(f"inbound_tcp_{lp.port}", [(cluster, 1)]),
                ],
                "transport_socket": tls,
            }
        )
    listener = {
        "name": "inbound",
        "address": _address(host, port),
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": _T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                },
            }
        ],
        "filter_chains": chains,
    }
    return listener, clusters


def _inbound_cluster(name: str, lp: LocalPort, app_host: str) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(app_host, lp.app_port)}}]}
            ],
        },
    }
    if (lp.app_protocol or "").lower() in H2_APP_PROTOCOLS:
        cluster["typed_extension_protocol_options"] = _h2_options()
    return cluster


def _tcp_clusters(routes: ServiceRoutes | None, service: str, port: int) -> list[tuple[str, int]]:
    """A TCPRoute's weighted backends for a port, or the port's own cluster."""
    if routes is not None and routes.tcp_rules:
        rule = routes.rules[routes.tcp_rules[0]]
        picked = [
            (
                _tcp_cluster_name(b.service, b.port) if b.error is None else UNRESOLVED_CLUSTER,
                b.weight,
            )
            for b in rule.backends
            if b.weight > 0
        ]
        if picked:
            return picked
    return [(_tcp_cluster_name(service, port), 1)]


def envoy_resources(snapshot: Snapshot, node: EnvoyNode) -> EnvoyResources:
    """Every Envoy resource one snapshot means for the Envoy at `node`."""
    routes = {(r.service, r.port): r for r in snapshot.routes}
    policies = {p.service: p for p in snapshot.policies}
    listeners: dict[str, dict[str, Any]] = {}
    clusters: dict[str, dict[str, Any]] = {}
    endpoints: dict[str, dict[str, Any]] = {}
    vhosts: list[dict[str, Any]] = []
    tcp_targets = _tcp_targets(snapshot, node)
    for svc in snapshot.services:
        policy = policies.get(svc.key)
        for port in svc.ports:
            service_routes = routes.get((svc.key, port.port))
            opaque = _is_opaque(port, service_routes)
            for tcp in (True, False):
                if (tcp and (svc.key, port.port) not in tcp_targets) or (opaque and not tcp):
                    continue
                cluster = _outbound_cluster(svc.key, port, tcp, policy)
                clusters[cluster["name"]] = cluster
                endpoints[cluster["name"]] = _load_assignment(
                    cluster["name"], [(ep, _endpoint_key(ep)) for ep in port.endpoints]
                )
            if opaque:
                continue
            if service_routes is not None and service_routes.matches:
                rs = routes_for(service_routes, policy, _cluster_name)
            else:
                rs = [default_route(svc.key, port.port, policy, _cluster_name)]
            vhosts.append(
                {
                    "name": f"{svc.key}:{port.port}",
                    "domains": _domains(svc.key, port.port, snapshot.proxy.namespace),
                    "routes": rs,
                }
            )
    if any(b.error for r in snapshot.routes for rule in r.rules for b in rule.backends):
        clusters[UNRESOLVED_CLUSTER] = {
            "name": UNRESOLVED_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": UNRESOLVED_CLUSTER},
        }
    route_configs: dict[str, dict[str, Any]] = {}
    if node.outbound is not None:
        route_configs["outbound"] = {
            "name": "outbound",
            "virtual_hosts": vhosts,
            # Who calls, for the callee's inbound metrics, as a Gossamer proxy says it.
            "request_headers_to_add": [
                {
                    "header": {"key": SRC_SERVICE_HEADER, "value": own_service(snapshot)},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
        }
        listeners["outbound"] = {
            "name": "outbound",
            "address": _address(*node.outbound),
            "filter_chains": [
                {
                    "filters": [
                        _hcm(
                            stat_prefix("outbound", snapshot),
                            "AUTO",
                            [_fault_filter()],
                            {"rds": {"config_source": _ADS, "route_config_name": "outbound"}},
                        )
                    ]
                }
            ],
        }
    for up in node.upstreams:
        key = f"tcp|{up.service}|{up.port}"
        listeners[key] = {
            "name": key,
            "address": _address(up.host, up.listen_port),
            "filter_chains": [
                {
                    "filters": [
                        _tcp_proxy(
                            key,
                            _tcp_clusters(routes.get((up.service, up.port)), up.service, up.port),
                        )
                    ]
                }
            ],
        }
    if node.inbound is not None:
        listener, inbound_clusters = _inbound(snapshot, *node.inbound, node.app_host)
        listeners["inbound"] = listener
        for c in inbound_clusters:
            clusters[c["name"]] = c
    by_type = {
        LISTENER: listeners,
        CLUSTER: clusters,
        ROUTE: route_configs,
        ENDPOINT: endpoints,
    }
    return EnvoyResources(
        {t: {n: {"@type": t, **r} for n, r in rs.items()} for t, rs in by_type.items()}
    )


def secrets(chain_pem: str, key_pem: str, bundle_pem: str) -> dict[str, dict[str, Any]]:
    """The SDS secrets: the workload's certificate chain and key, and the trust bundle."""
    return {
        CERTIFICATE_SECRET: {
            "@type": SECRET,
            "name": CERTIFICATE_SECRET,
            "tls_certificate": {
                "certificate_chain": {"inline_string": chain_pem},
                "private_key": {"inline_string": key_pem},
            },
        },
        TRUST_SECRET: {
            "@type": SECRET,
            "name": TRUST_SECRET,
            "validation_context": {"trusted_ca": {"inline_string": bundle_pem}},
        },
    }
