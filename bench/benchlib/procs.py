"""Starting, watching and stopping the processes a benchmark run needs.

Every process runs in its own session (so its own process group): a Ctrl-C at the
terminal reaches only bench/run.py, which then stops each group it started, newest
first, with SIGTERM and, after a grace period, SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Clock ticks per second, for utime/stime in /proc/PID/stat.
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """Something the benchmark needs did not work; the message says what."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Processes:
    """Every long-running process of one run; ``stop_all`` ends them all."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def check_alive(self, only: Iterable[Proc] | None = None) -> None:
        """Raise BenchError naming the first process (of ``only``, or all) that exited."""
        for proc in self.procs if only is None else only:
            code = proc.popen.poll()
            if code is not None:
                raise BenchError(
                    f"{proc.name} exited with code {code}; the end of {proc.log}:\n"
                    + proc.log_tail()
                )

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        _stop_group(proc.popen, grace)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def _stop_group(popen: subprocess.Popen[bytes], grace: float) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=grace)
    # The leader may be gone while others in its group live on: kill the group anyway.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=grace)


def run_tool(argv: Sequence[str], timeout: float) -> str:
    """Run a load generator to completion, bounded in time; its stdout and stderr."""
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0]} ran longer than {timeout:.0f}s and was stopped") from None
    finally:
        _stop_group(popen, 2.0)
    text = out.decode(errors="replace")
    if popen.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited with code {popen.returncode}:\n{text[-2000:]}")
    return text


def free_port() -> int:
    """A loopback port that was free a moment ago (for configs that need a number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str,
    check: Callable[[], bool],
    procs: Processes,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until it is true; fail early if a process died, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        if check():
            return
        time.sleep(interval)
    procs.check_alive()
    raise BenchError(f"{what} was not ready after {timeout:.0f}s")


# ---- /proc readings ----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.extend(int(c) for c in text.split())
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a proxy that forks workers counts them all)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def memory_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) of ``pid`` and its descendants, in bytes (0, 0 when it is gone).

    VmRSS counts the mapped pages of the executable and shared libraries too (Envoy's
    binary, libpython and extension modules); RssAnon is the process's own heap.
    """
    rss = anon = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon += int(line.split()[1]) * 1024
    return rss, anon


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and its descendants."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text()
            # The command name may hold spaces; fields after it are space-separated.
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


def system_busy_seconds() -> float:
    """CPU seconds all cores have spent running processes since boot (from /proc/stat).

    Interrupt and softirq time is left out: the kernel charges loopback networking
    there, to no process, and it would count as someone else's work.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + steal) / _CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this process's finished, waited-for children (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU use during a phase: each watched process, the load generator, and the rest.

    "Others" is what the machine spent on processes this run did not start: another
    job on a shared machine. A busy "others" means noisy numbers.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self.percent: dict[str, float] = {}
        self.loadgen_percent = 0.0
        self.others_percent = 0.0

    def _read(self) -> tuple[dict[str, float], float, float, float]:
        return (
            {k: cpu_seconds(pid) for k, pid in self._pids.items()},
            children_cpu_seconds(),
            own_cpu_seconds(),
            system_busy_seconds(),
        )

    def __enter__(self) -> CpuMeter:
        self._start = time.monotonic()
        self._before = self._read()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = max(time.monotonic() - self._start, 1e-9)
        procs0, gen0, own0, busy0 = self._before
        procs1, gen1, own1, busy1 = self._read()
        used = {k: procs1[k] - procs0[k] for k in procs0}
        loadgen = gen1 - gen0
        others = (busy1 - busy0) - sum(used.values()) - loadgen - (own1 - own0)
        self.percent = {k: 100.0 * v / wall for k, v in used.items()}
        self.loadgen_percent = 100.0 * loadgen / wall
        self.others_percent = max(0.0, 100.0 * others / wall)


class RssSampler:
    """Samples the RSS of some processes in a background thread; keeps the maximum."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        self._pids = pids
        self._interval = interval
        self.max_rss: dict[str, int] = dict.fromkeys(pids, 0)
        self.max_anon: dict[str, int] = dict.fromkeys(pids, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def sample(self) -> None:
        for name, pid in self._pids.items():
            rss, anon = memory_bytes(pid)
            self.max_rss[name] = max(self.max_rss[name], rss)
            self.max_anon[name] = max(self.max_anon[name], anon)
        self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
