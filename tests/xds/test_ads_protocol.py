"""The ADS state machine of one stream (gossamer.xds.server), without Envoy.

Requests are real DiscoveryRequest messages; the control plane is a stand-in with
only what the server reads at construction (this is a unit test of one module). Real
Envoy exercises the same paths in test_xds_e2e.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from gossamer.identity.spiffe import SpiffeId
from gossamer.translate.envoy import CLUSTER, ENDPOINT, EnvoyNode, EnvoyResources
from gossamer.xds.server import NodeSpec, XdsServer, XdsSession

CLUSTERS = {
    "outbound|80||echo.shop": {"@type": CLUSTER, "name": "outbound|80||echo.shop", "type": "EDS"}
}
ENDPOINTS = {
    "outbound|80||echo.shop": {"@type": ENDPOINT, "cluster_name": "outbound|80||echo.shop"}
}


def server() -> XdsServer:
    discovery = SimpleNamespace(change_listeners=[], status_sources=[])
    return XdsServer(SimpleNamespace(discovery=discovery))


def session(resources: dict[str, dict[str, Any]] | None = None) -> XdsSession:
    s = XdsSession(
        SpiffeId("cluster.local", "shop", "web"),
        "shop/web-1",
        NodeSpec("web-1", "shop", EnvoyNode(), None),
    )
    s.snapshot = SimpleNamespace(version="v1")
    s.resources = EnvoyResources(
        {CLUSTER: dict(CLUSTERS), ENDPOINT: dict(ENDPOINTS), **(resources or {})}
    )
    return s


def request(type_url: str, nonce: str = "", version: str = "", *names: str, error: str = "") -> Any:
    r = discovery_pb2.DiscoveryRequest(
        type_url=type_url, response_nonce=nonce, version_info=version, resource_names=names
    )
    if error:
        r.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return r


def test_a_first_request_is_answered_and_its_ack_makes_the_proxy_up_to_date() -> None:
    srv, s = server(), session()
    srv._on_request(s, request(CLUSTER))
    [response] = list(srv._pending(s))
    assert [r.type_url for r in response.resources] == [CLUSTER]
    assert s.acked_snapshot == ""
    srv._on_request(s, request(CLUSTER, response.nonce, response.version_info))
    assert list(srv._pending(s)) == []
    assert s.acked_snapshot == "v1" and s.nack_error == ""


def test_a_nack_is_recorded_and_the_refused_version_is_not_sent_again() -> None:
    srv, s = server(), session()
    srv._on_request(s, request(CLUSTER))
    [response] = list(srv._pending(s))
    srv._on_request(s, request(CLUSTER, response.nonce, "", error="bad cluster"))
    assert s.nack_error == "Cluster: bad cluster"
    assert s.acked_snapshot == ""  # what Envoy serves is still its last accepted config
    assert list(srv._pending(s)) == []  # no resend loop of the same refused content


def test_a_request_with_an_old_nonce_is_stale_and_changes_nothing() -> None:
    srv, s = server(), session()
    srv._on_request(s, request(CLUSTER))
    [first] = list(srv._pending(s))
    s.resources = EnvoyResources(
        {CLUSTER: {**CLUSTERS, "outbound|80||web.shop": {"@type": CLUSTER, "name": "w"}}}
    )
    [second] = list(srv._pending(s))
    assert second.nonce != first.nonce
    srv._on_request(s, request(CLUSTER, first.nonce, "", error="too late to matter"))
    assert s.nack_error == ""
    srv._on_request(s, request(CLUSTER, second.nonce, second.version_info))
    assert s.types[CLUSTER].acked_version == second.version_info


def test_endpoints_are_sent_for_the_names_asked_only() -> None:
    srv, s = server(), session()
    names = ("outbound|80||echo.shop", "outbound|1||gone.shop")
    srv._on_request(s, request(ENDPOINT, "", "", *names))
    [response] = list(srv._pending(s))
    assert len(response.resources) == 1
    # Envoy repeats the names in its ACK; the same names need nothing more.
    srv._on_request(s, request(ENDPOINT, response.nonce, response.version_info, *names))
    assert list(srv._pending(s)) == []
    # Asking for fewer names is a new subscription: answered with those only.
    srv._on_request(s, request(ENDPOINT, response.nonce, response.version_info, names[1]))
    [narrower] = list(srv._pending(s))
    assert len(narrower.resources) == 0
