"""mTLS modes across real processes: STRICT refuses plaintext, PERMISSIVE serves it."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import ControlPlaneProcess, echo_app, free_port, run_workload

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
"""

PERMISSIVE = """
apiVersion: gossamer.dev/v1alpha1
kind: MeshPolicy
metadata: {name: migrating, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
"""


def plaintext(inbound: str) -> subprocess.CompletedProcess[str]:
    """A client from outside the mesh: plain HTTP straight to the inbound listener."""
    return subprocess.run(
        ["curl", "-s", "--max-time", "5", "-D", "-", "-H", "Host: echo.shop:8080",
         f"http://{inbound}/outside"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def wait_for(check: object, what: str, timeout: float = 20.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_strict_refuses_plaintext_and_permissive_serves_it_labelled_tls_false(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    port = free_port()
    echo = run_workload(
        control_plane, tmp_path, "echo-1", service_account="echo", labels={"app": "echo"},
        app=echo_app("echo-1", port), port=f"http=8080:{port}",
    )  # fmt: skip
    try:
        echo.wait_ready()
        # STRICT (the default): no HTTP answer, and the proxy logs why.
        refused = plaintext(echo.inbound)
        assert "servedBy" not in refused.stdout
        wait_for(
            lambda: "refused the TLS handshake: plaintext HTTP" in echo.log.read_text(),
            "no log line for the refused plaintext client",
        )
        # PERMISSIVE for the namespace: the same client is served.
        control_plane.cli("apply", "-f", "-", stdin=PERMISSIVE, check=True)
        wait_for(lambda: "servedBy" in plaintext(echo.inbound).stdout, "plaintext never served")
        served = plaintext(echo.inbound)
        assert served.stdout.startswith("HTTP/1.1 200"), served.stdout
        body = json.loads(served.stdout.split("\n\n", 1)[1])
        assert body["servedBy"] == "echo-1"
        assert body["path"] == "/outside"
        with urllib.request.urlopen(f"http://{echo.admin}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        plain = [
            line
            for line in metrics.splitlines()
            if line.startswith("gossamer_requests_total{") and 'direction="inbound"' in line
        ]
        assert any('tls="false"' in line and 'code="200"' in line for line in plain), plain
        # Back to STRICT: plaintext is refused again.
        control_plane.cli("delete", "meshpolicy", "migrating", "-n", "shop", check=True)
        wait_for(lambda: "servedBy" not in plaintext(echo.inbound).stdout, "still permissive")
    finally:
        echo.stop()
