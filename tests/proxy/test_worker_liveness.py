"""`--workers N`: a hung worker is noticed, killed and replaced (issue 17, decision 0104).

A real `gossamer run --workers 2` client proxy in front of a real echo workload: its
worker 1 is stopped (SIGSTOP: alive, answering nothing, accepting nothing), and the
agent must notice from its unanswered pings, kill it and start another, while worker 0
serves the connections the kernel queued on the stopped worker's sockets. Requests go
on fresh connections all along, so the kernel hashes some to the stopped worker.

The same for a worker stuck before it is ready (a `sitecustomize` on the proxy's
PYTHONPATH stops it, or keeps it sleeping, before its loop runs), but not for workers
waiting for the agent's configuration; for a worker whose loop turns but whose listener
was closed in it (the agent's copy keeps the socket in the SO_REUSEPORT group); and no
worker is left on an old snapshot by restarts during a burst of pushes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gossamer.workers import LIVENESS_INTERVAL, STARTUP_WITHIN, exited
from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    echo_app,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_process,
)
from tests.proxy.test_workers import (
    SERVICE,
    _alive,
    _queued,
    admin_of,
    all_ready,
    eventually,
    get_json,
    get_text,
    lone_proxy,
    outbound_requests,
    request,
    workers_of,
)

pytestmark = pytest.mark.e2e

# Requests sent while the worker hangs, is killed and is replaced: each on a connection
# of its own, one every SPACING seconds (10 s in all), each given ANSWER_WITHIN to come.
REQUESTS = 200
SPACING = 0.05
ANSWER_WITHIN = 30.0


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProcess, Workload, Workload]]:
    tmp = tmp_path_factory.mktemp("liveness")
    cp: ControlPlaneProcess = start_control_plane(tmp / "cp")
    started: list[Workload] = []
    try:
        cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
        echo = run_workload(
            cp, tmp, "echo-1", service_account="echo", labels={"app": "echo"},
            app=echo_app("echo-1", port := free_port()), port=f"http=8080:{port}",
        )  # fmt: skip
        started.append(echo)
        client = run_workload(
            cp, tmp, "client", service_account="client", labels={}, app=sleeper(),
            extra=("--workers", "2"),
        )  # fmt: skip
        started.append(client)
        for w in started:
            w.wait_ready(timeout=60)
        eventually("the client's workers ready", lambda: all_ready(client), timeout=60)
        eventually("echo answers through the mesh", lambda: request(client.outbound, "/p") == 200)
        yield cp, echo, client
    finally:
        for w in started:
            w.stop()
        stop_process(cp.proc)


async def _get(port: int, path: str) -> int | str:
    """One request on a fresh connection: its status, or why there was none."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), ANSWER_WITHIN
        )
    except (OSError, TimeoutError) as err:
        return f"connect: {err!r}"
    try:
        writer.write(
            f"GET http://echo.shop{path} HTTP/1.1\r\nhost: echo.shop\r\n"
            "connection: close\r\n\r\n".encode()
        )
        line = await asyncio.wait_for(reader.readline(), ANSWER_WITHIN)
        if not line:
            return "closed without a response"
        return int(line.split()[1])
    except (OSError, TimeoutError, ValueError, IndexError) as err:
        return f"{path}: {err!r}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _send_throughout(port: int) -> list[int | str]:
    tasks = []
    for n in range(REQUESTS):
        tasks.append(asyncio.ensure_future(_get(port, f"/throughout/{n}")))
        await asyncio.sleep(SPACING)
    return list(await asyncio.gather(*tasks))


