"""AuthorizationPolicy and MeshPolicy at the door: Istio's YAML applies, mistakes are
refused with the field path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gossamer.errors import InvalidResource
from gossamer.resources import to_dict, validate


def ap(spec: str, api_version: str = "security.istio.io/v1") -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "foo"},
        "spec": yaml.safe_load(spec),
    }


def errors(obj: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidResource) as info:
        validate(obj)
    return {e.path: e.reason for e in info.value.errors}


def test_istios_documented_example_applies_unchanged() -> None:
    obj = ap(
        """
        selector: {matchLabels: {app: httpbin, version: v1}}
        action: ALLOW
        rules:
        - from:
          - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
          - source: {namespaces: ["dev"]}
          to:
          - operation: {methods: ["GET"], paths: ["/test/*", "*/info"], ports: ["8080"]}
          when:
          - key: request.headers[version]
            values: ["v1", "v2"]
        """,
        api_version="security.istio.io/v1beta1",
    )
    out = to_dict(validate(obj))
    assert out["apiVersion"] == "security.istio.io/v1"
    assert out["spec"]["rules"][0]["from"][1] == {"source": {"namespaces": ["dev"]}}
    assert to_dict(validate(out)) == out


def test_allow_nothing_and_deny_all_keep_their_meaning_through_a_round_trip() -> None:
    assert "rules" not in to_dict(validate(ap("{}")))["spec"]
    assert to_dict(validate(ap("{action: DENY, rules: [{}]}")))["spec"]["rules"] == [{}]


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        ("{rules: [{}], extra: 1}", "spec.extra", "unknown field"),
        (
            "{rules: [{from: [{source: {principals: ['spiffe://cluster.local/ns/a/sa/b']}}]}]}",
            "spec.rules[0].from[0].source.principals[0]",
            "without",
        ),
        (
            "{rules: [{from: [{source: {principals: ['web']}}]}]}",
            "spec.rules[0].from[0].source.principals[0]",
            "is not a principal",
        ),
        (
            "{rules: [{from: [{source: {ipBlocks: ['10.0.0.0/40']}}]}]}",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "CIDR",
        ),
        (
            "{rules: [{to: [{operation: {ports: [8080]}}]}]}",
            "spec.rules[0].to[0].operation.ports[0]",
            "must be a string",
        ),
        (
            "{rules: [{to: [{operation: {paths: ['/a*b']}}]}]}",
            "spec.rules[0].to[0].operation.paths[0]",
            "may only start",
        ),
        (
            "{rules: [{to: [{operation: {}}]}]}",
            "spec.rules[0].to[0].operation",
            "at least one field",
        ),
        (
            "{rules: [{when: [{key: 'request.path', values: [/]}]}]}",
            "spec.rules[0].when[0].key",
            "unknown condition key",
        ),
        (
            "{rules: [{when: [{key: 'source.ip', values: [nonsense]}]}]}",
            "spec.rules[0].when[0].values[0]",
            "CIDR",
        ),
        ("{action: CUSTOM, provider: {name: x}}", "spec.action", "not supported"),
        (
            "{selector: {matchLabels: {app: a}}, targetRefs: [{kind: Service, name: a}]}",
            "spec.selector",
            "not both",
        ),
        ("{targetRefs: [{kind: Gateway, name: a}]}", "spec.targetRefs[0].kind", "Service"),
        (
            "{targetRefs: [{kind: Service, name: a, namespace: bar}]}",
            "spec.targetRefs[0].namespace",
            "own namespace",
        ),
    ],
    ids=[
        "an unknown field is refused",
        "a principal written as a SPIFFE URI is refused with the form to use",
        "a principal that is not a SPIFFE path is refused",
        "a malformed CIDR is refused",
        "a port given as a number is refused as Kubernetes would",
        "a wildcard in the middle of a path is refused",
        "an empty operation is refused",
        "an unknown condition key is refused",
        "a source.ip condition value must be an address",
        "the CUSTOM action is refused",
        "selector and targetRefs together are refused",
        "a targetRef to anything but a Service is refused",
        "a targetRef into another namespace is refused",
    ],
)
def test_a_bad_policy_is_refused_with_the_field_path(spec: str, path: str, reason: str) -> None:
    found = errors(ap(spec))
    assert path in found, found
    assert reason in found[path]


def test_a_mesh_policy_takes_the_mtls_mode_and_the_default_action() -> None:
    obj = {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "MeshPolicy",
        "metadata": {"name": "default", "namespace": "gossamer-system"},
        "spec": {"mtls": {"mode": "PERMISSIVE"}, "defaultAction": "ALLOW_AUTHENTICATED"},
    }
    assert to_dict(validate(obj))["spec"]["mtls"] == {"mode": "PERMISSIVE"}
    obj["spec"] = {"mtls": {"mode": "DISABLE"}}
    assert "spec.mtls.mode" in errors(obj)
