"""Control-plane scale: N simulated proxies against one replica and against three.

Each simulated proxy is the project's own Agent in this one process: a join token,
its own key, CSR and certificate, a registered Workload, a discovery stream over mTLS,
snapshots acknowledged. Every proxy asks about the Service `shared`; one in a hundred
also asks about `single`. Measured, per setup:

- connect: from starting the first agent until each has its first snapshot. Agents
  start at most --ramp a second and at most --in-flight at a time still waiting for
  their first snapshot (join, CSR, registration, stream): a self-paced ramp, so the
  simulator and the control plane (which admits 200 new streams a second) are never
  handed more joins than they finish, and no join times out and starts over;
- idle: the control plane's RSS, and its CPU over a quiet `--idle` seconds;
- push, every proxy: a new endpoint of `shared` (a Workload applied by hand), from the
  API's answer to each proxy receiving the snapshot that holds it: p50, p99, max;
- push, one service: the same for `single` (only the proxies that asked about it).

One replica runs on SQLite (the default); three replicas share a 3-member etcd cluster,
and proxy i starts on replica i mod 3, with the others as failover addresses.

Every wait is bounded and sized to N (--connect-timeout, and pushes wait
max(60, N / 50) s); a run that does not finish reports how far it got (proxies
connected, RSS) instead of nothing. The simulator runs on uvloop with its state dirs in
/dev/shm when there is one: at 5,000 proxies its own CPU, not the control plane's, is
what a run on two cores mostly measures otherwise.

    .venv/bin/python bench/scale.py --proxies 100,1000 --replicas 1,3
    .venv/bin/python bench/scale.py --proxies 5000 --replicas 1 -o json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
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

from tests.e2e.conftest import ControlPlaneProcess, start_control_plane, stop_process  # noqa: E402
from tests.store.etcdcluster import EtcdCluster  # noqa: E402

from gossamer.proxy.agent.session import Agent, AgentConfig  # noqa: E402
from gossamer.translate import Snapshot  # noqa: E402

NAMESPACE = "bench"
TOKEN_USES = 1000  # the most one join token allows
# Proxies per token: a tenth of its uses, since every join the simulator gave up on (its
# 15 s timeout, on a loaded machine) may still have counted a use at the control plane,
# and three replicas on two busy cores can time out several joins of the same proxy.
PER_TOKEN = TOKEN_USES // 10


def _service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
    }


def _backend(name: str, app: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": app}},
        "spec": {"address": address, "inboundPort": 4143, "serviceAccount": app},
    }


class Api:
    def __init__(self, cp: ControlPlaneProcess) -> None:
        self.base = cp.api
        self.token = cp.token_file.read_text().strip()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def apply(self, *objects: dict[str, Any]) -> None:
        # YAML documents, one object each (JSON is YAML).
        body = "\n---\n".join(json.dumps(o) for o in objects).encode()
        request = urllib.request.Request(
            self.base + "/v1/apply",
            data=body,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/yaml"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()


class Sink:
    """Stands where the data plane goes: when each endpoint count was first seen."""

    def __init__(self) -> None:
        self.first_snapshot = asyncio.Event()
        self.seen: dict[tuple[str, int], float] = {}

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        for service in snapshot.services:
            count = sum(len(port.endpoints) for port in service.ports)
            self.seen.setdefault((service.name, count), now)
        self.first_snapshot.set()

    def set_credentials(self, creds: Any) -> None:
        pass


@dataclass
class Setup:
    replicas: int
    root: Path
    cluster: EtcdCluster | None = None
    cps: list[ControlPlaneProcess] = field(default_factory=list)

    def start(self) -> None:
        extra: list[str] = []
        if self.replicas > 1:
            (self.root / "etcd").mkdir()
            self.cluster = EtcdCluster(self.root / "etcd")
            self.cluster.start()
            extra = ["--store", self.cluster.url("mesh")]
        for i in range(self.replicas):
            data_dir = self.root / f"cp{i}"
            if i:
                data_dir.mkdir(mode=0o700)
                shutil.copytree(self.root / "cp0" / "ca", data_dir / "ca")
            self.cps.append(start_control_plane(data_dir, *extra, "--log-level", "warning"))

    def stop(self) -> None:
        for cp in self.cps:
            stop_process(cp.proc)
        if self.cluster is not None:
            self.cluster.stop()

    def usage(self) -> tuple[float, float]:
        """(CPU seconds so far, RSS MB) summed over the control planes."""
        cpu = rss = 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        for cp in self.cps:
            fields = Path(f"/proc/{cp.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks
            for line in Path(f"/proc/{cp.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
        return cpu, rss


def _discovery(cp: ControlPlaneProcess) -> tuple[str, int]:
    host, port = cp.discovery.rsplit(":", 1)
    return host, int(port)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "max": round(ordered[-1], 3),
        "n": len(ordered),
    }


async def _push(
    setup: Setup,
    api: Api,
    sinks: list[Sink],
    service: str,
    count: int,
    name: str,
    timeout: float,
) -> dict[str, float]:
    """Apply one more endpoint of `service` and time its arrival at `sinks`; with the
    control planes' CPU seconds from the apply until the last arrival (what a push costs
    them, whatever else the machine is doing)."""
    cpu0, _ = setup.usage()
    await asyncio.to_thread(api.apply, _backend(name, service, f"10.9.{count}.1"))
    applied = time.monotonic()
    deadline = applied + timeout
    while time.monotonic() < deadline:
        if all((service, count) in s.seen for s in sinks):
            break
        await asyncio.sleep(0.01)
    cpu1, _ = setup.usage()
    arrived = [s.seen[(service, count)] - applied for s in sinks if (service, count) in s.seen]
    result = _percentiles(arrived)
    result["missing"] = len(sinks) - len(arrived)
    result["cpuSeconds"] = round(cpu1 - cpu0, 3)
    return result


async def run_one(n: int, replicas: int, args: argparse.Namespace) -> dict[str, Any]:
    # The control planes and etcd on disk, as deployed; the simulated proxies' state
    # (a snapshot file each, rewritten on every push) in memory where it can be.
    root = Path(tempfile.mkdtemp(prefix=f"scale-{n}-{replicas}-"))
    shm = Path("/dev/shm")
    proxies_root = Path(
        tempfile.mkdtemp(prefix=f"scale-{n}-{replicas}-", dir=shm if shm.is_dir() else None)
    )
    setup = Setup(replicas, root)
    agents: list[Agent] = []
    try:
        setup.start()
        api = Api(setup.cps[0])
        api.apply(_service("shared"), _service("single"))
        api.apply(
            _backend("shared-0", "shared", "10.9.0.1"), _backend("single-0", "single", "10.9.0.2")
        )
        tokens = [
            api.call(
                "POST",
                "/v1/tokens",
                {"namespace": NAMESPACE, "serviceAccount": "sim", "uses": TOKEN_USES},
            )["token"]
            for _ in range((n + PER_TOKEN - 1) // PER_TOKEN)
        ]
        addresses = [_discovery(cp) for cp in setup.cps]
        sinks = [Sink() for _ in range(n)]
        for i in range(n):
            first = addresses[i % len(addresses)]
            interests = {f"shared.{NAMESPACE}"}
            if i % 100 == 0:
                interests.add(f"single.{NAMESPACE}")
            agents.append(
                Agent(
                    AgentConfig(
                        discovery=first,
                        replicas=tuple(a for a in addresses if a != first),
                        workload=f"sim-{i}",
                        namespace=NAMESPACE,
                        service_account="sim",
                        address="127.0.0.1",
                        inbound_port=4143,
                        state_dir=proxies_root / f"sim-{i}",
                        labels={"app": "sim"},
                        join_token=tokens[i // PER_TOKEN],
                        interests=frozenset(interests),
                    ),
                    sinks[i],
                )
            )
        cpu0, _ = setup.usage()
        started = time.monotonic()
        in_flight = asyncio.Semaphore(args.in_flight)

        async def start(i: int, agent: Agent, sink: Sink) -> None:
            # Proxies start as a mesh's do, over a while, not all in one instant, and
            # no faster than the control plane brings them up.
            await asyncio.sleep(i / args.ramp)
            async with in_flight:
                await agent.start()
                await sink.first_snapshot.wait()

        connect_timeout = args.connect_timeout or max(600.0, n * 0.5)

        async def report() -> None:
            # How far a long connect has got, on stderr: what is left if it never ends.
            while True:
                await asyncio.sleep(30)
                _, rss = setup.usage()
                done = sum(s.first_snapshot.is_set() for s in sinks)
                print(
                    f"connect: {done}/{n} after {time.monotonic() - started:.0f} s, "
                    f"control plane RSS {rss:.0f} MB, load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )

        reporter = asyncio.create_task(report())
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    *(start(i, a, s) for i, (a, s) in enumerate(zip(agents, sinks, strict=True)))
                ),
                connect_timeout,
            )
        except TimeoutError:
            connected = sum(s.first_snapshot.is_set() for s in sinks)
            _, rss = setup.usage()
            return {
                "proxies": n,
                "replicas": replicas,
                "store": "etcd (3 members)" if replicas > 1 else "sqlite",
                "incomplete": f"{connected} of {n} connected after {connect_timeout:g} s",
                "rssMB": round(rss, 1),
            }
        finally:
            reporter.cancel()
        connect = time.monotonic() - started
        cpu1, _ = setup.usage()
        await asyncio.sleep(args.idle)
        cpu2, rss = setup.usage()
        pushes_all, pushes_one = [], []
        wait = max(60.0, n / 50)
        for k in range(1, args.pushes + 1):
            pushes_all.append(await _push(setup, api, sinks, "shared", k + 1, f"shared-{k}", wait))
            single = [s for i, s in enumerate(sinks) if i % 100 == 0]
            pushes_one.append(await _push(setup, api, single, "single", k + 1, f"single-{k}", wait))
        return {
            "proxies": n,
            "replicas": replicas,
            "store": "etcd (3 members)" if replicas > 1 else "sqlite",
            "connectSeconds": round(connect, 2),
            "simulatorRssMB": round(_own_rss(), 1),
            "connectCpuSeconds": round(cpu1 - cpu0, 2),
            "idleRssMB": round(rss, 1),
            "idleCpuPercent": round(100 * (cpu2 - cpu1) / args.idle, 1),
            "pushEveryProxy": pushes_all,
            "pushOneService": pushes_one,
        }
    finally:
        # All at once and bounded: one by one, 5,000 agents took minutes to stop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(
                    *(agent.stop(deregister=False) for agent in agents), return_exceptions=True
                ),
                60,
            )
        setup.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(proxies_root, ignore_errors=True)


def _own_rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _summary(result: dict[str, Any]) -> str:
    def worst(pushes: list[dict[str, float]]) -> str:
        p50 = statistics.median(p["p50"] for p in pushes)
        p99 = max(p["p99"] for p in pushes)
        top = max(p["max"] for p in pushes)
        missing = sum(p["missing"] for p in pushes)
        return f"{p50:.3f} / {p99:.3f} / {top:.3f} s" + (f" ({missing} missing)" if missing else "")

    if "incomplete" in result:
        return (
            f"| {result['proxies']:,} | {result['replicas']} ({result['store']}) | "
            f"incomplete: {result['incomplete']} | {result['rssMB']} MB | | | |"
        )
    return (
        f"| {result['proxies']:,} | {result['replicas']} ({result['store']}) | "
        f"{result['connectSeconds']} s | {result['idleRssMB']} MB | "
        f"{result['idleCpuPercent']}% | {worst(result['pushEveryProxy'])} | "
        f"{worst(result['pushOneService'])} |"
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--proxies", default="100,1000", help="comma-separated N (default 100,1000)")
    p.add_argument("--replicas", default="1,3", help="comma-separated (default 1,3)")
    p.add_argument("--pushes", type=int, default=3, help="pushes of each kind (default 3)")
    p.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=0.0,
        help="seconds to connect every proxy (default: max(600, N / 2))",
    )
    p.add_argument(
        "--in-flight",
        type=int,
        default=50,
        help="proxies still waiting for their first snapshot, at most (default 50)",
    )
    p.add_argument(
        "--ramp", type=float, default=100.0, help="proxies started per second (default 100)"
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = p.parse_args()
    results = []
    if args.output == "table":
        print(
            "| proxies | replicas | connect all | idle RSS | idle CPU | "
            "push every proxy p50 / p99 / max | push one service p50 / p99 / max |"
        )
        print("|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.proxies.split(",")):
        for replicas in (int(x) for x in args.replicas.split(",")):
            result = await run_one(n, replicas, args)
            results.append(result)
            if args.output == "table":
                print(_summary(result), flush=True)
    if args.output == "json":
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(main())
