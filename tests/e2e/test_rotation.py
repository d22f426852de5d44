"""CA rotation under load: real control plane, `gossamer run` proxies, a counting client."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    echo_app,
    free_port,
    run_workload,
    sleeper,
    stop_all,
)

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
"""


@dataclass
class Load:
    """Requests through the client proxy, one after another, counted by outcome.

    Every fifth request uses a new connection to the proxy, the rest keep one alive.
    """

    outbound: str
    outcomes: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    max_seconds: float = 240.0

    def run(self) -> None:
        host, port = self.outbound.rsplit(":", 1)
        conn: http.client.HTTPConnection | None = None
        deadline = time.monotonic() + self.max_seconds
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            n += 1
            if conn is None or n % 5 == 0:
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                conn.request("GET", f"http://echo.shop/load/{n}")
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and b"echo-1" in body
                why = f"{resp.status} {resp.getheader('gossamer-error')}"
                self.outcomes["ok" if ok else why] += 1
            except (OSError, http.client.HTTPException) as err:
                self.outcomes[f"error {type(err).__name__}: {err}"] += 1
                conn.close()
                conn = None
            time.sleep(0.01)
        if conn is not None:
            conn.close()


@pytest.fixture
def loaded(control_plane: ControlPlaneProcess, tmp_path: Path) -> Iterator[dict[str, Workload]]:
    control_plane.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    started: dict[str, Workload] = {}
    try:
        started["echo"] = run_workload(
            control_plane, tmp_path, "echo-1", service_account="echo", labels={"app": "echo"},
            app=echo_app("echo-1", port := free_port()), port=f"http=8080:{port}",
        )  # fmt: skip
        started["client"] = run_workload(
            control_plane, tmp_path, "client", service_account="client", labels={},
            app=sleeper(),
        )  # fmt: skip
        for w in started.values():
            w.wait_ready()
        deadline = time.monotonic() + 30
        while (outcome := get_once(started["client"].outbound)) != "ok":
            assert time.monotonic() < deadline, f"echo never answered: {outcome}"
            time.sleep(0.2)
        yield started
    finally:
        stop_all(started.values())


def get_once(outbound: str) -> str:
    host, port = outbound.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "http://echo.shop/probe")
        resp = conn.getresponse()
        resp.read()
        return "ok" if resp.status == 200 else str(resp.status)
    except OSError as err:
        return f"error {err}"
    finally:
        conn.close()


def handshake(inbound: str, state: Path, bundle: Path) -> subprocess.CompletedProcess[str]:
    """openssl as a mesh client, presenting the certificate in ``state``."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", inbound, "-cert", str(state / "cert.pem"),
         "-key", str(state / "key.pem"), "-CAfile", str(bundle),
         "-servername", "p8080.echo-1.shop.gossamer", "-alpn", "gossamer/h1", "-ign_eof"],
        input="GET / HTTP/1.1\r\nHost: echo.shop\r\nConnection: close\r\n\r\n",
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_root_and_intermediate_rotations_under_load_fail_no_request(
    loaded: dict[str, Workload], control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    client, echo = loaded["client"], loaded["echo"]
    before = json.loads(control_plane.cli("ca", "status", "-o", "json", check=True).stdout)
    # Keep the client's pre-rotation certificate, to show the old root is gone at the end.
    old = tmp_path / "old-client"
    old.mkdir()
    for name in ("cert.pem", "key.pem", "bundle.pem"):
        (old / name).write_bytes((client.state_dir / name).read_bytes())

    load = Load(client.outbound)
    thread = threading.Thread(target=load.run, name="load")
    thread.start()
    try:
        time.sleep(1.0)
        root = control_plane.cli("ca", "rotate", "root", "--overlap", "2s", "--wait",
                                 "--timeout", "90")  # fmt: skip
        assert root.returncode == 0, root.stdout + root.stderr
        for phase in ("distributing", "renewing", "overlap", "done"):
            assert f"root rotation: {phase}" in root.stdout, root.stdout
        inter = control_plane.cli("ca", "rotate", "intermediate", "--timeout", "90")
        assert inter.returncode == 0, inter.stdout + inter.stderr
        assert "intermediate rotation: done" in inter.stdout, inter.stdout
        time.sleep(1.0)
    finally:
        load.stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert set(load.outcomes) == {"ok"}, load.outcomes
    assert load.outcomes["ok"] >= 50, load.outcomes

    after = json.loads(control_plane.cli("ca", "status", "-o", "json", check=True).stdout)
    assert [r["fingerprint"] for r in after["roots"]] == [after["rootFingerprint"]]
    assert after["rootFingerprint"] != before["rootFingerprint"]
    assert after["rotation"]["phase"] == "done"
    report = json.loads(control_plane.cli("check", "-o", "json").stdout)
    assert report["ok"], report
    assert not [w for w in report["warnings"] if "rotation" in w or "roots" in w], report
    # Both proxies now serve certificates from the newest intermediate.
    for w in (client, echo):
        chain = (w.state_dir / "cert.pem").read_text()
        bundle = (w.state_dir / "bundle.pem").read_text()
        assert chain.count("BEGIN CERTIFICATE") == 2
        assert bundle.count("BEGIN CERTIFICATE") == 1, w.name
    # A fresh mesh connection with the new certificates works; one with the client's
    # certificate from before the rotation is refused at the handshake, and echo's
    # proxy says why.
    ok = handshake(echo.inbound, client.state_dir, client.state_dir / "bundle.pem")
    assert '"servedBy":"echo-1"' in ok.stdout.replace(" ", ""), ok.stdout[-2000:]
    refused = handshake(echo.inbound, old, client.state_dir / "bundle.pem")
    assert "servedBy" not in refused.stdout
    deadline = time.monotonic() + 10
    while "refused the TLS handshake" not in echo.log.read_text():
        assert time.monotonic() < deadline, echo.log.read_text()[-3000:]
        time.sleep(0.2)
