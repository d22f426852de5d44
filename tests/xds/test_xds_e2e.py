"""Envoy over xDS in one mesh with Gossamer proxies: real Envoy, real proxies, real curl.

Each test starts a control plane serving xDS, Envoy workloads configured only over
ADS/SDS, and Gossamer workloads with `gossamer run`, and sends real requests.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.e2e.conftest import (
    GOSSAMER,
    echo_app,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_process,
)
from tests.xds.conftest import EnvoyProcess, XdsControlPlane, start_echo, start_envoy_workload

pytestmark = pytest.mark.e2e

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: envoy-echo, namespace: shop}
spec:
  selector: {app: envoy-echo}
  ports: [{name: http, port: 80, targetPort: http}]
"""


def curl(proxy: str, host: str, path: str = "/", *extra: str) -> tuple[int, dict[str, Any]]:
    """A request through an outbound listener; the status, and the echo's JSON if any."""
    out = subprocess.run(
        ["curl", "-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}", "-H", f"Host: {host}",
         *extra, f"http://{proxy}{path}"],
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    body, _, code = out.stdout.rpartition("\n")
    try:
        data = json.loads(body) if body.startswith("{") else {"text": body}
    except json.JSONDecodeError:
        data = {"text": body}
    return int(code or 0), data


def until(
    what: str, probe: Callable[[], tuple[int, dict[str, Any]]], want: int, timeout: float = 60
) -> dict[str, Any]:
    """Probe until it answers `want` (config travels asynchronously); bounded in time."""
    deadline = time.monotonic() + timeout
    last: tuple[int, dict[str, Any]] = (0, {})
    while time.monotonic() < deadline:
        last = probe()
        if last[0] == want:
            return last[1]
        time.sleep(0.3)
    raise AssertionError(f"{what}: wanted {want}, last answer {last}")


def served_by(answer: tuple[int, dict[str, Any]], name: str) -> tuple[int, dict[str, Any]]:
    """`answer`, or status 0 while another workload than `name` serves it (config on
    its way)."""
    status, data = answer
    return (status if data.get("servedBy") == name else 0), data


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    things: list[Any] = []
    try:
        yield things
    finally:
        for thing in reversed(things):
            thing.stop()


def envoy_echo(xcp: XdsControlPlane, tmp: Path, cleanup: list[Any], name: str) -> EnvoyProcess:
    app_port = free_port()
    app = start_echo(name, app_port, tmp / f"{name}-app.log")
    envoy = start_envoy_workload(
        xcp, tmp, name, service_account="envoy-echo", labels={"app": "envoy-echo"},
        ports=({"name": "http", "port": 8080, "appPort": app_port},), outbound=False,
    )  # fmt: skip
    envoy.apps.append(app)
    cleanup.append(envoy)
    envoy.wait_ready()
    return envoy


def apply(xcp: XdsControlPlane, text: str) -> None:
    xcp.cp.cli("apply", "-f", "-", stdin=text, check=True)


def test_envoy_calls_a_gossamer_workload_over_mtls_h1_and_h2(
    xds_control_plane: XdsControlPlane, tmp_path: Path, cleanup: list[Any]
) -> None:
    xcp = xds_control_plane
    apply(xcp, SERVICES)
    # Only Envoy's identity may call echo: the Gossamer inbound checks the SPIFFE ID.
    apply(
        xcp,
        """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-envoy, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/envoy-client]}}]}]
""",
    )
    app_port = free_port()
    echo = run_workload(
        xcp.cp, tmp_path, "echo-1", service_account="echo", labels={"app": "echo"},
        app=echo_app("echo-1", app_port), port=f"http=8080:{app_port}",
    )  # fmt: skip
    cleanup.append(echo)
    echo.wait_ready()
    client = start_envoy_workload(
        xcp, tmp_path, "envoy-client", service_account="envoy-client", labels={"app": "client"}
    )
    cleanup.append(client)
    client.wait_ready()
    assert client.outbound is not None
    data = until("HTTP/1.1 via envoy", lambda: curl(client.outbound or "", "echo.shop"), 200)
    assert data["servedBy"] == "echo-1"
    data = until(
        "HTTP/2 via envoy",
        lambda: curl(client.outbound or "", "echo.shop", "/h2", "--http2-prior-knowledge"),
        200,
    )
    assert data["servedBy"] == "echo-1" and data["path"] == "/h2"


def test_a_gossamer_proxy_calls_an_envoy_workload_and_envoy_enforces_authorization(
    xds_control_plane: XdsControlPlane, tmp_path: Path, cleanup: list[Any]
) -> None:
    xcp = xds_control_plane
    apply(xcp, SERVICES)
    envoy_echo(xcp, tmp_path, cleanup, "envoy-echo-1")
    client = run_workload(
        xcp.cp, tmp_path, "web-1", service_account="web", labels={"app": "web"}, app=sleeper()
    )
    cleanup.append(client)
    client.wait_ready()
    data = until("gossamer → envoy", lambda: curl(client.outbound, "envoy-echo.shop"), 200)
    assert data["servedBy"] == "envoy-echo-1"
    data = until(
        "gossamer → envoy, HTTP/2",
        lambda: curl(client.outbound, "envoy-echo.shop", "/x", "--http2-prior-knowledge"),
        200,
    )
    assert data["servedBy"] == "envoy-echo-1"
    # Envoy's RBAC, from the AuthorizationPolicy, denies the Gossamer proxy's identity.
    apply(
        xcp,
        """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-web, namespace: shop}
spec:
  selector: {matchLabels: {app: envoy-echo}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]
""",
    )
    denied = until("denied by envoy", lambda: curl(client.outbound, "envoy-echo.shop"), 403)
    assert "RBAC" in denied.get("text", "")


def test_a_config_envoy_refuses_is_reported_and_the_last_good_one_keeps_serving(
    xds_control_plane: XdsControlPlane, tmp_path: Path, cleanup: list[Any]
) -> None:
    xcp = xds_control_plane
    apply(xcp, SERVICES)
    envoy_echo(xcp, tmp_path, cleanup, "envoy-echo-1")
    client = start_envoy_workload(
        xcp, tmp_path, "envoy-client", service_account="envoy-client", labels={"app": "client"}
    )
    cleanup.append(client)
    client.wait_ready()
    until("before the bad route", lambda: curl(client.outbound or "", "envoy-echo.shop"), 200)
    # Python's re takes a lookahead, so the route is accepted; Envoy's RE2 refuses it.
    apply(
        xcp,
        """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: lookahead, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: envoy-echo}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/a(?=b).*"}}]
    backendRefs: [{name: envoy-echo, port: 80}]
""",
    )
    deadline = time.monotonic() + 30
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        out = xcp.cp.cli("check", "-o", "json")
        report = json.loads(out.stdout)
        if any("rejected" in p for p in report["problems"]):
            break
        time.sleep(0.3)
    problems = [p for p in report["problems"] if "envoy-client" in p]
    assert problems and "rejected: RouteConfiguration" in problems[0], report
    # The refused routes never replaced the accepted ones: traffic still flows.
    status, data = curl(client.outbound or "", "envoy-echo.shop", "/still")
    assert (status, data["servedBy"]) == (200, "envoy-echo-1")


def test_gossamer_run_with_engine_envoy_serves_the_app_and_dies_with_its_supervisor(
    xds_control_plane: XdsControlPlane, tmp_path: Path, cleanup: list[Any]
) -> None:
    xcp = xds_control_plane
    apply(xcp, SERVICES)
    app_port = free_port()
    envoy_echo = run_workload(
        xcp.cp, tmp_path, "echo-1", service_account="echo", labels={"app": "echo"},
        app=echo_app("echo-1", app_port), port=f"http=8080:{app_port}",
        extra=("--engine", "envoy", "--xds", f"{xcp.xds[0]}:{xcp.xds[1]}"),
    )  # fmt: skip
    cleanup.append(envoy_echo)
    envoy_echo.wait_ready()  # Envoy's own /ready, on the --admin address
    client = run_workload(
        xcp.cp, tmp_path, "web-1", service_account="web", labels={"app": "web"}, app=sleeper()
    )
    cleanup.append(client)
    client.wait_ready()
    data = until(
        "gossamer → gossamer run --engine envoy", lambda: curl(client.outbound, "echo"), 200
    )
    assert data["servedBy"] == "echo-1"
    rows = json.loads(xcp.cp.cli("check", "-o", "json").stdout)["proxies"]
    assert {r["workload"]: r["state"] for r in rows}["echo-1"] == "connected"
    # kill -9 of `gossamer run`: Envoy (and the app) go with it.
    envoy_echo.proc.kill()
    envoy_echo.proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{envoy_echo.admin}/ready", timeout=1):
                pass
        except OSError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("envoy still answers after its supervisor was killed")


def _serials(certs: Any) -> set[str]:
    """Every certificate serial number in Envoy's /certs answer."""
    if isinstance(certs, dict):
        own = {str(certs["serial_number"])} if "serial_number" in certs else set()
        return own.union(*(_serials(v) for v in certs.values()))
    if isinstance(certs, list):
        return set().union(*(_serials(v) for v in certs))
    return set()


def _api(xcp: XdsControlPlane, path: str) -> Any:
    return _api_at(xcp.cp.api, path)


def _api_at(api: str, path: str) -> Any:
    with urllib.request.urlopen(f"{api}{path}", timeout=5) as r:
        return json.loads(r.read())


def test_an_intermediate_rotation_reaches_envoy_over_sds_with_no_failed_call(
    xds_control_plane: XdsControlPlane, tmp_path: Path, cleanup: list[Any]
) -> None:
    xcp = xds_control_plane
    apply(xcp, SERVICES)
    envoy = envoy_echo(xcp, tmp_path, cleanup, "envoy-echo-1")
    client = run_workload(
        xcp.cp, tmp_path, "web-1", service_account="web", labels={"app": "web"}, app=sleeper()
    )
    cleanup.append(client)
    client.wait_ready()
    until("before the rotation", lambda: curl(client.outbound, "envoy-echo.shop"), 200)
    served_before = json.loads(envoy.admin_get("/certs")[1])
    xcp.cp.cli("ca", "rotate", "intermediate", check=True)
    new_issuer = _api(xcp, "/v1/ca")["issuerFingerprint"]
    deadline = time.monotonic() + 30
    failures, calls = [], 0
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, _ = curl(client.outbound, "envoy-echo.shop")
        calls += 1
        if status != 200:
            failures.append(status)
        rows = _api(xcp, "/v1/proxies")["items"]
        row = next(r for r in rows if r["workload"] == "envoy-echo-1")
        if row["issuerFingerprint"] == new_issuer and row["upToDate"]:
            break
        time.sleep(0.2)
    assert row.get("issuerFingerprint") == new_issuer, row
    # Envoy serves the new leaf (SDS), and the Gossamer client accepts its new chain.
    served_after = json.loads(envoy.admin_get("/certs")[1])
    assert _serials(served_after) - _serials(served_before), "Envoy serves no new certificate"
    status, data = curl(client.outbound, "envoy-echo.shop")
    assert (status, data["servedBy"]) == (200, "envoy-echo-1")
    assert failures == [], f"{len(failures)} of {calls} calls failed during the rotation"


def test_short_lived_certificates_are_renewed_for_envoy_both_ways(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    """With 12 s certificates: the SDS leaf Envoy serves and the certificate it uses
    toward the control plane (renewed by `--engine envoy`'s supervisor, reloaded by
    Envoy from the watched files) are both replaced, and calls go on past the first
    certificates' expiry."""
    cp = start_control_plane(tmp_path / "cp", "--xds", "127.0.0.1:0", "--certificate-ttl", "12s")
    cleanup.append(type("Stop", (), {"stop": lambda self: stop_process(cp.proc)})())
    ready = dict(line.split("=", 1) for line in (tmp_path / "cp.ready").read_text().split())
    cp.cli("apply", "-f", "-", stdin=SERVICES, check=True)
    app_port = free_port()
    server = run_workload(
        cp, tmp_path, "envoy-echo-1", service_account="echo", labels={"app": "envoy-echo"},
        app=echo_app("envoy-echo-1", app_port), port=f"http=8080:{app_port}",
        extra=("--engine", "envoy", "--xds", ready["xds"]),
    )  # fmt: skip
    cleanup.append(server)
    client = run_workload(
        cp, tmp_path, "web-1", service_account="web", labels={"app": "web"}, app=sleeper()
    )
    cleanup.append(client)
    server.wait_ready()
    client.wait_ready()
    until("before renewal", lambda: curl(client.outbound, "envoy-echo.shop"), 200)
    envoy_dir = server.state_dir / "envoy"
    bootstrap = json.loads((envoy_dir / "envoy.json").read_text())
    envoy_admin = bootstrap["admin"]["address"]["pipe"]  # the supervisor's private socket
    assert envoy_admin["mode"] == 0o600
    first = x509.load_pem_x509_certificate((envoy_dir / "cert-chain.pem").read_bytes())
    deadline = time.monotonic() + 40
    renewed: set[str] = set()
    while time.monotonic() < deadline:
        status, _ = curl(client.outbound, "envoy-echo.shop")
        assert status == 200, "a call failed while certificates were renewed"
        now = x509.load_pem_x509_certificate((envoy_dir / "cert-chain.pem").read_bytes())
        certs = subprocess.run(
            ["curl", "-s", "-m", "5", "--unix-socket", envoy_admin["path"], "http://envoy/certs"],
            capture_output=True, text=True, timeout=15, check=True,
        ).stdout  # fmt: skip
        serials = _serials(json.loads(certs))
        if now.serial_number != first.serial_number and f"{now.serial_number:x}" in serials:
            renewed.add("xds-client")
        if renewed and time.time() > first.not_valid_after_utc.timestamp() + 1:
            break  # renewed, and calls went on past the first certificates' expiry
        time.sleep(0.5)
    assert renewed == {"xds-client"}, "Envoy never loaded the renewed xDS client certificate"
    assert time.time() > first.not_valid_after_utc.timestamp(), "stopped before expiry"
    rows = _api_at(cp.api, "/v1/proxies")["items"]
    row = next(r for r in rows if r["workload"] == "envoy-echo-1")
    not_after = datetime.fromisoformat(row["certificateNotAfter"])
    assert not_after > first.not_valid_after_utc, "the SDS leaf was not renewed"


def test_a_root_rotation_reaches_envoy_and_its_control_plane_connection(
    xds_control_plane: XdsControlPlane, tmp_path: Path, cleanup: list[Any]
) -> None:
    """The new root reaches Envoy's ROOTCA and the supervisor's bundle for the xDS
    connection; Envoy's leaf moves to the new chain; the old root goes; no call fails."""
    xcp = xds_control_plane
    apply(xcp, SERVICES)
    app_port = free_port()
    server = run_workload(
        xcp.cp, tmp_path, "envoy-echo-1", service_account="echo", labels={"app": "envoy-echo"},
        app=echo_app("envoy-echo-1", app_port), port=f"http=8080:{app_port}",
        extra=("--engine", "envoy", "--xds", f"{xcp.xds[0]}:{xcp.xds[1]}"),
    )  # fmt: skip
    cleanup.append(server)
    client = run_workload(
        xcp.cp, tmp_path, "web-1", service_account="web", labels={"app": "web"}, app=sleeper()
    )
    cleanup.append(client)
    server.wait_ready()
    client.wait_ready()
    until("before the rotation", lambda: curl(client.outbound, "envoy-echo.shop"), 200)
    old_root = _api(xcp, "/v1/ca")["rootFingerprint"]
    rotation = subprocess.Popen(
        [*GOSSAMER, "ca", "rotate", "root", "--overlap", "2s", "--wait", "--timeout", "90"],
        env=xcp.cp.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    failures, calls = [], 0
    deadline = time.monotonic() + 100
    try:
        while rotation.poll() is None and time.monotonic() < deadline:
            status, _ = curl(client.outbound, "envoy-echo.shop")
            calls += 1
            if status != 200:
                failures.append(status)
            time.sleep(0.2)
    finally:
        if rotation.poll() is None:
            rotation.kill()
        output = rotation.communicate()[0].decode()
    assert rotation.returncode == 0, output
    ca = _api(xcp, "/v1/ca")
    assert ca["rootFingerprint"] != old_root and len(ca["roots"]) == 1, ca
    assert failures == [], f"{len(failures)} of {calls} calls failed during the rotation"
    # The supervisor's bundle for the xDS connection follows (it looks every 5 s).
    want = [ca["rootFingerprint"].replace(":", "").lower()]
    roots: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pem = (server.state_dir / "envoy" / "root-cert.pem").read_bytes()
        roots = [c.fingerprint(hashes.SHA256()).hex() for c in x509.load_pem_x509_certificates(pem)]
        if roots == want:
            break
        time.sleep(0.5)
    assert roots == want, server.log.read_text()[-3000:]
    status, data = curl(client.outbound, "envoy-echo.shop")
    assert (status, data["servedBy"]) == (200, "envoy-echo-1")


ROUTES = """
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: shop}
spec:
  selector: {app: echo-v2}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-routes, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - name: canary
    matches: [{headers: [{name: x-canary, value: "1"}]}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-routed, value: canary}]}}
    backendRefs: [{name: echo-v2, port: 80}]
  - name: moved
    matches: [{path: {type: Exact, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
  - name: rewritten
    matches: [{path: {type: PathPrefix, value: /v1}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    backendRefs: [{name: echo, port: 80}]
  - backendRefs: [{name: echo, port: 80}]
---
apiVersion: gossamer.dev/v1alpha1
kind: FaultPolicy
metadata: {name: teapot, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: echo-v2}]
  abort: {httpStatus: 418, percent: 100}
"""


def test_envoy_applies_httproute_rules_and_policies_as_gossamer_would(
    xds_control_plane: XdsControlPlane, tmp_path: Path, cleanup: list[Any]
) -> None:
    xcp = xds_control_plane
    apply(xcp, SERVICES)
    for name, app in (("echo-1", "echo"), ("echo-v2-1", "echo-v2")):
        port = free_port()
        w = run_workload(
            xcp.cp, tmp_path, name, service_account=app, labels={"app": app},
            app=echo_app(name, port), port=f"http=8080:{port}",
        )  # fmt: skip
        cleanup.append(w)
        w.wait_ready()
    client = start_envoy_workload(
        xcp, tmp_path, "envoy-client", service_account="envoy-client", labels={"app": "client"}
    )
    cleanup.append(client)
    client.wait_ready()
    out = client.outbound or ""
    until("no route yet", lambda: curl(out, "echo.shop"), 200)
    apply(xcp, ROUTES.replace("percent: 100}", "percent: 0}"))
    # A header match picks echo-v2, with the rule's header set on the way.
    canary = until(
        "canary",
        lambda: served_by(curl(out, "echo.shop", "/x", "-H", "x-canary: 1"), "echo-v2-1"),
        200,
    )
    headers = {k.lower(): v for k, v in canary["headers"].items()}
    assert canary["servedBy"] == "echo-v2-1" and headers["x-routed"] == "canary"
    # A prefix rewrite by path element; everything else to echo.
    rewritten = until("rewrite", lambda: curl(out, "echo.shop", "/v1/items"), 200)
    # (the canary rule arrived with the rest of the route: this one is in force too)
    assert (rewritten["servedBy"], rewritten["path"]) == ("echo-1", "/v2/items")
    status, _ = curl(out, "echo.shop", "/v10")  # not /v1 by path element: no rewrite
    assert status == 200
    assert curl(out, "echo.shop", "/v10")[1]["path"] == "/v10"
    # A redirect is answered by Envoy itself.
    moved = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H",
         "Host: echo.shop", f"http://{out}/old"],
        capture_output=True, text=True, timeout=15,
    ).stdout  # fmt: skip
    assert moved.startswith("301 ") and moved.endswith("/new"), moved
    # The FaultPolicy on echo-v2 aborts every call addressed to it once it says 100%
    # (as in Gossamer's proxy, the fault is the addressed service's, decided before
    # its routes: calls to echo that its route sends to echo-v2 are not aborted).
    apply(xcp, ROUTES)
    until("fault", lambda: curl(out, "echo-v2.shop", "/x"), 418)
    assert curl(out, "echo.shop", "/x", "-H", "x-canary: 1")[0] == 200
