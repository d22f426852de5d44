"""`gossamer proxy --workers N`: one agent feeding N-1 more data-plane processes.

The process that runs the agent (the control-plane session, the certificate, the
workload's registration) is worker 0: it serves traffic as a single proxy does. Each
further worker is a child process (``python -P -m gossamer.workers``) running a
`DataPlane` of its own on the same ports: every data listener is bound with
SO_REUSEPORT, so the kernel spreads new connections over the workers. The agent binds
each worker's sockets and keeps them (the worker gets them as descriptors), so a
worker that dies closes no listener: what the kernel queued on its sockets is not
reset, and worker 0 accepts on them until the worker is back (`DataPlane.stand_in`).

Parent and worker speak over a socketpair, one pickled message per frame; both ends
are this code, started by the same user, so pickle carries nothing foreign. The agent
sends each worker what it gives its own data plane: the snapshot, the credentials and
the TrafficControl shares; a worker asks the agent to subscribe to a host it does not
know (``interest``) and answers requests for its metrics and TrafficControl demand.

A worker dies with its supervisor (PR_SET_PDEATHSIG, and it also ends when the
socketpair closes), and a worker that dies is started again, fed the current
snapshot and credentials (docs/decisions/0100-proxy-workers.md).

The admin listener is the agent's: /metrics adds up every worker's series (see
`merge_metrics`), /ready waits for every worker, /config lists the workers with their
own admin listeners (127.0.0.1, an ephemeral port), where each one's /tap and /config
are.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from gossamer.lifeline import die_with_parent

if TYPE_CHECKING:
    from gossamer.proxy.dataplane import DataPlane, DataPlaneConfig
    from gossamer.proxy.observe.admin import AdminConnection
    from gossamer.translate.snapshot import Snapshot

log = logging.getLogger("gossamer.proxy")

_FRAME: Final = struct.Struct("!I")
# A worker that dies within this long of its start is started again after a growing
# pause (up to RESTART_MAX), so a worker that cannot start does not spin.
RESTART_PAUSE: Final = 0.5
RESTART_MAX: Final = 30.0
STABLE_AFTER: Final = 10.0
# How long the admin listener waits for a worker's metrics before leaving it out.
METRICS_TIMEOUT: Final = 2.0
# A serving worker is pinged every LIVENESS_INTERVAL; one that leaves LIVENESS_MISSES
# pings in a row unanswered (and has been silent that long) is hung: killed and started
# again (docs/decisions/0104-hung-workers.md).
LIVENESS_INTERVAL: Final = 1.0
LIVENESS_MISSES: Final = 3
# A worker not serving this long after it could (the agent's own data plane ready, so
# the worker given its snapshot and credentials) is stuck in its start-up: killed and
# started again. It is not pinged before it is ready (importing the data plane blocks
# its loop). It serves 0.2-0.5 s after its spawn on an idle 2-core host; the rest is
# room for a loaded one.
STARTUP_WITHIN: Final = 10.0
# How long the agent looks for a killed worker's exit, polling, before it goes on.
EXIT_WITHIN: Final = 5.0
EXIT_POLL: Final = 0.05
PING: Final = ("ping",)
PONG: Final = ("pong",)
# A worker's answer to a ping when a listener of its own is closed while the agent's
# copy keeps that socket in the SO_REUSEPORT group: ("closed", [listener names]).
CLOSED: Final = "closed"


class Channel(asyncio.Protocol):
    """Length-prefixed pickled messages over a stream socket, in both directions."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None]) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            (size,) = _FRAME.unpack_from(buffer)
            if len(buffer) < 4 + size:
                return
            message = pickle.loads(bytes(buffer[4 : 4 + size]))
            del buffer[: 4 + size]
            self.on_message(message)

    def send(self, message: object) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        transport.write(_FRAME.pack(len(data)) + data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_lost()


# ---- the agent's side ---------------------------------------------------------------


@dataclasses.dataclass
class Worker:
    """One worker process as the agent sees it."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    channel: Channel | None = None
    admin: tuple[str, int] | None = None
    ready: bool = False
    started_at: float = 0.0
    restarts: int = 0
    pause: float = RESTART_PAUSE
    # Answers to the last demand request (TrafficControl), read at the next one.
    demand: dict[str, int] = dataclasses.field(default_factory=dict)
    # Its listening sockets, by listener name: the agent makes and keeps them, so the
    # worker's death closes no listener and resets nothing the kernel queued there.
    sockets: dict[str, socket.socket] = dataclasses.field(default_factory=dict)
    # Liveness: when it last said anything, and the pings sent since.
    heard_at: float = 0.0
    unanswered: int = 0
    # Since when it could serve: the agent's own data plane has been ready (a snapshot,
    # a valid certificate) since then, and the worker was given both. None while not.
    configured_at: float | None = None


class WorkerSet:
    """Worker processes 1..N-1 beside the agent's own data plane (worker 0)."""

    def __init__(self, dp: DataPlane, count: int, log_level: str = "warning") -> None:
        self.dp = dp
        self.count = count
        self.log_level = log_level
        self.workers = [Worker(i) for i in range(1, count)]
        self._metrics: dict[int, asyncio.Future[str]] = {}
        self._next_request = 0
        self._stopping = False
        self._timers: set[asyncio.TimerHandle] = set()
        self._liveness: asyncio.TimerHandle | None = None
        dp.workers = self
        dp.add_readiness_check(self._not_ready)
        dp.add_config_section("workers", self.describe)

    @property
    def share(self) -> float:
        """Each process's part of the proxy's TrafficControl shares: connections are
        spread evenly, so each carries 1/N of the calls."""
        return 1.0 / self.count

    async def start(self) -> None:
        listeners = self._listeners()
        for worker in self.workers:
            worker.sockets = {
                name: _listening_socket(address, self.dp.config.backlog)
                for name, address in listeners.items()
            }
            # Worker 0 serves what the kernel gives the worker's sockets until it is ready.
            await self.dp.stand_in(worker.index, worker.sockets)
            await self._spawn(worker)
        self._liveness = self.dp.loop.call_later(LIVENESS_INTERVAL, self._check_liveness)

    def _listeners(self) -> dict[str, tuple[str, int]]:
        """Where worker 0 listens for traffic, by listener name (its admin listener
        and mesh DNS are its own)."""
        from gossamer.proxy.dataplane import tcp_listener_name

        dp = self.dp
        assert dp.outbound_address is not None and dp.inbound_address is not None
        listeners = {"outbound": dp.outbound_address, "inbound": dp.inbound_address}
        for address in dp.tcp_addresses.values():
            listeners[tcp_listener_name(address)] = address
        return listeners

    def worker_config(self) -> DataPlaneConfig:
        """The agent's data plane configuration, on the ports it has bound."""
        dp = self.dp
        cfg = dp.config
        assert dp.outbound_address is not None and dp.inbound_address is not None
        return dataclasses.replace(
            cfg,
            outbound=dp.outbound_address,
            inbound=dp.inbound_address,
            admin=("127.0.0.1", 0),
            upstreams=tuple(
                dataclasses.replace(up, listen_host=host, listen_port=port)
                for up, (host, port) in dp.tcp_addresses.items()
            ),
            dns=None,  # mesh DNS is answered by worker 0 only
            reuse_port=True,
            listen_sockets={},  # the worker's own, made here, are passed as descriptors
        )

    async def _spawn(self, worker: Worker) -> None:
        loop = self.dp.loop
        mine, theirs = socket.socketpair()
        fds = {name: sock.fileno() for name, sock in worker.sockets.items()}
        try:
            worker.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "gossamer.workers",
                    str(theirs.fileno()),
                    str(os.getpid()),
                    str(worker.index),
                    self.log_level,
                ],
                pass_fds=(theirs.fileno(), *fds.values()),
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        worker.started_at = time.monotonic()
        worker.ready = False
        worker.admin = None
        worker.unanswered = 0
        worker.configured_at = None
        _, channel = await loop.create_connection(
            lambda: Channel(lambda m: self._on_message(worker, m), lambda: self._on_lost(worker)),
            sock=mine,
        )
        worker.channel = channel
        channel.send(("config", self.worker_config(), worker.index, fds))
        if self.dp.snapshot is not None:
            channel.send(("snapshot", self.dp.snapshot))
        if self.dp.credentials is not None:
            channel.send(("credentials", self.dp.credentials))
        if self._serving_alone():
            worker.configured_at = worker.started_at
        shares = self.dp.controls_shares
        if shares:
            channel.send(("shares", shares))
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    def _on_message(self, worker: Worker, message: Any) -> None:
        # Whatever it says, its loop runs: a pong is only the least it can say.
        worker.heard_at = time.monotonic()
        worker.unanswered = 0
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            worker.admin = (str(message[1][0]), int(message[1][1]))
            self.dp.stand_down(worker.index)
            log.info(
                "worker %d (pid %s) serving, %.1fs after its start",
                worker.index,
                worker.proc.pid if worker.proc is not None else "?",
                worker.heard_at - worker.started_at,
            )
        elif kind == CLOSED:
            self._kill(
                worker,
                f"accepts nothing on its {', '.join(message[1])} listener(s): closed in it, "
                "while the agent's copies keep them in the SO_REUSEPORT group",
            )
        elif kind == "interest":
            self.dp.ask_interest(message[1])
        elif kind == "demand":
            worker.demand = message[1]
        elif kind == "metrics":
            future = self._metrics.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message[2])

    def _check_liveness(self) -> None:
        """Ping each serving worker; one that left LIVENESS_MISSES pings in a row
        unanswered is hung. One timer for the whole set and one small frame per worker
        a tick: nothing is made per ping. A worker not yet serving is not pinged (worker
        0 stands in on its sockets until it is ready); one still not serving
        STARTUP_WITHIN after it could have been configured is stuck in its start-up.
        Either is killed and started again."""
        if self._stopping:
            return
        now = time.monotonic()
        serving = self._serving_alone()
        for worker in self.workers:
            channel = worker.channel
            if channel is None:
                continue
            if not worker.ready:
                if not serving:
                    worker.configured_at = None  # it cannot be ready before the agent
                elif worker.configured_at is None:
                    worker.configured_at = now
                elif now - worker.configured_at >= STARTUP_WITHIN:
                    self._kill(
                        worker,
                        f"is not serving {now - worker.configured_at:.1f}s after it was "
                        f"configured (within {STARTUP_WITHIN:g}s): stuck in its start-up",
                    )
                continue
            silent = now - worker.heard_at
            if (
                worker.unanswered >= LIVENESS_MISSES
                and silent >= LIVENESS_MISSES * LIVENESS_INTERVAL
            ):
                self._kill(
                    worker,
                    f"is hung: no answer to {worker.unanswered} pings in a row, silent for "
                    f"{silent:.1f}s",
                )
            else:
                channel.send(PING)
                worker.unanswered += 1
        self._liveness = self.dp.loop.call_later(LIVENESS_INTERVAL, self._check_liveness)

    def _serving_alone(self) -> bool:
        """The agent's own data plane is ready, but for its workers: a worker given the
        same snapshot and credentials can be ready too (one that is still not ready
        after waiting for the agent's, or for an expired certificate, is not stuck)."""
        waiting = self._not_ready()
        return all(reason == waiting for reason in self.dp.not_ready_reasons())

    def _kill(self, worker: Worker, why: str) -> None:
        """Kill a hung or stuck worker (SIGKILL: a hung process may ignore SIGTERM, a
        stopped one cannot act on it) and end its channel: the path a dead worker takes
        follows, worker 0 standing in on its sockets until another is ready."""
        proc = worker.proc
        log.warning(
            "worker %d (pid %s) %s; killing it",
            worker.index,
            proc.pid if proc is not None else "?",
            why,
        )
        if proc is not None and proc.poll() is None:
            proc.kill()
        channel = worker.channel
        if channel is not None and channel.transport is not None:
            channel.transport.abort()  # connection_lost follows: _on_lost

    def _on_lost(self, worker: Worker) -> None:
        worker.channel = None
        worker.ready = False
        if not self._stopping:
            # What the kernel queued on the worker's sockets, or queues there until it
            # is back, is worker 0's to serve: those sockets are still open, here.
            self.dp.spawn(self.dp.stand_in(worker.index, worker.sockets))
        proc = worker.proc
        if proc is not None and proc.poll() is None:
            proc.kill()  # a worker that closed its channel is of no use: start anew
        if not self._stopping:
            self.dp.spawn(self._restart_once_exited(worker, proc))

    async def _restart_once_exited(
        self, worker: Worker, proc: subprocess.Popen[bytes] | None
    ) -> None:
        """Wait for `proc` to exit without blocking the agent's loop, then start the
        worker again after its pause."""
        code = None
        if proc is not None:
            code = await exited(proc, EXIT_WITHIN)
            if code is None:
                log.error(
                    "worker %d (pid %d) has not exited %.0fs after SIGKILL; starting "
                    "another beside it",
                    worker.index,
                    proc.pid,
                    EXIT_WITHIN,
                )
        if self._stopping:
            return
        lived = time.monotonic() - worker.started_at
        worker.pause = RESTART_PAUSE if lived > STABLE_AFTER else min(worker.pause * 2, RESTART_MAX)
        log.warning(
            "worker %d (pid %s) exited with %s; starting it again in %.1fs",
            worker.index,
            proc.pid if proc is not None else "?",
            code,
            worker.pause,
        )
        worker.restarts += 1
        timer = self.dp.loop.call_later(worker.pause, self._restart, worker)
        self._timers.add(timer)

    def _restart(self, worker: Worker) -> None:
        if not self._stopping:
            self.dp.spawn(self._respawn(worker))

    async def _respawn(self, worker: Worker) -> None:
        try:
            await self._spawn(worker)
        except OSError as err:
            worker.pause = min(worker.pause * 2, RESTART_MAX)
            log.error(
                "worker %d could not be started again: %s; trying again in %.1fs",
                worker.index,
                err,
                worker.pause,
            )
            timer = self.dp.loop.call_later(worker.pause, self._restart, worker)
            self._timers.add(timer)

    def broadcast(self, message: tuple[Any, ...]) -> None:
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.send(message)

    def demand(self) -> dict[str, int]:
        """The workers' TrafficControl demand since the previous ask (one ask late:
        each ask collects what the workers answered to the last one)."""
        total: dict[str, int] = {}
        for worker in self.workers:
            for name, n in worker.demand.items():
                total[name] = total.get(name, 0) + n
            worker.demand = {}
        self.broadcast(("demand",))
        return total

    def _not_ready(self) -> str | None:
        waiting = [str(w.index) for w in self.workers if not w.ready]
        if waiting:
            return (
                f"worker(s) {', '.join(waiting)} not serving yet (worker 0 accepts on their "
                "listeners meanwhile)"
            )
        return None

    def describe(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = [
            {"index": 0, "pid": os.getpid(), "admin": self.dp.admin_address, "ready": True}
        ]
        for w in self.workers:
            alive = w.proc is not None and w.proc.poll() is None
            workers.append(
                {
                    "index": w.index,
                    "pid": w.proc.pid if w.proc is not None and alive else None,
                    "admin": w.admin,
                    "ready": w.ready,
                    "restarts": w.restarts,
                }
            )
        return workers

    # ---- /metrics over every worker ---------------------------------------------------

    def serve_metrics(self, conn: AdminConnection, own: str) -> None:
        """Answer /metrics on `conn` with `own` and every worker's series, added up."""
        self.dp.spawn(self._serve_metrics(conn, own))

    async def _serve_metrics(self, conn: AdminConnection, own: str) -> None:
        loop = self.dp.loop
        waits = []
        for worker in self.workers:
            if worker.channel is None:
                continue
            self._next_request += 1
            future: asyncio.Future[str] = loop.create_future()
            self._metrics[self._next_request] = future
            worker.channel.send(("metrics", self._next_request))
            waits.append(future)
        texts = [own]
        if waits:
            done, pending = await asyncio.wait(waits, timeout=METRICS_TIMEOUT)
            for future in pending:
                future.cancel()
            texts += [f.result() for f in done if not f.cancelled()]
        from gossamer.proxy.wire.http1 import response_head_bytes
        from gossamer.proxy.wire.limits import close_soon

        body = merge_metrics(texts).encode()
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        transport.write(
            response_head_bytes(
                200,
                b"",
                [(b"content-type", b"text/plain; version=0.0.4")],
                b"content-length: %d\r\nconnection: close\r\n" % len(body),
            )
            + body
        )
        # Answered: the connection is no longer held by the aggregation (the idle sweep
        # and the admin limit may take it), and a client that reads none of it is cut
        # off after DELAYED_CLOSE, as after any other answer with connection: close.
        conn.answered()
        close_soon(transport)

    async def stop(self) -> None:
        self._stopping = True
        if self._liveness is not None:
            self._liveness.cancel()
        for timer in self._timers:
            timer.cancel()
        # Each listener closes with the last process that has it: the workers' last.
        for worker in self.workers:
            self.dp.stand_down(worker.index)
            for sock in worker.sockets.values():
                sock.close()
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            if await exited(proc, deadline - time.monotonic()) is not None:
                continue
            proc.kill()
            if await exited(proc, EXIT_WITHIN) is None:
                log.error("worker pid %d has not exited %.0fs after SIGKILL", proc.pid, EXIT_WITHIN)
        for worker in self.workers:
            if worker.channel is not None and worker.channel.transport is not None:
                worker.channel.transport.close()


# Series whose sum over workers means nothing: the earliest start is the proxy's.
_EARLIEST: Final = frozenset({"process_start_time_seconds"})


def merge_metrics(texts: list[str]) -> str:
    """Prometheus expositions from each worker, as one: a series that several workers
    have is added up (counters, histogram buckets, gauges of things open now) -- the
    proxy is one target to its scraper -- except `process_start_time_seconds`, the
    earliest. Families keep the order they first appear in; comments are kept once."""
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    family = ""
    for text in texts:
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    comments, _ = families.setdefault(family, ([], {}))
                    if line not in comments:
                        comments.append(line)
                continue
            series, _, value = line.rpartition(" ")
            try:
                number = float(value)
            except ValueError:
                continue
            _, samples = families.setdefault(family, ([], {}))
            name = series.partition("{")[0]
            if series not in samples:
                samples[series] = number
            elif name in _EARLIEST:
                samples[series] = min(samples[series], number)
            else:
                samples[series] += number
    out: list[str] = []
    for comments, samples in families.values():
        out.extend(comments)
        out.extend(f"{series} {_number(v)}" for series, v in samples.items())
    return "\n".join(out) + "\n"


async def exited(proc: subprocess.Popen[bytes], within: float) -> int | None:
    """`proc`'s exit status once it has exited, or None if it has not within `within`
    seconds: polled from the event loop, never a blocking wait on it."""
    deadline = time.monotonic() + within
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(EXIT_POLL)
    return proc.returncode


def _listening_socket(address: tuple[str, int], backlog: int) -> socket.socket:
    """A listener in `address`'s SO_REUSEPORT group (beside worker 0's), non-blocking
    (worker 0's accept loops take connections from it until it has none left)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.create_server(address, family=family, backlog=backlog, reuse_port=True)
    sock.setblocking(False)
    return sock


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


# ---- a worker -----------------------------------------------------------------------


class _WorkerProcess:
    """What runs in a worker: a data plane fed by the agent over `channel`."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.dp: DataPlane | None = None
        self.channel: Channel | None = None
        # The listening sockets the agent passed, by listener name.
        self.sockets: dict[str, socket.socket] = {}
        self.pending: list[Any] = []
        self._ready_sent = False
        # Set once a snapshot and credentials came: only then does the worker bind.
        self.configured = asyncio.Event()
        self._kinds: set[str] = set()

    def on_message(self, message: Any) -> None:
        kind = message[0]
        if kind == "ping":
            # Answered by this loop: the agent's proof that it turns. Unless a listener
            # is closed here: then the loop turns but what the kernel hashes to that
            # socket waits for nobody (the agent holds it open).
            closed = self._closed_listeners()
            self._send((CLOSED, closed) if closed else PONG)
            return
        if kind == "config":
            config, index, fds = message[1], message[2], message[3]
            sockets = {name: socket.socket(fileno=fd) for name, fd in fds.items()}
            self.sockets = sockets
            config = dataclasses.replace(config, listen_sockets=sockets)
            asyncio.get_running_loop().create_task(self._start(config, index))
            return
        dp = self.dp
        if dp is None:
            self.pending.append(message)
            self._kinds.add(kind)
            if {"snapshot", "credentials"} <= self._kinds:
                self.configured.set()
            return
        if kind == "snapshot":
            self._apply(dp, message[1])
        elif kind == "credentials":
            dp.set_credentials(message[1])
        elif kind == "shares":
            dp.set_control_shares(message[1])
        elif kind == "demand":
            self._send(("demand", dp.controls.demand()))
        elif kind == "metrics":
            self._send(("metrics", message[1], dp.metrics_text()))

    def _closed_listeners(self) -> list[str]:
        """The listeners whose socket was closed in this process while it serves: uvloop
        closes a server (and detaches the socket it was given, whose descriptor reads -1)
        after an accept error it does not expect (ENOMEM, ENOBUFS...), and says nothing."""
        if self.dp is None or self.stop.is_set():
            return []
        return [name for name, sock in self.sockets.items() if sock.fileno() == -1]

    def _apply(self, dp: DataPlane, snapshot: Snapshot) -> None:
        try:
            dp.apply_snapshot(snapshot)
        except Exception:
            log.exception("worker: snapshot %s not applied", getattr(snapshot, "version", "?"))

    def _send(self, message: object) -> None:
        if self.channel is not None:
            self.channel.send(message)

    async def _start(self, config: DataPlaneConfig, index: int) -> None:
        from gossamer.proxy.dataplane import DataPlane

        dp = DataPlane(config, on_interest=lambda key: self._send(("interest", key)))
        # The worker's listening sockets are the agent's, in the SO_REUSEPORT group all
        # along: it accepts on them only once it has the agent's snapshot and credentials,
        # and takes them in first (a data plane takes both before start()). Until it is
        # ready, worker 0 accepts on them in its place.
        stopped = asyncio.ensure_future(self.stop.wait())
        configured = asyncio.ensure_future(self.configured.wait())
        await asyncio.wait((stopped, configured), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        configured.cancel()
        if self.stop.is_set():
            return
        early, self.pending = self.pending, []
        for message in early:
            if message[0] == "snapshot":
                dp.apply_snapshot(message[1])
            elif message[0] == "credentials":
                dp.set_credentials(message[1])
            elif message[0] == "shares":
                dp.set_control_shares(message[1])
            else:
                self.pending.append(message)  # answered once the data plane runs
        try:
            await dp.start()
        except OSError as err:
            log.error("worker %d: cannot start: %s", index, err)
            self.stop.set()
            return
        self.dp = dp
        for message in self.pending:
            self.on_message(message)
        self.pending.clear()
        while not self.stop.is_set() and not dp.ready:
            await asyncio.sleep(0.05)
        if dp.admin_address is not None:
            self._send(("ready", dp.admin_address))

    def lost(self) -> None:
        self.stop.set()  # the agent is gone: so is the reason to serve


async def _worker_main(fd: int) -> None:
    import gc

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Ctrl-C reaches the whole process group: the agent stops its workers after its
    # drain, so a worker waits for SIGTERM (or the agent's end) instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    worker = _WorkerProcess(stop)
    sock = socket.socket(fileno=fd)
    _, channel = await loop.create_connection(
        lambda: Channel(worker.on_message, worker.lost), sock=sock
    )
    worker.channel = channel
    await stop.wait()
    if worker.dp is not None:
        await worker.dp.close()
    if channel.transport is not None:
        channel.transport.close()
    gc.collect()


def main(argv: list[str]) -> int:
    fd, parent, index, level = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    die_with_parent(signal.SIGTERM, parent)
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s",
    )
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_worker_main(fd))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
