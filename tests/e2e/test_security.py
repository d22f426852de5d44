"""Authorization across real processes: a control plane, `gossamer run` proxies, curl."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    echo_app,
    free_port,
    run_workload,
    sleeper,
    stop_all,
)

pytestmark = pytest.mark.e2e

OBJECTS = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
    to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-audit, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audited/*"]}}]}]
"""


def fetch(outbound: str, path: str = "/", http2: bool = False) -> tuple[str, dict[str, str]]:
    if http2:  # h2c with prior knowledge to the outbound listener, routed by :authority
        target = ["--http2-prior-knowledge", "-H", "Host: echo.shop", f"http://{outbound}{path}"]
    else:
        target = ["-x", f"http://{outbound}", f"http://echo.shop{path}"]
    r = subprocess.run(
        ["curl", "-s", "--max-time", "10", "-D", "-", "-o", "/dev/null", *target],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    lines = r.stdout.splitlines()
    status = lines[0].split()[1] if lines and lines[0].startswith("HTTP/") else "none"
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:]) if k
    }
    return status, headers


def wait_for(check: object, what: str, timeout: float = 20.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture
def secured(control_plane: ControlPlaneProcess, tmp_path: Path) -> Iterator[dict[str, Workload]]:
    control_plane.cli("apply", "-f", "-", stdin=OBJECTS, check=True)
    started: dict[str, Workload] = {}
    try:
        started["echo"] = run_workload(
            control_plane, tmp_path, "echo-1", service_account="echo", labels={"app": "echo"},
            app=echo_app("echo-1", port := free_port()), port=f"http=8080:{port}",
        )  # fmt: skip
        for sa in ("client", "intruder"):
            started[sa] = run_workload(
                control_plane, tmp_path, sa, service_account=sa, labels={"app": sa},
                app=sleeper(),
            )  # fmt: skip
        for w in started.values():
            w.wait_ready()
        out = started["client"].outbound
        wait_for(lambda: fetch(out)[0] == "200", "the allowed client never got through")
        yield started
    finally:
        stop_all(started.values())


@pytest.mark.parametrize("http2", [False, True], ids=["HTTP/1.1", "HTTP/2"])
def test_policy_allows_one_identity_denies_another_and_audits_without_blocking(
    secured: dict[str, Workload], control_plane: ControlPlaneProcess, http2: bool
) -> None:
    status, _ = fetch(secured["client"].outbound, "/audited/report", http2)
    assert status == "200"
    status, headers = fetch(secured["intruder"].outbound, "/denied", http2)
    assert status == "403"
    assert headers["gossamer-error"] == "denied by shop/echo-allow: no rule matches"
    echo_log = secured["echo"].log
    wait_for(lambda: "audit: GET /audited/report" in echo_log.read_text(), "no audit line")
    wait_for(
        lambda: (
            "GET /denied on port 8080" in echo_log.read_text()
            and "spiffe://cluster.local/ns/shop/sa/intruder: denied by shop/echo-allow"
            in echo_log.read_text()
        ),
        "no log line for the denial",
    )
    # The CLI explains both with the code the proxy ran.
    for who, allowed in (("client", True), ("intruder", False)):
        r = control_plane.cli("authz", "explain", "--from", f"cluster.local/ns/shop/sa/{who}",
                              "--to", "echo.shop", "-o", "json")  # fmt: skip
        report = json.loads(r.stdout)
        assert report["allowed"] is allowed, report
        assert report["policy"] == "shop/echo-allow"
        assert r.returncode == (0 if allowed else 1)
