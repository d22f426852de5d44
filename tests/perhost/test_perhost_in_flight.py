"""Fairness on the host proxy, requests: a workload that sends more requests at once
than its cap has the rest refused (HTTP/2: REFUSED_STREAM; HTTP/1.1: 503 naming the
cap), while another workload on the same host proxy has its own cap and is served; a
request that ends, however it ends (answered, or cancelled by the client), gives its
place back.

The slow service runs with a sidecar on a host of its own, so the only cap in the way is
the callers' on the host proxy (`--max-in-flight-per-workload 20`). The noisy workload
opens one HTTP/2 connection and 60 streams at once: one connection, so the connection cap
(tested in test_perhost_fairness) does not bound it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hosts.conftest import (
    HostWorkload,
    require_namespaces,
    sleeper,
    start_control_plane,
    wait_until,
)
from tests.hosts.netns import Host, Network, stop
from tests.perhost.hosts import Ports, run_hosted, run_sidecar, start_host_proxy

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: slow, namespace: shop}
spec: {selector: {app: slow}, ports: [{name: http, port: 80, targetPort: http}]}
"""
CAP = 20
STREAMS = 60
HOLD = 8  # seconds the slow app holds each of the noisy workload's requests

# An HTTP/1.1 app that answers each request after ?hold=SECONDS.
SLOW_APP = """
import http.server, socketserver, sys, time, urllib.parse
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        time.sleep(min(float(query.get("hold", ["0"])[0]), 30))
        body = b"ok\\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 256
S(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""

# One HTTP/2 connection (prior knowledge) to a workload's outbound listener, STREAMS
# requests on it at once. Prints what each stream got so far ("200", "reset:7", ...),
# counted, as a JSON line: once after FIRST seconds, then when every stream has ended
# (or after 60 s). With CANCEL > 0 it resets every stream still open after CANCEL s.
H2_CLIENT = """
import collections, json, select, socket, sys, time
import h2.config, h2.connection, h2.events
port, n, authority, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
first, cancel = float(sys.argv[5]), float(sys.argv[6])
s = socket.create_connection(("127.0.0.1", port), timeout=60)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
for _ in range(n):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", authority),
                         (":path", path)], end_stream=True)
s.sendall(c.data_to_send())
got = {}
start = time.monotonic()
printed = cancelled = False
def report():
    print(json.dumps(collections.Counter(got.values())), flush=True)
while len(got) < n and time.monotonic() - start < 60:
    if not printed and time.monotonic() - start >= first:
        report()
        printed = True
    if cancel and not cancelled and time.monotonic() - start >= cancel:
        for sid in range(1, 2 * n, 2):
            if sid not in got:
                c.reset_stream(sid, 8)  # CANCEL
                got[sid] = "cancelled"
        cancelled = True
    if select.select([s], [], [], 0.1)[0]:
        data = s.recv(65536)
        if not data:
            break
        for e in c.receive_data(data):
            if isinstance(e, h2.events.ResponseReceived):
                got[e.stream_id] = dict(e.headers)[b":status"].decode()
            elif isinstance(e, h2.events.StreamReset):
                got.setdefault(e.stream_id, f"reset:{int(e.error_code)}")
            elif isinstance(e, h2.events.DataReceived):
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
    s.sendall(c.data_to_send())
if not printed:
    report()
