"""Protocol detection across real processes: what a TCP upstream's listener and a
PERMISSIVE inbound listener carry, told by appProtocol or by the first bytes."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_all,
    stop_process,
)

pytestmark = pytest.mark.e2e

GREETING = b"220 mail.shop ready\r\n"

# One app, four servers: HTTP/1.1, h2c, a server that speaks first, and a byte echo.
APP = r"""
import asyncio
import sys

import h2.config
import h2.connection
import h2.events


async def http1(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            body = b"http1 " + head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


class H2(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data):
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                body = b"h2 " + dict(event.headers)[b":path"]
                self.conn.send_headers(
                    event.stream_id, [(":status", "200"), ("content-length", str(len(body)))]
                )
                self.conn.send_data(event.stream_id, body, end_stream=True)
        self.transport.write(self.conn.data_to_send())


async def greeter(reader, writer):
    writer.write(b"220 mail.shop ready\r\n")  # the server talks first, as SMTP does
    while line := await reader.readline():
        writer.write(b"250 " + line)
    writer.close()


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def main(ports):
    loop = asyncio.get_running_loop()
    servers = []
    for kind, port in zip(sys.argv[1::2], ports):
        if kind == "h2":
            servers.append(await loop.create_server(H2, "127.0.0.1", port))
        else:
            handler = {"http1": http1, "greeter": greeter, "echo": echo}[kind]
            servers.append(await asyncio.start_server(handler, "127.0.0.1", port))
    await asyncio.Event().wait()


asyncio.run(main([int(p) for p in sys.argv[2::2]]))
"""

RESOURCES = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: h2, namespace: shop}
spec:
  selector: {app: backend}
  ports: [{name: h2, port: 80, targetPort: h2}]
---
apiVersion: v1
kind: Service
metadata: {name: mail, namespace: shop}
spec:
  selector: {app: backend}
  ports: [{name: smtp, port: 25, targetPort: smtp, appProtocol: tcp}]
---
apiVersion: v1
kind: Service
metadata: {name: mail-undeclared, namespace: shop}
spec:
  selector: {app: backend}
  ports: [{name: smtp, port: 25, targetPort: smtp}]
---
apiVersion: v1
kind: Service
metadata: {name: bytes, namespace: shop}
spec:
  selector: {app: bytes}
  ports: [{name: echo, port: 7, targetPort: echo}]
---
apiVersion: gossamer.dev/v1alpha1
kind: MeshPolicy
metadata: {name: migrating, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
"""

# The patient client's proxy waits this long to detect; the hasty one's, HASTY.
PATIENT, HASTY = 30.0, 0.5


@dataclass
class Detection:
    cp: ControlPlaneProcess
    backend: Workload  # HTTP/1.1 on 8080, h2c on 8081 (declared), a greeter on 2525
    bytes_echo: Workload  # one port: a byte echo
    patient: Workload
    hasty: Workload
    listeners: dict[str, tuple[str, int]]  # upstream listeners by service name


@pytest.fixture(scope="module")
def detection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detection]:
    tmp = tmp_path_factory.mktemp("detection")
    cp = start_control_plane(tmp / "cp")
    workloads: list[Workload] = []
    try:
        cp.cli("apply", "-f", "-", stdin=RESOURCES, check=True)
        http1, h2, smtp, echo = (free_port() for _ in range(4))
        app = [sys.executable, "-c", APP]
        workloads.append(
            run_workload(
                cp, tmp, "backend-1", service_account="backend", labels={"app": "backend"},
                app=[*app, "http1", str(http1), "h2", str(h2), "greeter", str(smtp)],
                port=f"http=8080:{http1}",
                extra=("--port", f"h2=8081:{h2}/http2", "--port", f"smtp=2525:{smtp}"),
            )
        )  # fmt: skip
        workloads.append(
            run_workload(
                cp, tmp, "bytes-1", service_account="bytes", labels={"app": "bytes"},
                app=[*app, "echo", str(echo)], port=f"echo=7007:{echo}",
            )
        )  # fmt: skip
        listeners = {name: ("127.0.0.1", free_port()) for name in
                     ("echo", "h2", "bytes", "mail", "mail-undeclared")}  # fmt: skip

        def upstream(service: str, port: int) -> tuple[str, str]:
            host, local = listeners[service]
            return "--upstream", f"{service}.shop:{port}={host}:{local}"

        workloads.append(
            run_workload(
                cp, tmp, "patient", service_account="patient", labels={}, app=sleeper(),
                extra=(*upstream("echo", 80), *upstream("h2", 80), *upstream("bytes", 7),
                       *upstream("mail", 25), "--detect-timeout", str(PATIENT)),
            )
        )  # fmt: skip
        workloads.append(
            run_workload(
                cp, tmp, "hasty", service_account="hasty", labels={}, app=sleeper(),
                extra=(*upstream("mail-undeclared", 25), "--detect-timeout", str(HASTY)),
            )
        )  # fmt: skip
        for w in workloads:
            w.wait_ready()
        backend, bytes_echo, patient, hasty = workloads
        yield Detection(cp, backend, bytes_echo, patient, hasty, listeners)
    finally:
        stop_all(workloads)
        stop_process(cp.proc)


