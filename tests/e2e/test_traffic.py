"""Traffic management across real processes: a control plane, `gossamer run` proxies,
echo apps that say who served them, curl, and the `gossamer` CLI.

The finer behaviours (retries and their budget, ejection, circuit breaking, faults,
mirroring) are covered against real proxies in tests/proxy/test_traffic.py; here the
point is the whole path: apply → status → snapshot → proxy → curl.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
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

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-canary, namespace: shop}
spec: {selector: {app: canary}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-slow, namespace: shop}
spec: {selector: {app: slow}, ports: [{name: http, port: 80, targetPort: http}]}
"""

ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - name: canary
    matches: [{path: {type: PathPrefix, value: /}, headers: [{name: x-canary, value: "1"}]}]
    backendRefs: [{name: echo-canary, port: 80}]
  - name: old-api
    matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}
    backendRefs: [{name: echo, port: 80}]
  - name: moved
    matches: [{path: {type: Exact, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: shop.example, statusCode: 301,
                        path: {type: ReplaceFullPath, replaceFullPath: /here}}
  - name: slow
    matches: [{path: {type: PathPrefix, value: /slow}}]
    backendRefs: [{name: echo-slow, port: 80}]
    timeouts: {request: 500ms}
  - name: split
    backendRefs: [{name: echo, port: 80, weight: 90}, {name: echo-canary, port: 80, weight: 10}]
"""

BROKEN = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-canary}]
  rules: [{backendRefs: [{name: nowhere, port: 80}]}]
"""


def hang_app(port: int) -> list[str]:
    """An app that accepts connections and never answers (a stuck backend)."""
    code = (
        "import socket, time; s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('127.0.0.1', {port})); s.listen(64); time.sleep(600)"
    )
    return [sys.executable, "-c", code]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-s", "--max-time", "10", "-D", "-", *args],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def head_and_body(r: subprocess.CompletedProcess[str]) -> tuple[int, dict[str, str], str]:
    # text=True has turned CRLF into LF.
    head, _, body = r.stdout.partition("\n\n")
    lines = head.split("\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def shop(control_plane: ControlPlaneProcess, tmp_path: Path) -> Iterator[dict[str, Workload]]:
    control_plane.cli("apply", "-f", "-", stdin=SERVICES, check=True)
    started: dict[str, Workload] = {}
    try:
        for name, app in (("echo-1", "echo"), ("canary-1", "canary")):
            port = free_port()
            started[name] = run_workload(
                control_plane, tmp_path, name, service_account=app, labels={"app": app},
                app=echo_app(name, port), port=f"http=8080:{port}",
            )  # fmt: skip
        port = free_port()
        started["slow-1"] = run_workload(
            control_plane, tmp_path, "slow-1", service_account="slow", labels={"app": "slow"},
            app=hang_app(port), port=f"http=8080:{port}",
        )  # fmt: skip
        started["client"] = run_workload(
            control_plane, tmp_path, "client", service_account="client",
            labels={"app": "client"}, app=sleeper(),
        )  # fmt: skip
        for w in started.values():
            w.wait_ready()
        out = started["client"].outbound
        deadline = time.monotonic() + 30
        for host in ("echo.shop", "echo-canary.shop"):
            while (got := head_and_body(curl("-x", f"http://{out}", f"http://{host}/")))[0] != 200:
                assert time.monotonic() < deadline, f"{host} never answered 200; last: {got}"
                time.sleep(0.2)
        yield started
    finally:
        stop_all(started.values())


def wait_for_route(cp: ControlPlaneProcess, out: str) -> None:
    """Until the client's proxy routes by the route (a redirect only it can make)."""
    deadline = time.monotonic() + 20
    while head_and_body(curl("-x", f"http://{out}", "http://echo.shop/moved"))[0] != 301:
        assert time.monotonic() < deadline, "the route never reached the client proxy"
        time.sleep(0.2)


def conditions(cp: ControlPlaneProcess, name: str) -> dict[tuple[str, str], tuple[str, str]]:
    deadline = time.monotonic() + 20
    while True:
        obj = json.loads(cp.cli("get", "httproute", name, "-n", "shop", "-o", "json").stdout)
        parents = (obj.get("status") or {}).get("parents") or []
        if parents:
            return {
                (p["parentRef"]["name"], c["type"]): (c["status"], c["reason"])
                for p in parents
                for c in p["conditions"]
            }
        assert time.monotonic() < deadline, f"route {name} never got a status"
        time.sleep(0.2)


def test_an_httproute_splits_matches_rewrites_redirects_and_times_out(
    shop: dict[str, Workload], control_plane: ControlPlaneProcess
) -> None:
    out = shop["client"].outbound
    control_plane.cli("apply", "-f", "-", stdin=ROUTE, check=True)
    wait_for_route(control_plane, out)
    assert conditions(control_plane, "echo") == {
        ("echo", "Accepted"): ("True", "Accepted"),
        ("echo", "ResolvedRefs"): ("True", "ResolvedRefs"),
    }
    # Header match → canary, every time.
    for _ in range(5):
        status, headers, _ = head_and_body(
            curl("-x", f"http://{out}", "-H", "x-canary: 1", "http://echo.shop/v1")
        )
        assert (status, headers["x-served-by"]) == (200, "canary-1")
    # Rewrite: the app sees the new prefix, the query kept.
    status, _, body = head_and_body(curl("-x", f"http://{out}", "http://echo.shop/old/a?x=1"))
    assert (status, json.loads(body)["path"]) == (200, "/new/a?x=1")
    # Redirect: the exact Location.
    status, headers, _ = head_and_body(curl("-x", f"http://{out}", "http://echo.shop/moved?q=2"))
    assert (status, headers["location"]) == (301, "https://shop.example/here?q=2")
    # Timeout: a backend that never answers gets a 504 that says why.
    status, headers, _ = head_and_body(curl("-x", f"http://{out}", "http://echo.shop/slow"))
    assert status == 504
    assert headers["gossamer-error"].startswith("request timeout: echo-slow.shop:80")
    # The 90/10 split, within statistical bounds: Binomial(200, 0.1) has mean 20, sd 4.2.
    seen: Counter[str] = Counter()
    for _ in range(200):
        status, headers, _ = head_and_body(curl("-x", f"http://{out}", "http://echo.shop/"))
        assert status == 200
        seen[headers["x-served-by"]] += 1
    assert 6 <= seen["canary-1"] <= 36, seen
    assert seen["echo-1"] + seen["canary-1"] == 200
    # And the CLI explains a request's way through the rules.
    explained = control_plane.cli(
        "routes", "echo", "-n", "shop", "--path", "/v1", "-H", "x-canary:1", check=True
    ).stdout
    assert "shop/echo rule canary: yes → echo-canary.shop:80 100%" in explained
    assert "rule moved: no, path /v1 does not match Exact /moved" in explained


def test_a_route_with_a_missing_backend_says_so_and_answers_500(
    shop: dict[str, Workload], control_plane: ControlPlaneProcess
) -> None:
    out = shop["client"].outbound
    control_plane.cli("apply", "-f", "-", stdin=BROKEN, check=True)
    assert conditions(control_plane, "broken") == {
        ("echo-canary", "Accepted"): ("True", "Accepted"),
        ("echo-canary", "ResolvedRefs"): ("False", "BackendNotFound"),
    }
    yaml_status = control_plane.cli("get", "httproute", "broken", "-n", "shop", "-o", "yaml").stdout
    assert "backend Service shop/nowhere does not exist" in yaml_status
    deadline = time.monotonic() + 20
    while True:
        status, headers, _ = head_and_body(curl("-x", f"http://{out}", "http://echo-canary.shop/"))
        if status == 500:
            break
        assert time.monotonic() < deadline, "the broken route never reached the proxy"
        time.sleep(0.2)
    assert "backend Service shop/nowhere does not exist" in headers["gossamer-error"]
    # Other services keep their routing.
    status, headers, _ = head_and_body(curl("-x", f"http://{out}", "http://echo.shop/"))
    assert (status, headers["x-served-by"]) == (200, "echo-1")


def failing_app(port: int) -> list[str]:
    """A replica that answers every request at once with 503."""
    code = f"""
import asyncio

async def answer(reader, writer):
    try:
        while await reader.readuntil(b"\\r\\n\\r\\n"):
            writer.write(b"HTTP/1.1 503 Service Unavailable\\r\\ncontent-length: 0\\r\\n\\r\\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", {port})
    await server.serve_forever()

asyncio.run(main())
"""
    return [sys.executable, "-c", code]


def policies_on_client(client: Workload) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"http://{client.admin}/config", timeout=5) as r:
        snapshot = json.loads(r.read())["snapshot"] or {}
    return sorted(
        k for p in snapshot.get("policies", ()) for k, v in p.items() if v and k != "service"
    )


def wait_for_policies(client: Workload, expected: list[str]) -> None:
    deadline = time.monotonic() + 20
    while policies_on_client(client) != expected:
        assert time.monotonic() < deadline, f"policies {expected} never reached the client"
        time.sleep(0.2)


def test_retries_recover_from_a_failing_replica_and_outlier_detection_ejects_it(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=SERVICES.split("---")[0], check=True)
    started: list[Workload] = []
    try:
        echo_port, bad_port = free_port(), free_port()
        for name, app, port in (
            ("echo-1", echo_app("echo-1", echo_port), echo_port),
            ("bad-1", failing_app(bad_port), bad_port),
        ):
            started.append(run_workload(
                control_plane, tmp_path, name, service_account="echo", labels={"app": "echo"},
                app=app, port=f"http=8080:{port}",
            ))  # fmt: skip
        client = run_workload(control_plane, tmp_path, "client", service_account="client",
                              labels={"app": "client"}, app=sleeper())  # fmt: skip
        started.append(client)
        for w in started:
            w.wait_ready()
        out = client.outbound

        def status() -> int:
            code, headers, _ = head_and_body(curl("-x", f"http://{out}", "http://echo.shop/"))
            # A 503 of the proxy's own (no endpoints yet) is not bad-1's.
            return -1 if "gossamer-error" in headers else code

        def until_seen(wanted: Counter[int]) -> None:
            """Send requests until these answers have come (the balancer may prefer
            echo-1 for a while; an endpoint not used for a while gets cheaper)."""
            seen: Counter[int] = Counter()
            deadline = time.monotonic() + 30
            while seen & wanted != wanted:
                assert time.monotonic() < deadline, f"saw only {seen}, waiting for {wanted}"
                seen[status()] += 1

        until_seen(Counter({200: 1, 503: 1}))  # both replicas are endpoints
        # Retries: every 503 of bad-1 is tried again on echo-1.
        control_plane.cli("apply", "-f", "-", check=True, stdin="""
apiVersion: gossamer.dev/v1alpha1
kind: RetryPolicy
metadata: {name: echo, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  retryOn: [5xx]
  attempts: 2
""")  # fmt: skip
        wait_for_policies(client, ["retry"])
        assert Counter(status() for _ in range(30)) == Counter({200: 30})
        # Outlier detection instead: two 503s in a row from bad-1 and it is out.
        control_plane.cli("delete", "retrypolicy", "echo", "-n", "shop", check=True)
        control_plane.cli("apply", "-f", "-", check=True, stdin="""
apiVersion: gossamer.dev/v1alpha1
kind: OutlierPolicy
metadata: {name: echo, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  consecutiveFailures: 2
  baseEjectionTime: 60s
""")  # fmt: skip
        wait_for_policies(client, ["outlier"])
        until_seen(Counter({503: 2}))
        assert Counter(status() for _ in range(30)) == Counter({200: 30})
    finally:
        stop_all(started)
