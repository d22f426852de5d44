"""`gossamer demo --scenario cascade`: a landscape of services in tiers, an incident,
and the entry tier's success rate and latency measured three ways in one run.

The landscape (`landscape`): tiers web → api → backend → data (4, 8, 12 and 6 of 30
services; labels `tier` and `team`), each service with its own `gossamer proxy`, the
apps of every service in one Python process (`python -m gossamer.demo.scenario apps`,
one port per service), each calling its downstream services through its own proxy's
outbound listener. A RetryPolicy on every api, backend and data service (2 retries on
5xx and timeouts, generous budget) makes retries amplify along the path. A load
generator sends a fixed rate to the web tier through a proxy of its own.

The incident: `backend-0`, which half the api services call (for an optional part of
their answer), turns slow (2 s instead of a few ms). Each phase runs the same incident:
(1) no controls; (2) the controls `gossamer findings` suggested during phase 1's
incident, applied as `gossamer findings --apply` does; (3) a hand-written
TrafficControl. The entry tier's success rate and p50/p99 latency during each
incident are what the load generator saw (a request that failed or timed out counts
as failed, at the latency it failed at). docs/traffic-control.md, "The cascade scenario".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from gossamer.cli.client import ApiError, Client
from gossamer.cli.demo import Demo

NAMESPACE = "landscape"
SLOW = "backend-0"
"""The service the incident slows down."""
INCIDENT_LATENCY_MS = 2000
ENTRY_TIMEOUT = 2.0
"""The load generator (a user) gives up on a web request after this many seconds."""
FINDINGS_STEP = 5
"""Seconds per step when the scenario asks for findings (the control plane scrapes every
second here)."""
TIERS = (("web", 4), ("api", 8), ("backend", 12), ("data", 6))
TEAMS = ("checkout", "catalog", "accounts", "search")


# -- the landscape -------------------------------------------------------------------


@dataclass
class Call:
    """A downstream call a service makes for each request it serves: to one of
    `targets`, taken in turn, and whether the request fails when the call does."""

    targets: list[str]
    optional: bool = False


@dataclass
class ServiceSpec:
    name: str
    tier: str
    team: str
    latency_ms: tuple[float, float]
    calls: list[Call] = field(default_factory=list)


def tier_sizes(n: int) -> dict[str, int]:
    """The services of each tier for a landscape of `n` (at least 4: one per tier), in the
    proportions of the 30-service landscape."""
    if n < 4:
        raise ValueError(f"--services: at least 4 (one per tier), not {n}")
    sizes = {tier: max(1, round(n * count / 30)) for tier, count in TIERS}
    sizes["backend"] = max(1, n - sizes["web"] - sizes["api"] - sizes["data"])
    while sum(sizes.values()) > n:  # rounding up the small tiers left too many
        largest = max(sizes, key=lambda t: sizes[t])
        sizes[largest] -= 1
    return sizes


def landscape(n: int) -> list[ServiceSpec]:
    """Web service i calls the api services i, i+W, i+2W… in turn; api service j calls
    the slow-to-be backend-0 (optional) when j's web caller is even, and one of two other
    backends in turn; every backend calls a data service."""
    sizes = tier_sizes(n)
    web_n, api_n, back_n, data_n = (sizes[t] for t, _ in TIERS)
    out: list[ServiceSpec] = []
    for i in range(web_n):
        apis = [f"api-{j}" for j in range(i, api_n, web_n)] or [f"api-{i % api_n}"]
        out.append(ServiceSpec(f"web-{i}", "web", TEAMS[i % 4], (1, 3), [Call(apis)]))
    others = list(range(1, back_n))
    for j in range(api_n):
        calls = []
        if (j % web_n) % 2 == 0:
            calls.append(Call([SLOW], optional=True))
        if others:
            pair = [others[j % len(others)], others[(j + api_n) % len(others)]]
            calls.append(Call([f"backend-{k}" for k in dict.fromkeys(pair)]))
        else:  # the slow backend is the only one: the api's required call goes to data
            calls.append(Call([f"data-{j % data_n}"]))
        out.append(ServiceSpec(f"api-{j}", "api", TEAMS[j % 4], (2, 6), calls))
    for k in range(back_n):
        out.append(
            ServiceSpec(
                f"backend-{k}", "backend", TEAMS[k % 4], (5, 15), [Call([f"data-{k % data_n}"])]
            )
        )
    for d in range(data_n):
        out.append(ServiceSpec(f"data-{d}", "data", TEAMS[d % 4], (1, 4)))
    return out


def mesh_resources(services: list[ServiceSpec]) -> list[dict[str, Any]]:
    """A Service for each; a RetryPolicy for every service something calls: 2 retries on
    5xx and timeouts, with a budget that lets them all through (so they amplify)."""
    docs: list[dict[str, Any]] = []
    for s in services:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": s.name, "namespace": NAMESPACE},
                "spec": {
                    "selector": {"app": s.name},
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"}
                    ],
                },
            }
        )
        if s.tier == "web":
            continue
        docs.append(
            {
                "apiVersion": "gossamer.dev/v1alpha1",
                "kind": "RetryPolicy",
                "metadata": {"name": s.name, "namespace": NAMESPACE},
                "spec": {
                    "targetRefs": [{"group": "", "kind": "Service", "name": s.name}],
                    "attempts": 2,
                    "retryOn": ["5xx", "gateway-error", "reset", "connect-failure"],
                    # An api answers within its callers' try when its own call times out once.
                    "perTryTimeout": "1s" if s.tier == "api" else "600ms",
                    "backoff": {"baseInterval": "25ms", "maxInterval": "100ms"},
                    "budget": {"percent": 100, "minRetriesPerSecond": 100},
                },
            }
        )
    return docs


def hand_written_controls() -> list[dict[str, Any]]:
    """Phase 3: a small bulkhead in front of the slow service for the api tier (calls over
    it are refused at once, and the api's optional part degrades instead of waiting), and
    a retry budget on the api tier's calls that keeps retries from multiplying."""

    def control(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "gossamer.dev/v1alpha1",
            "kind": "TrafficControl",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        }

    return [
        control(
            f"bulkhead-{SLOW}",
            {
                "from": {"selector": {"matchLabels": {"tier": "api"}}},
                "to": {"selector": {"matchLabels": {"app": SLOW}}},
                "concurrency": {
                    "adaptive": {
                        "algorithm": "Gradient2",
                        "minLimit": 1,
                        "maxLimit": 8,
                        "initialLimit": 4,
                    },
                    "maxPending": 0,
                    "queueTimeout": "10ms",
                },
            },
        ),
        control(
            "retry-budget-api",
            {
                "from": {"selector": {"matchLabels": {"tier": "api"}}},
                "to": {"selector": {"matchLabels": {"tier": "backend"}}},
                "retryBudget": {"percent": 5, "minRetriesPerSecond": 0},
            },
        ),
    ]


# -- the apps: every service of the landscape in one process --------------------------


class Apps:
    """An aiohttp server per service on its own port; a service's downstream calls go
    through its own proxy's outbound listener (`outbounds[name]`)."""

    def __init__(self, services: list[ServiceSpec], outbounds: dict[str, str]) -> None:
        self.services = {s.name: s for s in services}
        self.outbounds = outbounds
        self.turn: dict[tuple[str, int], int] = {}
        self.extra_ms: dict[str, float] = {}
        self.http: ClientSession | None = None

    def handler(self, spec: ServiceSpec) -> Callable[[web.Request], Any]:
        async def serve(request: web.Request) -> web.Response:
            assert self.http is not None
            delay = self.extra_ms.get(spec.name) or random.uniform(*spec.latency_ms)
            await asyncio.sleep(delay / 1000)
            results = await asyncio.gather(
                *(self._call(spec, i, call) for i, call in enumerate(spec.calls))
            )
            failed = [
                f"{target}: {why}"
                for (target, why), call in zip(results, spec.calls, strict=True)
                if why and not call.optional
            ]
            if failed:
                return web.json_response({"service": spec.name, "failed": failed}, status=502)
            degraded = [t for t, why in results if why]
            return web.json_response({"service": spec.name, "degraded": degraded})

        return serve

    async def _call(self, spec: ServiceSpec, index: int, call: Call) -> tuple[str, str | None]:
        assert self.http is not None
        n = self.turn.get((spec.name, index), 0)
        self.turn[(spec.name, index)] = n + 1
        target = call.targets[n % len(call.targets)]
        try:
            async with self.http.get(
                f"http://{target}.{NAMESPACE}/", proxy=f"http://{self.outbounds[spec.name]}"
            ) as r:
                await r.read()
                return target, None if r.status < 500 else str(r.status)
        except (ClientError, TimeoutError) as err:
            return target, type(err).__name__

    async def incident(self, request: web.Request) -> web.Response:
        """POST {"service": S, "latencyMs": MS}: S answers after MS; latencyMs null ends it."""
        body = await request.json()
        if body.get("latencyMs"):
            self.extra_ms[body["service"]] = float(body["latencyMs"])
        else:
            self.extra_ms.pop(body["service"], None)
        return web.json_response({"slow": self.extra_ms})


async def _run_apps(config: dict[str, Any]) -> None:
    services = [
        ServiceSpec(
            s["name"],
            s["tier"],
            s["team"],
            tuple(s["latency_ms"]),
            [Call(**c) for c in s["calls"]],
        )
        for s in config["services"]
    ]
    apps = Apps(services, config["outbounds"])
    # One pool for every service: keep-alive connections to each proxy, no total cap.
    apps.http = ClientSession(
        connector=TCPConnector(limit=0), timeout=ClientTimeout(total=10), trust_env=False
    )
    runners = []
    for spec in services:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", apps.handler(spec))
        runners.append((app, config["ports"][spec.name]))
    control = web.Application()
    control.router.add_post("/incident", apps.incident)
    runners.append((control, config["control_port"]))
    started = []
    for app, port in runners:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        started.append(runner)
    Path(config["ready_file"]).write_text("ready\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in started:
        await runner.cleanup()
    await apps.http.close()


# -- the load generator --------------------------------------------------------------


@dataclass
class Sample:
    at: float
    ms: float
    ok: bool


class Load:
    """Open-loop requests at `rate` a second to the web tier, in turn, through the load
    generator's proxy; bounded in flight and stopped by `stop()`."""

    def __init__(self, outbound: str, entries: list[str], rate: float) -> None:
        self.outbound = outbound
        self.entries = entries
        self.rate = rate
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        gate = asyncio.Semaphore(512)
        tasks: set[asyncio.Task[None]] = set()
        async with ClientSession(
            connector=TCPConnector(limit=0),
            timeout=ClientTimeout(total=ENTRY_TIMEOUT),
            trust_env=False,
        ) as http:

            async def one(target: str) -> None:
                start = time.monotonic()
                ok = False
                try:
                    async with http.get(
                        f"http://{target}.{NAMESPACE}/", proxy=f"http://{self.outbound}"
                    ) as r:
                        await r.read()
                        ok = r.status == 200
                except (ClientError, TimeoutError):
                    pass
                finally:
                    gate.release()
                    self.samples.append(Sample(start, (time.monotonic() - start) * 1000, ok))

            n = 0
            next_at = time.monotonic()
            while not self._stop.is_set():
                await gate.acquire()
                task = asyncio.create_task(one(self.entries[n % len(self.entries)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                next_at += 1 / self.rate
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks, return_exceptions=True)

    def between(self, start: float, end: float) -> dict[str, Any]:
        got = [s for s in self.samples if start <= s.at < end]
        return summary(got)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples: list[Sample]) -> dict[str, Any]:
    if not samples:
        return {"requests": 0, "successRate": None, "p50Ms": None, "p99Ms": None}
    ms = [s.ms for s in samples]
    return {
        "requests": len(samples),
        "successRate": round(sum(s.ok for s in samples) / len(samples), 4),
        "p50Ms": round(_percentile(ms, 0.5), 1),
        "p99Ms": round(_percentile(ms, 0.99), 1),
    }


# -- processes -----------------------------------------------------------------------


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def listen_ports(count: int) -> Iterator[int]:
    """Ports for listeners started later, below the ephemeral range (where no outgoing
    connection takes one in the meantime), each checked free and handed out once."""
    low = _ephemeral_low()
    handed: set[int] = set()
    tries = 0
    while len(handed) < count:
        tries += 1
        if tries > count * 50:
            raise RuntimeError("no free ports below the ephemeral range")
        port = random.randrange(max(low - 12_000, 1024), low)
        if port in handed:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        handed.add(port)
        yield port


@dataclass
class Proxy:
    workload: str
    outbound: str
    admin: str


@dataclass
class Scenario:
    """Everything one run starts, under `root` (`demo.procs`); `demo.stop_all()` ends it."""

    demo: Demo
    services: list[ServiceSpec]
    rate: float
    duration: float
    warmup: float
    say: Callable[[str], None]
    proxies: dict[str, Proxy] = field(default_factory=dict)
    client: Client | None = None
    control_port: int = 0

    @property
    def root(self) -> Path:
        return self.demo.root


def _gossamer(*args: str) -> list[str]:
    return [sys.executable, "-m", "gossamer.cli.main", *args]


def _wait(what: str, ready: Callable[[], bool], sc: Scenario, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        sc.demo.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.2)


def _start(sc: Scenario) -> Load:
    from gossamer.cli.proxy import admin_get

    say = sc.say
    ready = sc.root / "cp.ready"
    say(f"starting the control plane (data dir {sc.root / 'cp'})")
    sc.demo.spawn(
        "control-plane",
        _gossamer(
            "control-plane", "--data-dir", str(sc.root / "cp"), "--api", "127.0.0.1:0",
            "--discovery", "127.0.0.1:0", "--ready-file", str(ready),
            "--scrape-interval", "1", "--log-level", "warning",
        ),
    )  # fmt: skip
    _wait("the control plane", ready.exists, sc, 60)
    lines = dict(line.split("=", 1) for line in ready.read_text().split())
    api, discovery = lines["api"], lines["discovery"]
    token_file = str(sc.root / "cp" / "admin.token")
    sc.client = Client.from_settings(api, token_file)
    _apply(sc.client, mesh_resources(sc.services))
    say(f"applied {len(sc.services)} Services and their RetryPolicies to namespace {NAMESPACE}")

    workloads = [*sc.services, ServiceSpec("loadgen", "client", "sre", (0, 0))]
    ports = listen_ports(4 * len(workloads) + 1)
    app_ports: dict[str, int] = {}
    for s in workloads:
        proxy = Proxy(f"{s.name}-1", f"127.0.0.1:{next(ports)}", f"127.0.0.1:{next(ports)}")
        sc.proxies[s.name] = proxy
        flags = [
            "--name", proxy.workload, "-n", NAMESPACE, "--service-account", s.name,
            "-l", f"app={s.name}", "-l", f"tier={s.tier}", "-l", f"team={s.team}",
            "--inbound", f"127.0.0.1:{next(ports)}", "--outbound", proxy.outbound,
            "--admin", proxy.admin, "--discovery", discovery, "--server", api,
            "--token-file", token_file, "--state-dir", str(sc.root / "state" / proxy.workload),
            "--log-level", "warning", "--drain-seconds", "0",
        ]  # fmt: skip
        if s.tier != "client":
            app_ports[s.name] = next(ports)
            flags += ["--port", f"http=8080:{app_ports[s.name]}/http"]
        sc.demo.spawn(proxy.workload, _gossamer("proxy", *flags))
    say(f"started {len(workloads)} proxies (one per service, and the load generator's)")

    sc.control_port = next(ports)
    app_ready = sc.root / "apps.ready"
    config = {
        "services": [asdict(s) for s in sc.services],
        "outbounds": {name: p.outbound for name, p in sc.proxies.items()},
        "ports": app_ports,
        "control_port": sc.control_port,
        "ready_file": str(app_ready),
    }
    (sc.root / "apps.json").write_text(json.dumps(config))
    sc.demo.spawn(
        "apps",
        [sys.executable, "-m", "gossamer.demo.scenario", "apps", str(sc.root / "apps.json")],
    )
    _wait("the apps", app_ready.exists, sc, 60)

    def all_ready() -> bool:
        for p in sc.proxies.values():
            try:
                admin_get(p.admin, "/ready", timeout=1)
            except OSError:
                return False
        return True

    _wait("the proxies", all_ready, sc, 180)
    say(f"{len(sc.services)} services ready, apps in one process")
    entries = [s.name for s in sc.services if s.tier == "web"]
    return Load(sc.proxies["loadgen"].outbound, entries, sc.rate)


def _apply(client: Client, docs: list[dict[str, Any]]) -> None:
    """POST to /v1/apply, all or nothing, as `gossamer apply` and `findings --apply` do."""
    body = json.dumps({"kind": "List", "items": docs}).encode()
    client.request("POST", "/v1/apply", body=body)


def _delete_controls(client: Client, docs: list[dict[str, Any]]) -> None:
    for d in docs:
        meta = d["metadata"]
        with contextlib.suppress(ApiError):
            client.request(
                "DELETE", f"/v1/resources/trafficcontrols/{meta['namespace']}/{meta['name']}"
            )


def _rss_mib(pid: int) -> float:
    """A process's resident memory (Linux /proc; 0 where it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def memory(sc: Scenario) -> dict[str, float]:
    """Resident memory of what the scenario started, in MiB: every proxy together, the
    apps' process, the control plane."""
    out = {"proxiesMiB": 0.0, "appsMiB": 0.0, "controlPlaneMiB": 0.0}
    for name, proc in sc.demo.procs:
        key = {"apps": "appsMiB", "control-plane": "controlPlaneMiB"}.get(name, "proxiesMiB")
        out[key] += _rss_mib(proc.pid)
    return {k: round(v, 1) for k, v in out.items()}


def _incident(sc: Scenario, latency_ms: float | None) -> None:
    import urllib.request

    body = json.dumps({"service": SLOW, "latencyMs": latency_ms}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{sc.control_port}/incident",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


async def _findings(sc: Scenario, since: float) -> list[dict[str, Any]]:
    """The findings over the time since `since` (and a step more), once the control plane
    has scraped what happened up to now."""
    assert sc.client is not None
    await asyncio.sleep(2)  # its scrapes are a second apart here
    window = int(time.monotonic() - since) + FINDINGS_STEP
    answer = await asyncio.to_thread(
        sc.client.get, "/v1/findings", window=f"{window}s", step=f"{FINDINGS_STEP}s"
    )
    items: list[dict[str, Any]] = answer["items"]
    return items


async def _phase(
    sc: Scenario, load: Load, name: str, *, check_healthy: bool = False
) -> dict[str, Any]:
    """Healthy for `warmup`, then the incident for `duration`: the numbers of each; with
    `check_healthy`, the findings of the healthy part too (there should be none)."""
    healthy_from = time.monotonic()
    await _sleep(sc, sc.warmup)
    healthy: dict[str, Any] = {}
    if check_healthy:
        found = await _findings(sc, healthy_from)
        healthy["healthyFindings"] = [_brief(f) for f in found]
        sc.say(f"{name}: {len(found)} findings while healthy")
    start = time.monotonic()
    await asyncio.to_thread(_incident, sc, INCIDENT_LATENCY_MS)
    sc.say(f"{name}: incident — {SLOW} answers in {INCIDENT_LATENCY_MS} ms")
    await _sleep(sc, sc.duration, progress=(load, start, name))
    end = time.monotonic()
    return {
        "healthy": load.between(healthy_from, start),
        "incident": load.between(start, end),
        "incidentSeconds": round(end - start, 1),
        **healthy,
    }


def _brief(finding: dict[str, Any]) -> dict[str, Any]:
    return {k: finding[k] for k in ("id", "kind", "summary", "services", "evidence")}


async def _sleep(
    sc: Scenario, seconds: float, progress: tuple[Load, float, str] | None = None
) -> None:
    end = time.monotonic() + seconds
    next_report = time.monotonic() + 10
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 1.0))
        await asyncio.to_thread(sc.demo.check_alive)
        if progress and time.monotonic() >= next_report:
            load, since, name = progress
            s = load.between(since, time.monotonic())
            rate = "-" if s["successRate"] is None else f"{s['successRate'] * 100:.0f}%"
            sc.say(
                f"{name}: {time.monotonic() - since:.0f}s into the incident, "
                f"entry success {rate}, p99 {s['p99Ms']} ms"
            )
            next_report += 10


async def _recover(sc: Scenario) -> None:
    await asyncio.to_thread(_incident, sc, None)
    sc.say(f"{SLOW} is fast again; letting the landscape settle")
    await _sleep(sc, max(5.0, sc.warmup / 2))


async def _phases(sc: Scenario, load: Load) -> dict[str, Any]:
    assert sc.client is not None
    client = sc.client
    runner = asyncio.create_task(load.run())
    phases: list[dict[str, Any]] = []
    try:
        sc.say("phase 1/3: no controls")
        began = time.monotonic()
        numbers = await _phase(sc, load, "phase 1", check_healthy=True)
        found = await _findings(sc, began)
        phases.append({"name": "no controls", "controls": [], **numbers})
        await _recover(sc)

        suggested: dict[tuple[str, str], dict[str, Any]] = {}
        for f in found:
            sc.say(f"finding {f['id']} {f['kind']}: {f['summary']}")
            for c in f["suggestions"]:
                suggested[(c["metadata"]["namespace"], c["metadata"]["name"])] = c
        controls = list(suggested.values())
        if controls:
            await asyncio.to_thread(_apply, client, controls)
        names = [c["metadata"]["name"] for c in controls]
        sc.say(f"phase 2/3: the {len(controls)} suggested controls applied: {', '.join(names)}")
        numbers = await _phase(sc, load, "phase 2")
        phases.append({"name": "suggested by findings", "controls": names, **numbers})
        await _recover(sc)
        await asyncio.to_thread(_delete_controls, client, controls)

        hand = hand_written_controls()
        await asyncio.to_thread(_apply, client, hand)
        names = [c["metadata"]["name"] for c in hand]
        sc.say(f"phase 3/3: hand-written controls applied: {', '.join(names)}")
        numbers = await _phase(sc, load, "phase 3")
        phases.append(
            {
                "name": "hand-written",
                "controls": names,
                "spec": [c["spec"] for c in hand],
                **numbers,
            }
        )
        used = memory(sc)  # at the end of the last incident: the most there was to hold
        await asyncio.to_thread(_incident, sc, None)
    finally:
        load.stop()
        await runner
    return {
        "findings": [_brief(f) for f in found],
        "suggested": controls,
        "phases": phases,
        "memory": used,
    }


def run_scenario(args: argparse.Namespace) -> int:
    """`gossamer demo --scenario cascade`."""
    from gossamer.cli.common import emit, fail
    from gossamer.cli.output import table

    as_json = args.output == "json"

    def say(line: str) -> None:
        # Progress goes to standard error when standard output is for JSON.
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr if as_json else sys.stdout,
              flush=True)  # fmt: skip

    try:
        services = landscape(args.services)
    except ValueError as err:
        fail(str(err), hint="the issue's landscape has 30 services; tests use fewer")
    if args.services < 30:
        say(f"note: {args.services} services, fewer than the 30 of the scenario's figures")
    root = Path(tempfile.mkdtemp(prefix="gossamer-scenario-"))
    sc = Scenario(Demo(root), services, args.rate, args.duration, args.warmup, say)
    interrupted = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal interrupted
        if not interrupted:  # once: a second Ctrl-C must not cut the cleanup short
            interrupted = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    result: dict[str, Any] = {}
    failed = True
    try:
        load = _start(sc)
        result = asyncio.run(_phases(sc, load))
        failed = False
    except (RuntimeError, ApiError) as err:
        fail(str(err), hint=f"logs are in {root} (kept)")
    except KeyboardInterrupt:
        failed = False
        say("interrupted")
    finally:
        say("stopping every process of the scenario")
        sc.demo.stop_all()
        if args.keep or failed:
            say(f"logs and state kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if not result:
        return 130  # interrupted (the CLI's exit code for it); a failure exited in fail()
    report = {
        "scenario": "cascade",
        "services": len(services),
        "tiers": tier_sizes(len(services)),
        "rate": args.rate,
        "incidentSeconds": args.duration,
        "slowService": f"{SLOW}.{NAMESPACE}",
        "incidentLatencyMs": INCIDENT_LATENCY_MS,
        "entryTimeoutSeconds": ENTRY_TIMEOUT,
        "root": str(root),
        "pids": [p.pid for _, p in sc.demo.procs],
        **result,
    }
    if emit(args, report):
        return 0
    print()
    print(
        f"the entry tier (web: {report['tiers']['web']}) as the load generator saw it, "
        f"{args.rate:g} req/s, during each {args.duration:g}s incident ({SLOW} +2 s):\n"
    )

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.1f}%"

    table(
        ["PHASE", "CONTROLS", "REQUESTS", "SUCCESS", "P50", "P99", "HEALTHY SUCCESS"],
        [
            [
                p["name"],
                len(p["controls"]),
                p["incident"]["requests"],
                pct(p["incident"]["successRate"]),
                f"{p['incident']['p50Ms']}ms",
                f"{p['incident']['p99Ms']}ms",
                pct(p["healthy"]["successRate"]),
            ]
            for p in report["phases"]
        ],
    )
    for p in report["phases"]:
        if p["controls"]:
            print(f"\n{p['name']}: " + ", ".join(p["controls"]))
    calm = report["phases"][0]["healthyFindings"]
    print(f"\nfindings while healthy, before phase 1's incident: {len(calm) or 'none'}")
    for f in calm:
        print(f"  {f['id']}  {f['kind']}: {f['summary']}")
    if report["findings"]:
        print("\nfindings during phase 1's incident:")
        for f in report["findings"]:
            print(f"  {f['id']}  {f['kind']}: {f['summary']}")
    else:
        print("\nno findings during phase 1's incident: phase 2 ran without controls")
    m = report["memory"]
    print(
        f"\nmemory (RSS) at the end: {len(services) + 1} proxies {m['proxiesMiB']:.0f} MiB, "
        f"apps {m['appsMiB']:.0f} MiB, control plane {m['controlPlaneMiB']:.0f} MiB"
    )
    if args.show_controls:
        print("\nthe controls of phase 2, then 3:")
        print(yaml.safe_dump_all([*report["suggested"], *hand_written_controls()]))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="the scenario's apps, in one process")
    parser.add_argument("role", choices=["apps"])
    parser.add_argument("config", help="the JSON file the scenario wrote")
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_apps(config))


if __name__ == "__main__":
    main()