report()
"""


def _h2_burst(
    node_host: Host, port: int, path: str, first: float, cancel: float = 0.0
) -> subprocess.Popen[str]:
    command = node_host.command(
        sys.executable, "-c", H2_CLIENT, str(port), str(STREAMS), "slow.shop", path,
        str(first), str(cancel),
    )  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def _read(burst: subprocess.Popen[str]) -> dict[str, int]:
    assert burst.stdout is not None
    line = burst.stdout.readline()
    assert line, "the HTTP/2 client printed nothing"
    counts: dict[str, int] = json.loads(line)
    return counts


def test_a_workload_over_its_in_flight_cap_is_refused_and_another_is_served(
    tmp_path: Path,
) -> None:
    require_namespaces()
    with Network(3) as net:
        cp_host, node_host, server_host = net.hosts
        cp = start_control_plane(cp_host, tmp_path)
        cp.cli("apply", "-f", "-", stdin=SERVICE, check=True)
        server = run_sidecar(
            cp, server_host, tmp_path, "slow-1", Ports(4143, 4140, 4191),
            app=[sys.executable, "-c", SLOW_APP, "8081"], service_account="slow",
            labels={"app": "slow"}, port="http=8080:8081",
        )  # fmt: skip
        node = start_host_proxy(
            cp, node_host, tmp_path, "node-1", ("shop", "client"),
            extra=("--max-in-flight-per-workload", str(CAP)),
        )  # fmt: skip
        noisy = run_hosted(node, tmp_path, "noisy", Ports(4153, 4150, 4192), app=sleeper(),
                           service_account="client", labels={"app": "noisy"})  # fmt: skip
        quiet = run_hosted(node, tmp_path, "quiet", Ports(4163, 4160, 4193), app=sleeper(),
                           service_account="client", labels={"app": "quiet"})  # fmt: skip
        started = [server, noisy, quiet]
        bursts: list[subprocess.Popen[str]] = []
        try:
            for w in started:
                wait_until(w.ready, f"{w.name} never became ready", timeout=90, log=w.log)

            def call(w: HostWorkload, port: int, *urls: str) -> list[str]:
                r = w.curl(
                    "-Z", "--parallel-max", "50", "-x", f"http://127.0.0.1:{port}",
                    *(a for url in urls for a in ("-o", "/dev/null", "-w", "%{http_code}\\n", url)),
                )  # fmt: skip
                return sorted(r.stdout.split())

            def fairness() -> dict[str, int]:
                config = noisy.curl("http://127.0.0.1:4192/config").stdout
                result: dict[str, int] = json.loads(config)["fairness"]
                return result

            for w, port in ((noisy, 4150), (quiet, 4160)):
                wait_until(lambda w=w, port=port: call(w, port, "http://slow.shop/") == ["200"],
                           f"{w.name} never got through to slow.shop", log=w.log)  # fmt: skip

            # 60 streams at once on one connection: CAP are taken, the rest refused.
            burst = _h2_burst(node_host, 4150, f"/?hold={HOLD}", first=3.0)
            bursts.append(burst)
            assert _read(burst) == {"reset:7": STREAMS - CAP}  # REFUSED_STREAM
            now = fairness()
            assert (now["maxInFlight"], now["inFlight"]) == (CAP, CAP)
            assert now["refused"] == STREAMS - CAP
            # HTTP/1.1 counts against the same cap: refused with a 503 that says why.
            r = noisy.curl("-i", "-x", "http://127.0.0.1:4150", "http://slow.shop/")
            assert r.stdout.startswith("HTTP/1.1 503"), r.stdout
            assert "requests in flight" in r.stdout
            assert "workload shop/noisy" in r.stdout
            # The quiet workload has a cap of its own: ten requests at once, all served.
            assert call(quiet, 4160, *["http://slow.shop/?hold=1"] * 10) == ["200"] * 10
            # The noisy workload's held streams are answered, and give their places back.
            assert _read(burst) == {"200": CAP, "reset:7": STREAMS - CAP}
            wait_until(lambda: fairness()["inFlight"] == 0, "places were not given back")
            assert call(noisy, 4150, "http://slow.shop/") == ["200"]

            # Streams the client cancels give their places back too.
            burst = _h2_burst(node_host, 4150, "/?hold=20", first=2.0, cancel=2.5)
            bursts.append(burst)
            assert _read(burst) == {"reset:7": STREAMS - CAP}
            assert _read(burst) == {"cancelled": CAP, "reset:7": STREAMS - CAP}
            wait_until(lambda: fairness()["inFlight"] == 0, "cancelled streams kept places")
            assert call(noisy, 4150, *["http://slow.shop/"] * CAP) == ["200"] * CAP
            assert "requests in flight, its cap on this proxy" in node.log.read_text()
        finally:
            for b in bursts:
                b.kill()
                b.communicate()
            for w in started:
                w.stop()
            stop(node.proc)
