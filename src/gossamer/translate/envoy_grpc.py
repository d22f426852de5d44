"""A snapshot as xDS resources for proxyless gRPC: grpcio's own xDS client, no sidecar.

Pure, like `envoy_resources`. gRPC asks for a Listener named by its target
(`xds:///greeter.shop:9090` asks for `greeter.shop:9090`), an API listener whose
routes pick clusters, and the clusters' endpoints. What differs from Envoy
(decision 0074):

- Endpoints are the workloads' own ports (`address:targetPort`), plaintext: a
  proxyless client calls proxyless servers directly. The mesh's inbound listeners
  need an SNI naming the port (`p<port>.<workload>.<ns>.gossamer`) that gRPC's xDS
  client does not send, so a proxyless client does not call sidecar'd workloads.
- Every endpoint group has a locality weight (gRPC ignores a locality without one).
- PathPrefix matches become plain prefixes (gRPC has no `path_separated_prefix`);
  GRPCRoute methods are exact paths and are unaffected. The `:method: POST` match a
  GRPCRoute compiles to is left out: gRPC matches no pseudo-header.
"""

from __future__ import annotations

from typing import Any

from gossamer.translate.envoy import CLUSTER, ENDPOINT, LISTENER, ROUTE, EnvoyResources
from gossamer.translate.envoy_routes import FAULT_FILTER, default_route, routes_for
from gossamer.translate.snapshot import Snapshot

__all__ = ["grpc_resources"]

_T = "type.googleapis.com/"
_HCM = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ADS = {"ads": {}, "resource_api_version": "V3"}


def _cluster_name(service: str, port: int) -> str:
    return f"outbound|{port}||{service}"


def _for_grpc(route: dict[str, Any]) -> dict[str, Any]:
    match = dict(route["match"])
    if "path_separated_prefix" in match:
        match["prefix"] = match.pop("path_separated_prefix")
    # gRPC's xDS client matches no pseudo-header; every gRPC call is a POST anyway.
    headers = [
        h
        for h in match.get("headers", ())
        if not (h["name"] == ":method" and h.get("string_match") == {"exact": "POST"})
    ]
    if headers:
        match["headers"] = headers
    else:
        match.pop("headers", None)
    return {**route, "match": match}


def grpc_resources(snapshot: Snapshot) -> EnvoyResources:
    """Listeners, routes, clusters and endpoints for every HTTP service port the
    snapshot holds, named the way a gRPC xDS client asks for them."""
    routes = {(r.service, r.port): r for r in snapshot.routes}
    policies = {p.service: p for p in snapshot.policies}
    listeners: dict[str, dict[str, Any]] = {}
    route_configs: dict[str, dict[str, Any]] = {}
    clusters: dict[str, dict[str, Any]] = {}
    endpoints: dict[str, dict[str, Any]] = {}
    for svc in snapshot.services:
        policy = policies.get(svc.key)
        for port in svc.ports:
            name = _cluster_name(svc.key, port.port)
            clusters[name] = {
                "name": name,
                "type": "EDS",
                "eds_cluster_config": {"eds_config": _ADS, "service_name": name},
                "lb_policy": "ROUND_ROBIN",
            }
            lb = [
                {
                    "endpoint": {
                        "address": {
                            "socket_address": {
                                "address": ep.address,
                                "port_value": ep.target_port,
                            }
                        }
                    }
                }
                for ep in port.endpoints
            ]
            endpoints[name] = {"cluster_name": name}
            if lb:
                endpoints[name]["endpoints"] = [
                    {"locality": {}, "load_balancing_weight": 1, "lb_endpoints": lb}
                ]
            target = f"{svc.key}:{port.port}"
            service_routes = routes.get((svc.key, port.port))
            if service_routes is not None and service_routes.matches:
                rs = routes_for(service_routes, policy, _cluster_name)
            else:
                rs = [default_route(svc.key, port.port, policy, _cluster_name)]
            route_configs[target] = {
                "name": target,
                "virtual_hosts": [
                    {"name": target, "domains": [target], "routes": [_for_grpc(r) for r in rs]}
                ],
            }
            listeners[target] = {
                "name": target,
                "api_listener": {
                    "api_listener": {
                        "@type": _HCM,
                        "rds": {"config_source": _ADS, "route_config_name": target},
                        "http_filters": [
                            {
                                "name": FAULT_FILTER,
                                "typed_config": {
                                    "@type": _T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
                                },
                            },
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {
                                    "@type": _T + "envoy.extensions.filters.http.router.v3.Router"
                                },
                            },
                        ],
                    }
                },
            }
    by_type = {LISTENER: listeners, ROUTE: route_configs, CLUSTER: clusters, ENDPOINT: endpoints}
    return EnvoyResources(
        {t: {n: {"@type": t, **r} for n, r in rs.items()} for t, rs in by_type.items()}
    )