T = TypeVar("T")


def eventually(attempt: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Until the mesh has the endpoint (a workload is in it once its app listens)."""
    deadline = time.monotonic() + timeout
    while True:
        got = attempt()
        if got is not None:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-s", "--max-time", "10", "-w", "\n%{http_code} %{http_version}", *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def served(*args: str) -> str | None:
    """The body and `CODE VERSION` of a 200 answer, or None (not there yet)."""
    r = curl(*args)
    return r.stdout if r.stdout.endswith((" 1.1", " 2")) and "\n200 " in r.stdout else None


def metric(w: Workload, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{w.admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}") + 1]))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def greeting(address: tuple[str, int], read_timeout: float, send: bytes = b"") -> bytes | None:
    """The first line the server says; None when the connection closed first (no
    endpoint yet). A read that times out fails the test."""
    with socket.create_connection(address, timeout=5) as sock:
        if send:
            sock.sendall(send)
        sock.settimeout(read_timeout)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1024)
            if not chunk:
                return None
            data += chunk
        return data


def test_http1_on_an_upstream_listener_is_routed_to_its_service_and_counted(
    detection: Detection,
) -> None:
    host, port = detection.listeners["echo"]
    # Host names the listener, not the service: the listener says where it goes.
    out = eventually(lambda: served(f"http://{host}:{port}/hello"), "echo never answered")
    assert out == "http1 /hello\n200 1.1"
    assert (
        metric(detection.patient, "gossamer_requests_total",
               direction="outbound", dst_service="echo", code="200", tls="true") >= 1
    )  # fmt: skip
    assert metric(detection.patient, "gossamer_tcp_bytes_total", peer_service="echo") == 0


def test_h2c_on_an_upstream_listener_is_routed_to_its_service_and_counted(
    detection: Detection,
) -> None:
    host, port = detection.listeners["h2"]
    out = eventually(
        lambda: served("--http2-prior-knowledge", f"http://{host}:{port}/hi"), "h2 never answered"
    )
    assert out == "h2 /hi\n200 2"
    assert (
        metric(detection.patient, "gossamer_requests_total",
               direction="outbound", dst_service="h2", code="200") >= 1
    )  # fmt: skip


def test_opaque_bytes_on_an_upstream_listener_are_carried(detection: Detection) -> None:
    line = b"\x00\x01 not http\n"
    echoed = eventually(lambda: greeting(detection.listeners["bytes"], 5.0, send=line), "no echo")
    assert echoed == line
    assert (
        metric(detection.patient, "gossamer_tcp_bytes_total",
               direction="outbound", peer_service="bytes", flow="sent") >= len(line)
    )  # fmt: skip


def test_a_server_speaking_first_on_a_port_declared_tcp_is_never_stalled(
    detection: Detection,
) -> None:
    # The client sends nothing. Detection would wait PATIENT (30 s) for its bytes; the
    # greeting must come well before that: declared tcp, nothing is read first.
    banner = eventually(lambda: greeting(detection.listeners["mail"], 5.0), "no greeting")
    assert banner == GREETING


def test_a_server_speaking_first_undeclared_answers_after_the_detection_timeout(
    detection: Detection,
) -> None:
    banner = eventually(
        lambda: greeting(detection.listeners["mail-undeclared"], HASTY + 5.0), "no greeting"
    )
    assert banner == GREETING


def test_permissive_plaintext_h2c_reaches_the_workload(detection: Detection) -> None:
    inbound = detection.backend.inbound
    # The port in :authority picks the workload's port, as Host does for HTTP/1.1.
    out = eventually(
        lambda: served("--http2-prior-knowledge", "-H", "Host: backend:8081",
                       f"http://{inbound}/outside"),
        "plaintext h2c never served",
    )  # fmt: skip
    assert out == "h2 /outside\n200 2"
    assert (
        metric(detection.backend, "gossamer_requests_total",
               direction="inbound", tls="false", code="200") >= 1
    )  # fmt: skip


def test_permissive_plaintext_opaque_bytes_reach_a_one_port_workload(
    detection: Detection,
) -> None:
    host, port = detection.bytes_echo.inbound.rsplit(":", 1)
    line = b"\x00plaintext bytes\n"
    echoed = eventually(lambda: greeting((host, int(port)), 5.0, send=line), "no echo")
    assert echoed == line
    assert (
        metric(detection.bytes_echo, "gossamer_tcp_bytes_total",
               direction="inbound", tls="false", flow="sent") >= len(line)
    )  # fmt: skip


def test_the_port_flag_declares_an_app_protocol(detection: Detection) -> None:
    r = detection.cp.cli("get", "workload", "backend-1", "-n", "shop", "-o", "json", check=True)
    ports = {p["name"]: p.get("appProtocol") for p in json.loads(r.stdout)["spec"]["ports"]}
    assert ports == {"http": None, "h2": "http2", "smtp": None}