def _child_of(pid: int, parent: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) == parent
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_stopped_worker_is_killed_and_replaced_and_every_request_is_answered(
    mesh: tuple[ControlPlaneProcess, Workload, Workload],
) -> None:
    _, _, client = mesh
    agent, victim = workers_of(client)
    pid, restarts = victim["pid"], victim["restarts"]
    port = int(client.outbound.rsplit(":", 1)[1])
    log: Path = client.log
    os.kill(pid, signal.SIGSTOP)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            sent = pool.submit(asyncio.run, _send_throughout(port))
            # The test means something only if the kernel queued some on the stopped
            # worker's socket (worker 0's own queue is emptied as it fills).
            eventually("connections queued on the stopped worker", lambda: _queued(port) > 0)
            # (a) the agent says which worker hung and for how long, and kills it
            hung = re.compile(
                rf"worker 1 \(pid {pid}\) is hung: no answer to \d+ pings in a row, "
                rf"silent for [0-9.]+s; killing it"
            )
            eventually("the agent logs the hung worker", lambda: bool(hung.search(log.read_text())))
            eventually("the hung worker is killed", lambda: not _alive(pid))
            # (b) another process takes its place
            eventually(
                "a new worker 1 is serving",
                lambda: (
                    all_ready(client)
                    and workers_of(client)[1]["pid"] not in (None, pid)
                    and workers_of(client)[1]["restarts"] == restarts + 1
                ),
            )
            # (c) nothing sent meanwhile was reset or left unanswered
            statuses = sent.result(timeout=REQUESTS * SPACING + ANSWER_WITHIN + 30)
        finally:
            if _child_of(pid, agent["pid"]):  # not yet reaped by the agent
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
    failed = [s for s in statuses if s != 200]
    assert not failed, f"{len(failed)} of {REQUESTS} not answered 200: {failed[:10]}"
    # and the new worker serves its share again, on its own sockets
    replacement = admin_of(client, workers_of(client)[1])
    before = outbound_requests(get_text(replacement, "/metrics"))
    for n in range(40):
        assert request(client.outbound, f"/after/{n}") == 200
    assert outbound_requests(get_text(replacement, "/metrics")) > before


def test_waiting_for_a_worker_to_exit_leaves_the_agents_loop_turning() -> None:
    """The agent waits for a killed worker by polling from its loop (`exited`), bounded,
    never with a blocking wait: the loop goes on serving meanwhile."""

    async def main() -> None:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        turns = 0

        async def turn() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.ensure_future(turn())
        try:
            assert await exited(proc, 0.3) is None  # alive: the wait ends at its bound
            assert turns > 1
            proc.kill()
            assert await exited(proc, 30) == -signal.SIGKILL
        finally:
            ticker.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    asyncio.run(main())


# Loaded into every Python process of the proxy under test (PYTHONPATH): the first
# worker process to start hangs before its event loop ever runs, as a worker stuck in
# its start-up would (its marker file is gone after that: the next worker starts).
HANG_AT_START = """
import os, signal, sys, time
if "gossamer.workers" in sys.orig_argv and os.path.exists({marker!r}):
    os.unlink({marker!r})
    if {how!r} == "stopped":
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        time.sleep(3600)
"""


