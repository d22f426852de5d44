"""MeshPolicy `outboundTrafficPolicy`: what a captured app's traffic to addresses
outside the mesh gets, chosen like every MeshPolicy field (the most specific wins)."""

from __future__ import annotations

import pytest
from tests.translate.test_authz import obj

from gossamer.errors import InvalidResource
from gossamer.resources import validate
from gossamer.translate.authz import SecurityIndex, SecurityView, security_for


def test_the_most_specific_outbound_traffic_policy_applies() -> None:
    index = SecurityIndex.from_objects([
        obj("MeshPolicy", "closed", "gossamer-system",
            {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
        obj("MeshPolicy", "crawler", "shop",
            {"selector": {"matchLabels": {"app": "crawler"}},
             "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}),
    ])  # fmt: skip
    web = security_for(index, "shop", {"app": "web"})
    assert (web.outbound_traffic, web.outbound_from) == ("REGISTRY_ONLY", "gossamer-system/closed")
    crawler = security_for(index, "shop", {"app": "crawler"})
    assert (crawler.outbound_traffic, crawler.outbound_from) == ("ALLOW_ANY", "shop/crawler")
    assert security_for(SecurityIndex(), "shop", {}).outbound_traffic == "ALLOW_ANY"
    assert SecurityView.from_dict({"outbound_traffic": "REGISTRY_ONLY"}).outbound_traffic == (
        "REGISTRY_ONLY"
    )


def test_an_unknown_mode_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidResource, match=r"spec\.outboundTrafficPolicy\.mode"):
        validate({
            "apiVersion": "gossamer.dev/v1alpha1", "kind": "MeshPolicy",
            "metadata": {"name": "x", "namespace": "shop"},
            "spec": {"outboundTrafficPolicy": {"mode": "DENY"}},
        })  # fmt: skip
