"""Proxyless gRPC: grpcio's own xDS client reaches xds:///greeter.shop:9090 through the
control plane, and an HTTPRoute's 80/20 split between two versions is observed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.proxy.test_e2e_grpc import SERVICE, grpc_server
from tests.xds.conftest import XdsControlPlane

pytestmark = pytest.mark.e2e

CALLS = 200


def mesh(v1_port: int, v2_port: int) -> str:
    """Two proxyless gRPC servers, applied as Workloads by hand, and a weighted route."""
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: shop}}
spec:
  selector: {{app: greeter}}
  ports: [{{name: grpc, port: 9090, targetPort: grpc, appProtocol: grpc}}]
---
apiVersion: v1
kind: Service
metadata: {{name: greeter-v1, namespace: shop}}
spec:
  selector: {{app: greeter, version: v1}}
  ports: [{{name: grpc, port: 9090, targetPort: grpc, appProtocol: grpc}}]
---
apiVersion: v1
kind: Service
metadata: {{name: greeter-v2, namespace: shop}}
spec:
  selector: {{app: greeter, version: v2}}
  ports: [{{name: grpc, port: 9090, targetPort: grpc, appProtocol: grpc}}]
---
apiVersion: gossamer.dev/v1alpha1
kind: Workload
metadata: {{name: greeter-v1-1, namespace: shop, labels: {{app: greeter, version: v1}}}}
spec: {{address: 127.0.0.1, inboundPort: 1, serviceAccount: greeter,
        ports: [{{name: grpc, port: {v1_port}}}]}}
---
apiVersion: gossamer.dev/v1alpha1
kind: Workload
metadata: {{name: greeter-v2-1, namespace: shop, labels: {{app: greeter, version: v2}}}}
spec: {{address: 127.0.0.1, inboundPort: 1, serviceAccount: greeter,
        ports: [{{name: grpc, port: {v2_port}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: canary, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: greeter, port: 9090}}]
  rules:
  - backendRefs:
    - {{name: greeter-v1, port: 9090, weight: 80}}
    - {{name: greeter-v2, port: 9090, weight: 20}}
"""


# Run in a child process: grpcio reads GRPC_XDS_BOOTSTRAP once, when xDS starts.
# argv: the method path and how many calls; prints {"v1": N, "v2": M}.
CLIENT = textwrap.dedent(
    """
    import collections, json, sys, time
    import grpc

    method, calls = sys.argv[1], int(sys.argv[2])
    counts = collections.Counter()
    deadline = time.monotonic() + 60
    with grpc.insecure_channel("xds:///greeter.shop:9090") as channel:
        who = channel.unary_unary(method)
        while sum(counts.values()) < calls and time.monotonic() < deadline:
            try:
                counts[who(b"", timeout=5).decode().split()[0]] += 1
            except grpc.RpcError as err:  # config still on its way: try again
                print("not yet:", err.code(), err.details(), file=sys.stderr)
                time.sleep(0.2)
    print(json.dumps(counts))
    """
)


def test_a_grpcio_client_with_an_xds_target_follows_the_weighted_route(
    xds_control_plane: XdsControlPlane, tmp_path: Path
) -> None:
    xcp = xds_control_plane
    v1, v1_port = grpc_server("v1")
    v2, v2_port = grpc_server("v2")
    try:
        xcp.cp.cli("apply", "-f", "-", stdin=mesh(v1_port, v2_port), check=True)
        out = tmp_path / "xds"
        result = xcp.cp.cli(
            "bootstrap", "grpc", "--name", "checkout", "-n", "shop",
            "--service-account", "checkout", "--out", str(out),
            "--xds", f"{xcp.xds[0]}:{xcp.xds[1]}", "--discovery", xcp.cp.discovery,
            "-o", "json", check=True,
        )  # fmt: skip
        bootstrap = json.loads(result.stdout)["bootstrap"]
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, f"/{SERVICE}/Who", str(CALLS)],
            env={"PATH": "/usr/bin:/bin", "GRPC_XDS_BOOTSTRAP": bootstrap},
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert client.returncode == 0, client.stderr[-3000:]
        counts = json.loads(client.stdout)
    finally:
        v1.stop(0)
        v2.stop(0)
    assert counts.get("v1", 0) + counts.get("v2", 0) == CALLS, counts
    # 80/20 over 200 calls: v2 near 40; this holds but for a one-in-billions draw.
    assert counts["v1"] > counts["v2"] > 0, counts