@pytest.mark.parametrize(
    "how",
    ["stopped", "sleeping"],
    ids=[
        "a worker stopped right after its spawn is replaced",
        "a worker stuck in its start-up is replaced",
    ],
)
def test_a_worker_that_never_gets_ready_is_replaced_and_worker_0_serves_meanwhile(
    mesh: tuple[ControlPlaneProcess, Workload, Workload], tmp_path: Path, how: str
) -> None:
    cp = mesh[0]
    marker = tmp_path / "hang-once"
    marker.touch()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HANG_AT_START.format(marker=str(marker), how=how))
    hang = {"PYTHONPATH": str(site)}
    with lone_proxy(cp, tmp_path, env=hang, wait_ready=False) as lonely:
        eventually("the first worker 1 started", lambda: not marker.exists(), timeout=60)
        eventually("the agent's own data plane is configured", lambda: _configured(lonely))
        (first,) = re.findall(r"worker 1 started \(pid (\d+)\)", lonely.log.read_text())
        # Meanwhile the proxy says it is not ready, and why; worker 0 serves every new
        # connection, those the kernel gives worker 1's sockets too.
        status, body = _ready(lonely)
        says = "worker(s) 1 not serving yet (worker 0 accepts on their listeners meanwhile)"
        assert status == 503 and says in body, (status, body)
        for n in range(20):
            assert request(lonely.outbound, f"/while-worker-1-hangs/{n}") == 200
        # The agent notices, says so, and another worker 1 is started and serves.
        stuck = re.compile(
            rf"worker 1 \(pid {first}\) is not serving [0-9.]+s after it was configured "
            rf"\(within {STARTUP_WITHIN:g}s\): stuck in its start-up; killing it"
        )
        eventually(
            "the agent logs the stuck worker",
            lambda: bool(stuck.search(lonely.log.read_text())),
            timeout=STARTUP_WITHIN + 15,
        )
        eventually("the stuck worker is gone", lambda: not _alive(int(first)))
        lonely.wait_ready(timeout=60)
        workers = workers_of(lonely)
        assert workers[1]["pid"] not in (None, int(first)) and workers[1]["restarts"] == 1
        replacement = admin_of(lonely, workers[1])
        for n in range(40):
            assert request(lonely.outbound, f"/after/{n}") == 200
        assert outbound_requests(get_text(replacement, "/metrics")) > 0


def test_workers_waiting_for_the_agents_configuration_are_not_taken_for_stuck(
    mesh: tuple[ControlPlaneProcess, Workload, Workload], tmp_path: Path
) -> None:
    """A worker cannot be ready before the agent has a snapshot and a certificate: the
    start-up deadline runs only while the agent's own data plane is ready."""
    # Nothing listens on that discovery address: the agent keeps trying to join.
    nowhere = ("--discovery", f"127.0.0.1:{free_port()}")
    with lone_proxy(mesh[0], tmp_path, *nowhere, wait_ready=False) as alone:
        eventually("worker 1 listed", lambda: _listed(alone))
        first = workers_of(alone)[1]["pid"]
        # Past the deadline, and two liveness ticks more: nothing is killed.
        time.sleep(STARTUP_WITHIN + 2 * LIVENESS_INTERVAL)
        status, body = _ready(alone)
        assert status == 503 and "no configuration from the control plane yet" in body, body
        worker = workers_of(alone)[1]
        assert (worker["pid"], worker["restarts"]) == (first, 0), worker
        assert "stuck in its start-up" not in alone.log.read_text()


def _listed(w: Workload) -> bool:
    try:
        return workers_of(w)[1]["pid"] is not None
    except OSError:
        return False


def _configured(w: Workload) -> bool:
    """The proxy has its snapshot and certificate: only its workers keep it not ready."""
    try:
        _, body = _ready(w)
    except OSError:
        return False
    return "no configuration" not in body and "no certificate" not in body


def _ready(w: Workload) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{w.admin}/ready", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


# One version of the client's route to echo per push: each is a new snapshot for it.
ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-push, value: "{n}"}}]}}
    backendRefs: [{{name: echo, port: 80}}]
