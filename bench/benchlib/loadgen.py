"""The two load generators and their output.

- Max throughput: ``wrk`` (closed loop, fixed keep-alive connections, ``--latency``).
- Fixed rate: ``h2load --h1 --rps`` (open loop per connection), which writes every
  request's send time and duration to ``--log-file``; percentiles come from that file.
  Connections are opened 1 ms apart (``-r 1 --rate-period 1ms``) so their send timers
  are spread across the period instead of firing together in bursts of ``-c``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib.procs import BenchError, run_tool

HOST = "echo.bench"

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


def parse_wrk(text: str) -> WrkResult:
    def need(pattern: str) -> re.Match[str]:
        m = re.search(pattern, text, re.MULTILINE)
        if m is None:
            raise BenchError(f"unexpected wrk output (no {pattern!r}):\n{text}")
        return m

    pct = {
        int(m.group(1)): _ms(m.group(2), m.group(3))
        for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    }
    done = need(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m)")
    latency_max = need(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2), done.group(3)) / 1e3,
        rps=float(need(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=pct[50],
        p75_ms=pct[75],
        p90_ms=pct[90],
        p99_ms=pct[99],
        max_ms=_ms(latency_max.group(1), latency_max.group(2)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(
            zip(
                ("connect", "read", "write", "timeout"),
                (int(g) for g in sock.groups()) if sock else (0, 0, 0, 0),
                strict=True,
            )
        ),
    )


def wrk(wrk_bin: str, port: int, connections: int, seconds: float) -> WrkResult:
    argv = [
        wrk_bin,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        "-H",
        f"Host: {HOST}",
        f"http://127.0.0.1:{port}/",
    ]
    return parse_wrk(run_tool(argv, timeout=seconds + 30))


@dataclass
class FixedRateResult:
    target_rps: int
    achieved_rps: float
    requests: int  # measured (after the warm-up cut)
    errors: int  # failed streams or non-2xx, measured
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    delayed_sends: int  # responses slower than the send period: the next send went out late

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def parse_h2load_log(
    path: Path, target_rps: int, connections: int, warmup: float
) -> FixedRateResult:
    rows: list[tuple[int, int, int]] = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if not rows:
        raise BenchError(f"h2load wrote no requests to {path}")
    rows.sort()
    cut = rows[0][0] + int(warmup * 1e6)
    measured = [r for r in rows if r[0] >= cut]
    if len(measured) < 2:
        raise BenchError(f"h2load logged too few requests after the warm-up ({len(rows)} in all)")
    ok = sorted(r[2] / 1e3 for r in measured if 200 <= r[1] < 300)
    span = (measured[-1][0] - measured[0][0]) / 1e6
    # Each connection sends every connections/target_rps seconds. h2load holds a send
    # back while the previous response on that connection is outstanding (HTTP/1.1),
    # and then times it from the late send: a response slower than the period hides
    # latency. Count those so a reader knows how far to trust the tail.
    period_ms = connections / target_rps * 1e3
    delayed = sum(1 for r in measured if r[2] / 1e3 > period_ms)
    return FixedRateResult(
        target_rps=target_rps,
        achieved_rps=(len(measured) - 1) / span if span > 0 else math.nan,
        requests=len(measured),
        errors=len(measured) - len(ok),
        p50_ms=percentile(ok, 50),
        p90_ms=percentile(ok, 90),
        p99_ms=percentile(ok, 99),
        p999_ms=percentile(ok, 99.9),
        max_ms=ok[-1] if ok else math.nan,
        delayed_sends=delayed,
    )


def h2load_fixed_rate(
    h2load_bin: str,
    port: int,
    rate: int,
    connections: int,
    seconds: float,
    warmup: float,
    log_file: Path,
) -> FixedRateResult:
    per_conn = rate // connections
    if per_conn * connections != rate:
        raise BenchError(f"--rate {rate} must be a multiple of --rate-connections {connections}")
    total = per_conn * connections * math.ceil(seconds + warmup)
    argv = [
        h2load_bin,
        "--h1",
        "-t1",
        f"-c{connections}",
        f"-n{total}",
        f"--rps={per_conn}",
        "-r1",
        "--rate-period=1ms",
        f"--log-file={log_file}",
        f"--connect-to=127.0.0.1:{port}",
        f"http://{HOST}/",
    ]
    out = run_tool(argv, timeout=seconds + warmup + 30)
    if "requests:" not in out:
        raise BenchError(f"unexpected h2load output:\n{out}")
    return parse_h2load_log(log_file, rate, connections, warmup)
