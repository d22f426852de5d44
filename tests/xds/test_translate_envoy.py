"""Snapshot → Envoy resources: golden files per resource kind, and Envoy accepts them.

Every config here is also checked by the real Envoy binary (`envoy --mode validate`);
behaviour with real traffic is in test_xds_e2e.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gossamer.identity.ca import CertificateAuthority
from gossamer.identity.csr import generate_private_key, make_csr
from gossamer.identity.spiffe import SpiffeId
from gossamer.resources import to_dict, validate
from gossamer.translate import MeshView, ProxyInfo, build_snapshot
from gossamer.translate.envoy import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    EnvoyNode,
    TcpUpstream,
    envoy_resources,
    secrets,
)
from gossamer.translate.envoy_grpc import grpc_resources
from gossamer.translate.snapshot import Snapshot
from tests.xds.envoyconfig import static_bootstrap
from tests.xds.envoyconfig import validate as envoy_validate

BUNDLE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def obj(kind: str, name: str, spec: dict[str, Any], ns: str = "shop") -> dict[str, Any]:
    api = {
        "Service": "v1",
        "Workload": "gossamer.dev/v1alpha1",
        "HTTPRoute": "gateway.networking.k8s.io/v1",
        "GRPCRoute": "gateway.networking.k8s.io/v1",
        "TCPRoute": "gateway.networking.k8s.io/v1alpha2",
        "AuthorizationPolicy": "security.istio.io/v1",
    }.get(kind, "gossamer.dev/v1alpha1")
    stored = to_dict(
        validate(
            {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns},
             "spec": spec}
        )
    )  # fmt: skip
    stored["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    stored["metadata"]["generation"] = 1
    return stored


def service(name: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return obj("Service", name, {"selector": {"app": name}, "ports": ports})


def workload(name: str, app: str, ports: list[dict[str, Any]], inbound: int) -> dict[str, Any]:
    w = obj(
        "Workload",
        name,
        {"address": "127.0.0.1", "inboundPort": inbound, "serviceAccount": app, "ports": ports},
    )
    w["metadata"]["labels"] = {"app": app}
    return w


def target(name: str) -> dict[str, Any]:
    return {"targetRefs": [{"group": "", "kind": "Service", "name": name}]}


OBJECTS = [
    service("web", [{"name": "http", "port": 80, "targetPort": 8080}]),
    service("echo", [{"name": "http", "port": 80, "targetPort": 8080}]),
    service("echo-v2", [{"name": "http", "port": 80, "targetPort": 8080}]),
    service("shadow", [{"name": "http", "port": 80, "targetPort": 8080}]),
    service("greeter", [{"name": "grpc", "port": 9090, "targetPort": 9090, "appProtocol": "grpc"}]),
    service("db", [{"name": "pg", "port": 5432, "targetPort": 5432}]),
    service("db-v2", [{"name": "pg", "port": 5432, "targetPort": 5432}]),
    workload("web-1", "web", [{"name": "http", "port": 8080, "appPort": 18080}], 4143),
    workload("echo-1", "echo", [{"name": "http", "port": 8080}], 4144),
    workload("echo-2", "echo", [{"name": "http", "port": 8080}], 4145),
    workload("echo-v2-1", "echo-v2", [{"name": "http", "port": 8080}], 4146),
    workload("shadow-1", "shadow", [{"name": "http", "port": 8080}], 4147),
    workload("greeter-1", "greeter", [{"name": "grpc", "port": 9090}], 4148),
    workload("db-1", "db", [{"name": "pg", "port": 5432}], 4149),
    workload("db-v2-1", "db-v2", [{"name": "pg", "port": 5432}], 4150),
    obj(
        "HTTPRoute",
        "echo-routes",
        {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
            "rules": [
                {
                    "name": "canary",
                    "matches": [
                        {
                            "path": {"type": "PathPrefix", "value": "/api"},
                            "headers": [{"name": "X-Canary", "value": "1"}],
                            "queryParams": [{"name": "debug", "value": "on"}],
                            "method": "GET",
                        }
                    ],
                    "backendRefs": [{"name": "echo-v2", "port": 80}],
                },
                {
                    "name": "split",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {
                                "set": [{"name": "x-env", "value": "prod"}],
                                "add": [{"name": "x-via", "value": "mesh"}],
                                "remove": ["x-debug"],
                            },
                        },
                        {
                            "type": "ResponseHeaderModifier",
                            "responseHeaderModifier": {"set": [{"name": "x-served", "value": "1"}]},
                        },
                        {
                            "type": "RequestMirror",
                            "requestMirror": {"backendRef": {"name": "shadow", "port": 80}},
                        },
                    ],
                    "backendRefs": [
                        {"name": "echo", "port": 80, "weight": 90},
                        {"name": "echo-v2", "port": 80, "weight": 10},
                    ],
                    "timeouts": {"request": "2s", "backendRequest": "500ms"},
                    "retry": {"attempts": 2, "codes": [503]},
                },
                {
                    "name": "moved",
                    "matches": [{"path": {"type": "Exact", "value": "/old"}}],
                    "filters": [
                        {
                            "type": "RequestRedirect",
                            "requestRedirect": {
                                "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"},
                                "statusCode": 301,
                            },
                        }
                    ],
                },
                {
                    "name": "rewritten",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                    "filters": [
                        {
                            "type": "URLRewrite",
                            "urlRewrite": {
                                "hostname": "echo.internal",
                                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"},
                            },
                        }
                    ],
                    "backendRefs": [{"name": "echo", "port": 80}],
                },
                {
                    "name": "regex",
                    "matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}}],
                    "backendRefs": [{"name": "echo", "port": 80}],
                },
            ],
        },
    ),
    obj(
        "GRPCRoute",
        "greeter-routes",
        {
            "parentRefs": [{"group": "", "kind": "Service", "name": "greeter"}],
            "rules": [
                {
                    "matches": [
                        {"method": {"service": "helloworld.Greeter", "method": "SayHello"}}
                    ],
                    "backendRefs": [{"name": "greeter", "port": 9090}],
                }
            ],
        },
    ),
    obj(
        "TCPRoute",
        "db-split",
        {
            "parentRefs": [{"group": "", "kind": "Service", "name": "db"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "db", "port": 5432, "weight": 80},
                        {"name": "db-v2", "port": 5432, "weight": 20},
                    ]
                }
            ],
        },
    ),
    obj(
        "RetryPolicy",
        "echo-retry",
        {**target("echo"), "attempts": 3, "retryOn": ["5xx"], "perTryTimeout": "250ms"},
    ),
    obj(
        "OutlierPolicy",
        "echo-outlier",
        {**target("echo"), "consecutiveFailures": 3, "baseEjectionTime": "10s"},
    ),
    obj(
        "CircuitBreakerPolicy",
        "echo-limits",
        {**target("echo"), "maxConnections": 100, "maxPendingRequests": 10, "maxRequests": 50},
    ),
    obj(
        "FaultPolicy",
        "echo-fault",
        {
            **target("echo"),
            "abort": {"httpStatus": 503, "percent": 5},
            "delay": {"fixedDelay": "100ms", "percent": 1.5},
        },
    ),
]

SECURITY = [
    obj(
        "AuthorizationPolicy",
        "web-allow",
        {
            "selector": {"matchLabels": {"app": "web"}},
            "action": "ALLOW",
            "rules": [
                {
                    "from": [{"source": {"principals": ["example.org/ns/shop/sa/echo"]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": ["/public/*"]}}],
                },
                {
                    "from": [{"source": {"namespaces": ["ops"], "notIpBlocks": ["10.0.0.0/8"]}}],
                    "when": [{"key": "request.headers[x-team]", "values": ["sre"]}],
                },
                {"to": [{"operation": {"ports": ["8080"]}}]},
            ],
        },
    ),
    obj(
        "AuthorizationPolicy",
        "web-deny",
        {
            "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/admin"], "notMethods": ["OPTIONS"]}}]}],
        },
    ),
    obj("AuthorizationPolicy", "web-audit", {"action": "AUDIT", "rules": [{}]}),
]

NODE = EnvoyNode(
    inbound=("127.0.0.1", 4143),
    outbound=("127.0.0.1", 4140),
    upstreams=(TcpUpstream("db.shop", 5432, "127.0.0.1", 15432),),
)
INTERESTS = frozenset({"echo.shop", "greeter.shop", "db.shop"})


def snapshot(objects: list[dict[str, Any]]) -> Snapshot:
    mesh = MeshView.from_objects(objects, trust_domain="example.org", trust_bundle=BUNDLE)
    return build_snapshot(mesh, ProxyInfo("web-1", "shop", INTERESTS))


KINDS = [("listeners", LISTENER), ("clusters", CLUSTER), ("routes", ROUTE), ("endpoints", ENDPOINT)]


@pytest.mark.parametrize(("kind", "type_url"), KINDS, ids=[k for k, _ in KINDS])
def test_each_resource_kind_matches_its_golden_file(
    kind: str, type_url: str, golden: Callable[[str, str], None]
) -> None:
    resources = envoy_resources(snapshot([*OBJECTS, *SECURITY]), NODE)
    text = json.dumps(resources.by_type[type_url], indent=2, sort_keys=True) + "\n"
    golden(f"envoy/web-1-{kind}.json", text)


CASES = {
    "routes, policies, TCPRoute and authorization": [*OBJECTS, *SECURITY],
    "no policy at all": OBJECTS[:15],
    "a mesh default of DENY_ALL": [
        *OBJECTS[:15],
        obj("MeshPolicy", "default", {"defaultAction": "DENY_ALL"}),
    ],
}


@pytest.fixture(scope="module")
def workload_secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Real PEM for the `default` and `ROOTCA` secrets: validate mode loads them."""
    ca = CertificateAuthority.initialize(tmp_path_factory.mktemp("ca"), "example.org")
    key = generate_private_key()
    identity = SpiffeId("example.org", "shop", "web")
    issued = ca.sign_csr(make_csr(key, identity), identity)
    return secrets(issued.chain_pem, key.decode(), ca.trust_bundle_pem())