"""
PUSHES = 8
# Worker 1 is signalled after these pushes (the next ones go while it is started again).
KILL_AFTER = (1, 4)


@pytest.mark.parametrize(
    "how",
    [signal.SIGKILL, signal.SIGHUP],
    ids=["killed", "hung up (SIGHUP ends a worker: no reload in gossamer proxy)"],
)
def test_no_worker_is_left_on_an_old_snapshot_by_restarts_during_a_burst_of_pushes(
    mesh: tuple[ControlPlaneProcess, Workload, Workload], how: signal.Signals
) -> None:
    cp, _, client = mesh
    eventually("the client's workers ready", lambda: all_ready(client), timeout=60)
    restarts = workers_of(client)[1]["restarts"]
    killed: list[int] = []
    for n in range(PUSHES):
        cp.cli("apply", "-f", "-", stdin=ROUTE.format(n=n), check=True)
        if n in KILL_AFTER:
            eventually(
                "a worker 1 to signal",
                lambda: workers_of(client)[1]["pid"] not in (None, *killed),
            )
            pid = workers_of(client)[1]["pid"]
            os.kill(pid, how)
            killed.append(pid)

    def versions() -> list[str]:
        return [
            get_json(admin_of(client, w), "/config")["snapshot"]["version"]
            for w in workers_of(client)
        ]

    eventually(
        "every worker on one snapshot, worker 1 started again",
        lambda: (
            all_ready(client)
            and workers_of(client)[1]["pid"] not in killed
            and workers_of(client)[1]["restarts"] == restarts + len(killed)
            and len(set(versions())) == 1
        ),
        timeout=60,
    )
    # ...the last one pushed: whichever worker a new connection reaches, it sets the
    # header of the last version of the route.
    replacement = admin_of(client, workers_of(client)[1])
    before = outbound_requests(get_text(replacement, "/metrics"))
    for n in range(30):
        assert _pushed_header(client.outbound, f"/after-burst/{n}") == str(PUSHES - 1)
    assert outbound_requests(get_text(replacement, "/metrics")) > before


def _pushed_header(outbound: str, path: str) -> str | None:
    """The x-push header echo saw on one request, on a connection of its own."""
    host, port = outbound.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", f"http://echo.shop{path}")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body)
        headers = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
        return headers.get("x-push")
    finally:
        conn.close()


# Loaded into every Python process of the proxy under test (PYTHONPATH): a worker closes
# its outbound listener on SIGUSR2, as uvloop closes a server after an accept error it
# does not expect (ENOMEM, ENOBUFS: not to be had on demand), saying nothing; its loop
# goes on turning and answering pings.
CLOSE_ON_SIGNAL = """
import signal, sys
if "gossamer.workers" in sys.orig_argv:
    def close_outbound(signum, frame):
        import gc
        from gossamer.proxy.dataplane import DataPlane
        for dp in [o for o in gc.get_objects() if isinstance(o, DataPlane)]:
            dp._listening["outbound"].close()
    signal.signal(signal.SIGUSR2, close_outbound)
"""


def test_a_worker_whose_listener_closed_is_replaced_and_every_request_is_answered(
    mesh: tuple[ControlPlaneProcess, Workload, Workload], tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CLOSE_ON_SIGNAL)
    with lone_proxy(mesh[0], tmp_path, env={"PYTHONPATH": str(site)}) as lonely:
        eventually("both workers ready", lambda: all_ready(lonely))
        pid = workers_of(lonely)[1]["pid"]
        port = int(lonely.outbound.rsplit(":", 1)[1])
        os.kill(pid, signal.SIGUSR2)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # On fresh connections all along: the kernel hashes some to the socket the
            # worker closed, which the agent keeps open.
            sent = pool.submit(asyncio.run, _send_throughout(port))
            closed = re.compile(
                rf"worker 1 \(pid {pid}\) accepts nothing on its outbound listener\(s\): "
                r"closed in it, while the agent's copies keep them in the SO_REUSEPORT group; "
                r"killing it"
            )
            eventually(
                "the agent logs the worker that accepts nothing",
                lambda: bool(closed.search(lonely.log.read_text())),
            )
            eventually(
                "a new worker 1 is serving",
                lambda: all_ready(lonely) and workers_of(lonely)[1]["pid"] not in (None, pid),
            )
            statuses = sent.result(timeout=REQUESTS * SPACING + ANSWER_WITHIN + 30)
        failed = [s for s in statuses if s != 200]
        assert not failed, f"{len(failed)} of {REQUESTS} not answered 200: {failed[:10]}"
        replacement = admin_of(lonely, workers_of(lonely)[1])
        before = outbound_requests(get_text(replacement, "/metrics"))
        for n in range(40):
            assert request(lonely.outbound, f"/after/{n}") == 200
        assert outbound_requests(get_text(replacement, "/metrics")) > before
