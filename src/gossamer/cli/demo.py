"""`gossamer demo`: a whole mesh on this machine, with traffic and live golden metrics.

A control plane in a temporary data dir; `web` calling `catalog` (two replicas) and
`ratings` (slow, failing a few percent), each app wrapped in `gossamer run`; a load
generator in the mesh too; and a table of golden metrics read from the proxies.
Ctrl-C or the end of --duration stops every process it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from gossamer.cli.common import fail
from gossamer.cli.output import table
from gossamer.cli.proxy import admin_get, free_port
from gossamer.telemetry import Golden, Totals, aggregate, golden_between, parse_prometheus_text

NAMESPACE = "demo"
SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: demo}
spec:
  selector: {app: catalog}
  ports: [{name: http, port: 80, targetPort: http, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: demo}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 80, targetPort: http, appProtocol: http}]
"""
# (workload, service, app role)
WORKLOADS = [
    ("catalog-1", "catalog", "catalog"),
    ("catalog-2", "catalog", "catalog"),
    ("ratings-1", "ratings", "ratings"),
    ("web-1", "web", "web"),
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run a local mesh with demo services, traffic and live metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--duration",
        type=float,
        default=0,
        help="stop after this many seconds (default: run until Ctrl-C); with --scenario, "
        "each incident's seconds (default: 30)",
    )
    p.add_argument("--rps", type=float, default=40.0, help="load generator rate (default: 40)")
    p.add_argument(
        "--interval", type=float, default=2.0, help="seconds between metric refreshes (default: 2)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    scenario = p.add_argument_group(
        "scenarios",
        "--scenario cascade: a landscape of tiers, an incident, three ways to face "
        "it (gossamer.demo.scenario; docs/traffic-control.md, 'The cascade scenario')",
    )
    scenario.add_argument(
        "--scenario", choices=["cascade"], help="run this scenario and report its figures"
    )
    scenario.add_argument(
        "--services", type=int, default=30, help="services in the landscape (default: 30)"
    )
    scenario.add_argument(
        "--rate", type=float, default=20.0, help="requests/s to the entry tier (default: 20)"
    )
    scenario.add_argument(
        "--warmup",
        type=float,
        default=20.0,
        help="healthy seconds before each incident (default: 20)",
    )
    scenario.add_argument(
        "--show-controls", action="store_true", help="print the controls of phases 2 and 3"
    )
    scenario.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="the scenario's figures as a table or JSON (default: table)",
    )
    p.set_defaults(func=run_demo)