@pytest.mark.e2e
@pytest.mark.parametrize("objects", CASES.values(), ids=list(CASES))
def test_envoy_accepts_every_generated_config(
    objects: list[dict[str, Any]], workload_secrets: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    resources = envoy_resources(snapshot(objects), NODE)
    envoy_validate(static_bootstrap(resources, workload_secrets), tmp_path)


def test_an_endpoint_is_reached_with_its_own_sni_and_spiffe_id() -> None:
    resources = envoy_resources(snapshot(OBJECTS), NODE)
    cluster = resources.by_type[CLUSTER]["outbound|80||echo.shop"]
    matches = {
        m["name"]: m["transport_socket"]["typed_config"]
        for m in cluster["transport_socket_matches"]
    }
    tls = matches["echo-1.shop:8080"]
    assert tls["sni"] == "p8080.echo-1.shop.gossamer"
    san = tls["common_tls_context"]["combined_validation_context"]["default_validation_context"]
    assert san["match_typed_subject_alt_names"][0]["matcher"] == {
        "exact": "spiffe://example.org/ns/shop/sa/echo"
    }
    assert tls["common_tls_context"]["alpn_protocols"] == ["gossamer/h2"]


def test_a_tcproute_splits_the_upstream_listener_by_weight() -> None:
    resources = envoy_resources(snapshot(OBJECTS), NODE)
    listener = resources.by_type[LISTENER]["tcp|db.shop|5432"]
    proxy = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert proxy["weighted_clusters"]["clusters"] == [
        {"name": "outbound|5432|tcp|db.shop", "weight": 80},
        {"name": "outbound|5432|tcp|db-v2.shop", "weight": 20},
    ]
    tls = resources.by_type[CLUSTER]["outbound|5432|tcp|db-v2.shop"]["transport_socket_matches"][0]
    assert tls["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"] == [
        "gossamer/tcp"
    ]


def test_audit_deny_then_allow_filters_run_before_the_router() -> None:
    resources = envoy_resources(snapshot([*OBJECTS, *SECURITY]), NODE)
    chain = resources.by_type[LISTENER]["inbound"]["filter_chains"][0]
    hcm = chain["filters"][0]["typed_config"]
    actions = [
        f["typed_config"]["rules"]["action"]
        for f in hcm["http_filters"]
        if f["name"] == "envoy.filters.http.rbac"
    ]
    assert actions == ["LOG", "DENY", "ALLOW"]
    assert hcm["http_filters"][-1]["name"] == "envoy.filters.http.router"


def test_a_version_changes_only_with_content() -> None:
    a = envoy_resources(snapshot(OBJECTS), NODE)
    b = envoy_resources(snapshot(list(OBJECTS)), NODE)
    c = envoy_resources(snapshot(OBJECTS[:-1]), NODE)
    assert a.version(ROUTE) == b.version(ROUTE)
    assert a.version(ROUTE) != c.version(ROUTE)  # the FaultPolicy went
    assert a.version(CLUSTER) == c.version(CLUSTER)
    assert a.version(ENDPOINT, frozenset({"outbound|80||echo.shop"})) == c.version(
        ENDPOINT, frozenset({"outbound|80||echo.shop"})
    )


def test_proxyless_grpc_resources_match_their_golden_file(
    golden: Callable[[str, str], None],
) -> None:
    resources = grpc_resources(snapshot(OBJECTS))
    text = json.dumps(resources.by_type, indent=2, sort_keys=True) + "\n"
    golden("envoy/web-1-proxyless-grpc.json", text)


def test_proxyless_grpc_calls_endpoints_directly_and_drops_the_post_match() -> None:
    resources = grpc_resources(snapshot(OBJECTS))
    listener = resources.by_type[LISTENER]["greeter.shop:9090"]
    assert listener["api_listener"]["api_listener"]["rds"]["route_config_name"] == (
        "greeter.shop:9090"
    )
    [route] = resources.by_type[ROUTE]["greeter.shop:9090"]["virtual_hosts"][0]["routes"]
    assert route["match"] == {"path": "/helloworld.Greeter/SayHello"}
    [group] = resources.by_type[ENDPOINT]["outbound|9090||greeter.shop"]["endpoints"]
    assert group["load_balancing_weight"] == 1
    assert group["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9090,
    }
