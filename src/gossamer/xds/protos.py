"""The generated xDS protobuf code (the `xds-protos` package), behind three calls.

Importing this module registers every message type the translation names inside an
`Any` (filters, transport sockets, protocol options), so protobuf JSON with `@type`
can be parsed into them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Registration by import: each module adds its message types to the default pool.
from envoy.config.cluster.v3 import cluster_pb2  # noqa: F401
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: F401
from envoy.config.listener.v3 import listener_pb2  # noqa: F401
from envoy.config.route.v3 import route_pb2  # noqa: F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format

__all__ = ["add_ads_servicer", "pack", "response"]


def pack(resource: dict[str, Any]) -> Any:
    """A protobuf-JSON resource (with `@type`) as an `Any`."""
    return json_format.ParseDict(resource, any_pb2.Any())


def response(type_url: str, version: str, nonce: str, resources: Iterable[dict[str, Any]]) -> Any:
    return discovery_pb2.DiscoveryResponse(
        version_info=version,
        type_url=type_url,
        nonce=nonce,
        resources=[pack(r) for r in resources],
    )


def add_ads_servicer(stream: Any, server: Any) -> None:
    """Serve ADS state of the world with `stream(requests, context)`; the delta variant
    answers UNIMPLEMENTED (the generated base class's default), so Envoy keeps to SotW."""
    servicer = ads_pb2_grpc.AggregatedDiscoveryServiceServicer()
    servicer.StreamAggregatedResources = stream
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
