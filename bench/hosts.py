"""Per-host mode against sidecars: memory per workload and added latency, one run.

For each mode, on this machine (127.0.0.1, ephemeral ports), with one control plane:

- memory: N idle workloads (no ports; each a real registered Workload with its own
  certificate, registration and discovery stream) for N = --workloads (1, 10, 50),
  added in steps. Per-host: one `gossamer host` serving them (registered over its unix
  socket from this process, which holds their leases); sidecars: one `gossamer proxy`
  per workload. Measured: the proportional set size (PSS, /proc/PID/smaps_rollup: shared
  pages divided among the processes that share them, so sums are fair) of the proxy
  processes, after --settle seconds. `gossamer run` supervisors are not counted: a
  workload has one in either mode.
- latency: a client workload and an echo workload (the demo's aiohttp echo app, the same
  one for both modes and for "direct") added to the same proxies, and h2load --h1 at a
  fixed --rate through the client's outbound listener (Host: echo.bench), for
  --seconds after a warm-up; "direct" is h2load to the app itself. Added latency is the
  mode's p50 (p99) less direct's.

    .venv/bin/python bench/hosts.py                         # N = 1, 10, 50
    .venv/bin/python bench/hosts.py --workloads 1,10 --rate 200 -o json

Needs h2load (Debian: nghttp2-client). Every wait is bounded; every process started is
stopped, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.benchlib.loadgen import HOST, h2load_fixed_rate  # noqa: E402
from tests.e2e.conftest import (  # noqa: E402
    GOSSAMER,
    ControlPlaneProcess,
    free_port,
    start_control_plane,
    stop_process,
)

from gossamer.host.run import register  # noqa: E402

NAMESPACE = "bench"
SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: bench}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}
"""


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    return total


