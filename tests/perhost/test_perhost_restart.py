"""Restarting the host proxy: a handover under load loses no request (the client
retries, as a mesh client would) and leaves no connection behind; a crash fails closed
(nothing escapes uncaptured) and the workloads register again with the next process.

Host 0 runs the control plane, host 1 `gossamer host` (node-1); hosts 2 and 3 are pods
on node-1: a captured client and echo-1, both served by node-1's process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hosts.conftest import (
    GOSSAMER,
    echo_app,
    require_namespaces,
    sleeper,
    start_control_plane,
    wait_until,
)
from tests.hosts.netns import Host, Network, stop
from tests.perhost.hosts import HostProxyProcess, Ports, run_hosted, start_host_proxy
from tests.perhost.test_perhost_netns import MESH, OUTSIDE, SERVICE, curl, listeners

pytestmark = pytest.mark.e2e

PORTS = Ports(inbound=4143, outbound=4140, admin=4191)
# Four clients, 150 calls each, every call retried (up to 10 tries, 0.2 s apart) on a
# connection error or a 5xx; prints what happened as JSON. Bounded: 10 s per try.
LOAD = """
import json, sys, threading, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
counts = {"ok": 0, "failed": 0, "retried": 0}
lock = threading.Lock()
progress = open(sys.argv[1], "a")

def call():
    for attempt in range(10):
        try:
            with opener.open("http://echo.shop/", timeout=10) as r:
                if r.status == 200:
                    return attempt
        except Exception:
            pass
        time.sleep(0.2)
    return None

def worker():
    for _ in range(150):
        tries = call()
        with lock:
            if tries is None:
                counts["failed"] += 1
            else:
                counts["ok"] += 1
                counts["retried"] += tries > 0
            progress.write(".")
            progress.flush()

threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(counts), flush=True)
"""


def dns_owner(pod: Host, proto: str) -> str:
    """`ss` on mesh DNS's port (15053), UDP ("u") or TCP ("t"), with each socket's owner."""
    return pod.run("ss", f"-H{proto}lnpe", "sport", "= :15053").stdout


def dns_sockets(pod: Host, proto: str) -> set[str]:
    """The inodes of the sockets listening on mesh DNS's port."""
    return set(re.findall(r"\bino:(\d+)", dns_owner(pod, proto)))


def take_over(node: HostProxyProcess, cp_discovery: str, tmp: Path, name: str) -> HostProxyProcess:
    """A second `gossamer host` on the same socket and state: it takes node's workloads."""
    ready, log = tmp / f"{name}.ready", tmp / f"{name}.log"
    proc = node.host.popen(
        *GOSSAMER, "host", "--name", "node-1", "--discovery", cp_discovery,
        "--socket", str(node.socket),  # no join token: the host's certificate is cached
        "--state-dir", str(tmp / "state" / "node-1"), "--ready-file", str(ready),
        "--proxy-gid", "1337", "--take-over", "--handover-drain-seconds", "5",
        "--log-level", "debug",
        log=log,
    )  # fmt: skip

    def up() -> bool:
        assert proc.poll() is None, f"the new gossamer host exited:\n{log.read_text()}"
        return ready.exists()

    wait_until(up, "the new gossamer host never became ready", log=log, timeout=60)
    return HostProxyProcess(name, node.host, proc, node.socket, log)


def test_a_host_proxy_handover_under_load_loses_no_request_and_a_crash_fails_closed(
    tmp_path: Path,
) -> None:
    require_namespaces()
    with Network(4) as net:
        cp_host, node_host, client_pod, echo_pod = net.hosts
        cp = start_control_plane(cp_host, tmp_path)
        cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
        node_host.popen(sys.executable, "-c", OUTSIDE % node_host.address,
                        log=tmp_path / "outside.log")  # fmt: skip
        old = start_host_proxy(
            cp, node_host, tmp_path, "node-1", ("shop", "echo"), ("shop", "client"),
            extra=("--proxy-gid", "1337", "--handover-drain-seconds", "5"),
        )  # fmt: skip
        echo = run_hosted(old, tmp_path, "echo-1", PORTS, app=echo_app("echo-1"),
                          service_account="echo", labels={"app": "echo"},
                          port="http=8080:8081", pod=echo_pod, extra=MESH)  # fmt: skip
        client = run_hosted(old, tmp_path, "client-1", PORTS, app=sleeper(),
                            service_account="client", labels={"app": "client"},
                            pod=client_pod, extra=MESH)  # fmt: skip
        procs = [old.proc]
        load = None
        try:
            for w in (echo, client):
                wait_until(w.ready, f"{w.name} never became ready", timeout=90, log=w.log)
            wait_until(lambda: curl(client_pod, "http://echo.shop/") == (0, "200 echo-1"),
                       "the captured call never reached echo-1", log=old.log)  # fmt: skip

            dns_before = {proto: dns_sockets(client_pod, proto) for proto in ("u", "t")}
            assert all(dns_before.values()), dns_before
            # Under load, a new process takes over; the old one drains and exits.
            progress = tmp_path / "progress"
            progress.touch()
            load = subprocess.Popen(
                client_pod.command(sys.executable, "-c", LOAD, str(progress)),
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            wait_until(lambda: len(progress.read_text()) >= 50, "the load never got going")
            new = take_over(old, cp.discovery, tmp_path, "node-1b")
            procs.append(new.proc)
            assert old.proc.wait(timeout=60) == 0, old.log.read_text()
            out, _ = load.communicate(timeout=300)
            counts = json.loads(out)
            assert counts["ok"] == 600 and counts["failed"] == 0, counts
            assert "took over 2 workload(s)" in new.log.read_text()
            assert "handed over and drained" in old.log.read_text()
            # The pods' listeners are the new process's now, and still serve.
            for pod in (client_pod, echo_pod):
                assert f"pid={new.proc.pid}," in listeners(pod)
                assert f"pid={old.proc.pid}," not in pod.run("ss", "-Htanp").stdout
            # Mesh DNS's sockets too (UDP and TCP): the very sockets (same inodes), handed
            # over, not bound anew, so no query meets a closed port in between.
            for proto in ("u", "t"):
                after = dns_sockets(client_pod, proto)
                assert after == dns_before[proto], (proto, dns_before, after)
                assert f"pid={new.proc.pid}," in dns_owner(client_pod, proto)
            assert curl(client_pod, "http://echo.shop/") == (0, "200 echo-1")

            # A crash: captured traffic is refused, none escapes; the supervisors
            # register again with the next process, and traffic flows.
            os.kill(new.proc.pid, signal.SIGKILL)
            new.proc.wait()
            assert curl(client_pod, "http://echo.shop/")[0] == 6  # DNS captured: no answer
            assert curl(client_pod, f"http://{node_host.address}/")[0] == 7
            assert "GET /" not in (tmp_path / "outside.log").read_text()
            third = take_over(old, cp.discovery, tmp_path, "node-1c")  # none to take over
            procs.append(third.proc)
            wait_until(lambda: curl(client_pod, "http://echo.shop/") == (0, "200 echo-1"),
                       "the workloads never came back after the crash", log=third.log,
                       timeout=60)  # fmt: skip
            # (said once the third process answered: possibly after the curl above)
            wait_until(lambda: "registered again" in client.log.read_text(),
                       "the client's supervisor never said it registered again",
                       log=client.log)  # fmt: skip
        finally:
            if load is not None and load.poll() is None:
                load.kill()
                load.communicate()
            for w in (client, echo):
                w.stop()
            for proc in procs:
                stop(proc)