@dataclass
class Demo:
    root: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    admins: dict[str, str] = field(default_factory=dict)  # workload → admin address

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.root / f"{name}.log").open("wb")
        # A session of its own: stopping the demo stops the process and its children.
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env or os.environ.copy(),
            start_new_session=True,
        )
        log.close()
        self.procs.append((name, proc))

    def stop_all(self) -> None:
        """Workloads first, so their proxies can deregister; the control plane last."""
        workloads = [p for n, p in self.procs if n != "control-plane"]
        control = [p for n, p in self.procs if n == "control-plane"]
        for group in (workloads, control):
            for proc in group:
                if proc.poll() is None:
                    # The leader only: `gossamer run` leaves the mesh, drains, then
                    # stops its app and proxy in that order.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            for proc in group:
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None and name != "loadgen":
                log = (self.root / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{log}")


def _gossamer(*args: str) -> list[str]:
    return [sys.executable, "-m", "gossamer.cli.main", *args]


def _wait_file(path: Path, demo: Demo, what: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        demo.check_alive()
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready after {timeout:.0f}s")


def _wait_ready(demo: Demo, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(demo.admins)
    while pending and time.monotonic() < deadline:
        demo.check_alive()
        for name, admin in list(pending.items()):
            with contextlib.suppress(OSError, urllib.error.URLError):
                admin_get(admin, "/ready", timeout=0.5)
                del pending[name]
        time.sleep(0.1)
    if pending:
        raise RuntimeError(f"proxies not ready after {timeout:.0f}s: {', '.join(pending)}")


EDGE_KEY = ("src_namespace", "src_service", "dst_namespace", "dst_service")


@dataclass
class Counts:
    """One scrape of every demo proxy: per service (inbound) and per edge (outbound)."""

    services: dict[tuple[str, ...], Totals]
    edges: dict[tuple[str, ...], Totals]


def _scrape(demo: Demo) -> Counts:
    samples = []
    for admin in demo.admins.values():
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            samples.extend(parse_prometheus_text(admin_get(admin, "/metrics").decode()))
    return Counts(aggregate(samples), aggregate(samples, direction="outbound", by=EDGE_KEY))


def shell_settings(api: str, token_file: str) -> str:
    """The line that points `gossamer tap`, `top`, `stat` in another shell at the demo."""
    return f"export GOSSAMER_SERVER={api} GOSSAMER_TOKEN=$(cat {token_file})"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _cells(r: Golden) -> list[object]:
    return [
        _fmt(None if r.success_rate is None else r.success_rate * 100, ".2f") + "%",
        _fmt(r.rps, ".1f"),
        _fmt(r.p50_ms, ".1f") + "ms",
        _fmt(r.p95_ms, ".1f") + "ms",
        _fmt(r.p99_ms, ".1f") + "ms",
    ]


def _render(
    rows: list[Golden],
    edges: list[Golden],
    elapsed: float,
    interval: float,
    settings: str,
    api: str,
    tty: bool,
) -> None:
    if tty:
        sys.stdout.write("\x1b[H\x1b[2J")
    print(f"Gossamer demo — {elapsed:5.0f}s — control plane {api} — Ctrl-C to stop")
    print(f"dashboard: {api}/   in another shell, for gossamer stat, edges, tap and top:")
    print(f"  {settings}")
    # Each view says its window: this table's is the refresh interval, `gossamer stat`'s
    # is --window (1m by default), the dashboard's is its selector; their numbers differ.
    print(f"\nper service, as its own proxies served it, over the last {interval:g}s:\n")
    table(
        ["NAMESPACE", "SERVICE", "SUCCESS", "RPS", "P50", "P95", "P99"],
        [[r.key[0], r.key[1], *_cells(r)] for r in rows],
    )
    print(f"\nper call from service to service, as the callers counted, last {interval:g}s:\n")
    table(
        ["SRC", "DST", "SUCCESS", "RPS", "P50", "P95", "P99"],
        [[f"{r.key[1]}.{r.key[0]}", f"{r.key[3]}.{r.key[2]}", *_cells(r)] for r in edges],
    )
    print(flush=True)


def run_demo(args: argparse.Namespace) -> int:
    if args.scenario:
        from gossamer.demo.scenario import run_scenario

        # --duration is each incident's length here (default 30 s), not the demo's.
        args.duration = args.duration or 30.0
        return run_scenario(args)
    root = Path(tempfile.mkdtemp(prefix="gossamer-demo-"))
    demo = Demo(root)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting the control plane (data dir {root / 'cp'})", flush=True)
        ready = root / "cp.ready"
        demo.spawn(
            "control-plane",
            _gossamer(
                "control-plane",
                "--data-dir",
                str(root / "cp"),
                "--api",
                "127.0.0.1:0",
                "--discovery",
                "127.0.0.1:0",
                "--ready-file",
                str(ready),
            ),
        )
        lines = dict(
            line.split("=", 1) for line in _wait_file(ready, demo, "control plane").split()
        )
        api, discovery = lines["api"], lines["discovery"]
        token_file = str(root / "cp" / "admin.token")
        applied = subprocess.run(
            _gossamer("apply", "-f", "-", "--server", api, "--token-file", token_file),
            input=SERVICES.encode(),
            capture_output=True,
            check=False,
        )
        if applied.returncode != 0:
            raise RuntimeError(f"applying the demo services failed: {applied.stderr.decode()}")
        for workload, service, role in [*WORKLOADS, ("loadgen", "loadgen", "loadgen")]:
            app_port = free_port()
            admin = f"127.0.0.1:{free_port()}"
            demo.admins[workload] = admin
            flags = [
                "--name",
                workload,
                "-n",
                NAMESPACE,
                "--service-account",
                service,
                "-l",
                f"app={service}",
                "--inbound",
                f"127.0.0.1:{free_port()}",
                "--outbound",
                f"127.0.0.1:{free_port()}",
                "--admin",
                admin,
                "--discovery",
                discovery,
                "--server",
                api,
                "--token-file",
                token_file,
                "--state-dir",
                str(root / "state" / workload),
                "--log-level",
                "warning",
            ]
            if role == "loadgen":
                app = [
                    "loadgen",
                    "--target",
                    "http://web.demo/",
                    "--rps",
                    str(args.rps),
                    "--duration",
                    str(args.duration or 10**9),
                ]
            else:
                flags += ["--port", f"http=8080:{app_port}"]
                app = [role, "--listen", str(app_port)]
            print(f"starting {workload} (gossamer run … -- {role})", flush=True)
            demo.spawn(
                workload,
                _gossamer("run", *flags, "--", sys.executable, "-m", "gossamer.demo.apps", *app),
            )
        _wait_ready(demo)
        settings = shell_settings(api, token_file)
        print(f"ready; in another shell: {settings}", flush=True)
        tty = sys.stdout.isatty()
        started = previous_at = time.monotonic()
        previous = _scrape(demo)
        while not stopping:
            end = started + args.duration if args.duration else float("inf")
            time.sleep(max(0.0, min(args.interval, end - time.monotonic())))
            if stopping:
                break
            demo.check_alive()
            now = time.monotonic()
            current = _scrape(demo)
            seconds = now - previous_at
            _render(
                golden_between(previous.services, current.services, seconds),
                golden_between(previous.edges, current.edges, seconds),
                now - started,
                args.interval,
                settings,
                api,
                tty,
            )
            previous, previous_at = current, now
            if now >= end:
                break
    except RuntimeError as err:
        demo.stop_all()
        fail(str(err), hint=f"logs are in {root}")
    finally:
        print("stopping every demo process…", flush=True)
        demo.stop_all()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs and state kept in {root}")
    print("demo stopped")
    return 0