def wait_for(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        time.sleep(0.1)


def status(url: str, host: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as r:
            return int(r.status)
    except Exception:
        return 0


@dataclass
class Run:
    cp: ControlPlaneProcess
    work: Path
    args: argparse.Namespace
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    leases: list[socket.socket] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.work / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for lease in self.leases:
            lease.close()
        self.leases.clear()
        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()


def request(
    name: str, account: str, labels: dict[str, str], app_port: int | None
) -> dict[str, Any]:
    ports = [{"port": 8080, "appPort": app_port, "name": "http"}] if app_port else []
    return {
        "name": name, "namespace": NAMESPACE, "serviceAccount": account, "labels": labels,
        "ports": ports, "inbound": "127.0.0.1:0", "outbound": "127.0.0.1:0",
        "admin": "127.0.0.1:0", "address": "127.0.0.1",
    }  # fmt: skip


def latency(run: Run, outbound_port: int, label: str) -> dict[str, Any]:
    wait_for(lambda: status(f"http://127.0.0.1:{outbound_port}/", HOST) == 200,
             f"{label}: the echo service never answered", 60)  # fmt: skip
    result = h2load_fixed_rate(
        run.args.h2load, outbound_port, run.args.rate, run.args.connections,
        run.args.seconds, run.args.warmup, run.work / f"{label}.h2load.log",
    )  # fmt: skip
    return result.to_json()


def per_host(run: Run, counts: list[int], app_port: int) -> dict[str, Any]:
    cp, work = run.cp, run.work
    cp.cli("apply", "-f", "-", check=True, stdin=json.dumps({
        "apiVersion": "gossamer.dev/v1alpha1", "kind": "Host",
        "metadata": {"name": "bench-host", "namespace": "gossamer-hosts"},
        "spec": {"workloads": [{"namespace": NAMESPACE, "serviceAccount": sa}
                               for sa in ("idle", "client", "echo")]},
    }))  # fmt: skip
    sock, ready = work / "host.sock", work / "host.ready"
    host = run.spawn("host", [
        *GOSSAMER, "host", "--name", "bench-host", "--discovery", cp.discovery,
        "--server", cp.api, "--token-file", str(cp.token_file), "--socket", str(sock),
        "--state-dir", str(work / "host-state"), "--ready-file", str(ready),
        "--log-level", "warning",
    ])  # fmt: skip
    wait_for(ready.exists, "gossamer host never became ready", 60)
    time.sleep(run.args.settle)
    base = pss_bytes([host.pid])
    memory: dict[str, Any] = {"0": {"pss": base}}
    registered = 0
    for n in counts:
        while registered < n:
            lease, _ = register(sock, request(f"idle-{registered}", "idle", {"app": "idle"}, None))
            run.leases.append(lease)
            registered += 1
        time.sleep(run.args.settle)
        pss = pss_bytes([host.pid])
        memory[str(n)] = {"pss": pss, "per_workload": pss / n, "marginal": (pss - base) / n}
        print(f"per-host  N={n:3d}: {pss / 1e6:7.1f} MB in all, {pss / n / 1e6:6.2f} MB per "
              f"workload ({(pss - base) / n / 1e6:.2f} MB each past the empty host)",
              file=sys.stderr)  # fmt: skip
    lease, _ = register(sock, request("echo-0", "echo", {"app": "echo"}, app_port))
    run.leases.append(lease)
    lease, client = register(sock, request("client-0", "client", {"app": "client"}, None))
    run.leases.append(lease)
    measured = latency(run, int(client["outbound"].rsplit(":", 1)[1]), "per-host")
    run.close()
    return {"memory": memory, "latency": measured}


def sidecars(run: Run, counts: list[int], app_port: int) -> dict[str, Any]:
    cp, work = run.cp, run.work

    def proxy(
        name: str, account: str, labels: dict[str, str], port: str | None
    ) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
        ready = work / f"{name}.ready"
        argv = [
            *GOSSAMER, "proxy", "--name", name, "-n", NAMESPACE, "--service-account", account,
            "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--discovery", cp.discovery, "--server", cp.api, "--token-file", str(cp.token_file),
            "--state-dir", str(work / "sidecar-state" / name), "--ready-file", str(ready),
            "--log-level", "warning",
        ]  # fmt: skip
        for k, v in labels.items():
            argv += ["-l", f"{k}={v}"]
        if port:
            argv += ["--port", port]
        proc = run.spawn(name, argv)
        return proc, {"ready": str(ready)}

    memory: dict[str, Any] = {}
    started: list[subprocess.Popen[bytes]] = []
    for n in counts:
        batch = []
        while len(started) < n:
            proc, files = proxy(f"idle-sc-{len(started)}", "idle", {"app": "idle"}, None)
            started.append(proc)
            batch.append(Path(files["ready"]))
        for ready in batch:
            wait_for(ready.exists, f"{ready.name}: a sidecar never became ready", 120)
        time.sleep(run.args.settle)
        pss = pss_bytes([p.pid for p in started])
        memory[str(n)] = {"pss": pss, "per_workload": pss / n}
        print(f"sidecars  N={n:3d}: {pss / 1e6:7.1f} MB in all, {pss / n / 1e6:6.2f} MB per "
              "workload", file=sys.stderr)  # fmt: skip
    _, echo = proxy("echo-sc", "echo", {"app": "echo"}, f"http=8080:{app_port}")
    _, client = proxy("client-sc", "client", {"app": "client"}, None)
    for files in (echo, client):
        wait_for(Path(files["ready"]).exists, "the latency sidecars never became ready", 120)
    addresses = json.loads(Path(client["ready"]).read_text())
    measured = latency(run, int(addresses["outbound"].rsplit(":", 1)[1]), "sidecars")
    run.close()
    return {"memory": memory, "latency": measured}


def table(results: dict[str, Any], counts: list[int]) -> str:
    host, side, direct = results["per_host"], results["sidecars"], results["direct"]
    lines = [
        "| N workloads | per-host: MB per workload (PSS) | sidecars: MB per workload (PSS) |",
        "|---:|---:|---:|",
    ]
    for n in counts:
        h, s = host["memory"][str(n)], side["memory"][str(n)]
        lines.append(f"| {n} | {h['per_workload'] / 1e6:.1f} ({h['marginal'] / 1e6:.1f} past "
                     f"the empty host) | {s['per_workload'] / 1e6:.1f} |")  # fmt: skip
    lines += [
        "",
        f"| path ({results['rate']} rps, HTTP/1.1) | p50 ms | p99 ms | added p50 | added p99 |",
        "|---|---:|---:|---:|---:|",
        f"| direct | {direct['p50_ms']:.2f} | {direct['p99_ms']:.2f} | | |",
    ]
    for label, r in (("per-host", host["latency"]), ("sidecars", side["latency"])):
        lines.append(
            f"| {label} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p50_ms'] - direct['p50_ms']:+.2f} | {r['p99_ms'] - direct['p99_ms']:+.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workloads", default="1,10,50", help="N, comma separated")
    parser.add_argument("--rate", type=int, default=200, help="requests per second")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait before sampling memory")  # fmt: skip
    parser.add_argument("--h2load", default=shutil.which("h2load") or "h2load")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.workloads.split(",") if n.strip()})
    if not counts or counts[0] < 1:
        parser.error("--workloads: positive numbers, e.g. 1,10,50")
    with tempfile.TemporaryDirectory(prefix="gossamer-bench-hosts-") as tmp:
        work = Path(tmp)
        cp = start_control_plane(work / "cp", "--log-level", "warning")
        app = None
        try:
            cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
            app_port = free_port()
            with (work / "app.log").open("ab") as out:
                app = subprocess.Popen(
                    [sys.executable, "-m", "gossamer.demo.apps", "echo", "--name", "echo",
                     "--listen", str(app_port)], stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            wait_for(lambda: status(f"http://127.0.0.1:{app_port}/") == 200, "the echo app", 30)
            run = Run(cp, work, args)
            results: dict[str, Any] = {"rate": args.rate, "load": os.getloadavg()}
            results["direct"] = latency(run, app_port, "direct")
            try:
                results["per_host"] = per_host(run, counts, app_port)
                results["sidecars"] = sidecars(run, counts, app_port)
            finally:
                run.close()
            results["load_after"] = os.getloadavg()
        finally:
            if app is not None:
                stop_process(app)
            stop_process(cp.proc)
    if args.output == "json":
        print(json.dumps(results, indent=2))
    else:
        print(table(results, counts))
        print(f"\nload average before/after: {results['load']} / {results['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
