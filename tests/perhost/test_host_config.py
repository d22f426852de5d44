"""The host config file (`gossamer host --config`), against real processes: the workloads
it lists are served at start, a change is applied as a difference, a bad file is
rejected whole while the workloads already served go on, and node authorization still
decides each identity (a forbidden one is refused, the others served)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import GOSSAMER, ControlPlaneProcess, free_port, stop_process
from tests.perhost.hosts import host_object

pytestmark = pytest.mark.e2e


def workload(name: str, service_account: str, admin: int) -> dict[str, object]:
    return {
        "name": name,
        "namespace": "shop",
        "serviceAccount": service_account,
        "labels": {"app": service_account},
        "inbound": f"127.0.0.1:{free_port()}",
        "outbound": f"127.0.0.1:{free_port()}",
        "admin": f"127.0.0.1:{admin}",
    }


def write(path: Path, *workloads: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"kind": "HostConfiguration", "workloads": list(workloads)}))
    tmp.replace(path)  # as an editor or a config manager does: never half a file


def ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait(check: object, what: str, log: Path, timeout: float = 60.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}\n{log.read_text()}")
        time.sleep(0.2)


def registered(cp: ControlPlaneProcess) -> set[str]:
    items = cp.cli("get", "workloads", "-n", "shop", "-o", "json", check=True).stdout
    return {i["metadata"]["name"] for i in json.loads(items)["items"]}


def test_the_host_config_file_registers_reloads_and_keeps_node_authorization(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    cp.cli("apply", "-f", "-", stdin=host_object("node-1", ("shop", "web"), ("shop", "cart")),
           check=True)  # fmt: skip
    admins = {n: free_port() for n in ("web-1", "cart-1", "pay-1", "web-2")}
    web1 = workload("web-1", "web", admins["web-1"])
    cart1 = workload("cart-1", "cart", admins["cart-1"])
    pay1 = workload("pay-1", "payments", admins["pay-1"])  # the Host does not list it
    web2 = workload("web-2", "web", admins["web-2"])
    config, log = tmp_path / "host.yaml", tmp_path / "host.log"
    write(config, web1, cart1, pay1)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*GOSSAMER, "host", "--name", "node-1", "--discovery", cp.discovery,
             "--server", cp.api, "--token-file", str(cp.token_file),
             "--socket", str(tmp_path / "host.sock"), "--state-dir", str(tmp_path / "state"),
             "--config", str(config), "--config-poll-seconds", "0.3",
             "--ready-file", str(tmp_path / "ready"), "--log-level", "debug"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # At start: the two identities the Host lists are served, the third is refused
        # with the reason, and the host proxy runs on.
        wait(lambda: (tmp_path / "ready").exists(), "gossamer host never became ready", log)
        assert ready(admins["web-1"]) and ready(admins["cart-1"])
        assert not ready(admins["pay-1"])
        text = log.read_text()
        assert f"host config {config}: workload shop/pay-1 refused:" in text, text
        assert "not registered on host 'node-1'" in text
        assert registered(cp) == {"web-1", "cart-1"}

        # The file changes: cart-1 leaves, web-2 comes; web-1 is left alone.
        web1_uid = _uid(cp, "web-1")
        write(config, web1, web2)
        wait(lambda: ready(admins["web-2"]) and not ready(admins["cart-1"]),
             "the change was not applied", log)  # fmt: skip
        wait(lambda: registered(cp) == {"web-1", "web-2"}, "cart-1 never left the mesh", log)
        assert _uid(cp, "web-1") == web1_uid  # not registered again
        assert "(1 stopped, 1 started), 0 refused" in log.read_text()

        # A bad file is rejected whole, with the path and the field; nothing changes.
        broken = {**web2, "uid": 0}
        config.write_text(json.dumps({"kind": "HostConfiguration", "workloads": [web1, broken]}))
        wait(lambda: "rejected whole" in log.read_text(), "the bad file was not rejected", log)
        text = log.read_text()
        assert (
            f"host config {config}: workloads[1].uid: must be 1-4294967294; rejected whole, "
            "the workloads already served keep serving"
        ) in text, text
        config.write_text("workloads: [unclosed")
        wait(lambda: "invalid YAML at line 1" in log.read_text(), "bad YAML not rejected", log)
        assert ready(admins["web-1"]) and ready(admins["web-2"])
        assert registered(cp) == {"web-1", "web-2"}

        # The operator allows payments on node-1; SIGHUP applies the file again, with
        # the workload refused before (the file itself unchanged since).
        write(config, web1, web2, pay1)
        wait(lambda: "workload shop/pay-1 refused" in log.read_text().split("rejected whole")[-1],
             "pay-1 was not tried", log)  # fmt: skip
        cp.cli("apply", "-f", "-", check=True, stdin=host_object(
            "node-1", ("shop", "web"), ("shop", "cart"), ("shop", "payments")))  # fmt: skip
        proc.send_signal(signal.SIGHUP)
        wait(lambda: ready(admins["pay-1"]), "SIGHUP did not serve pay-1", log)
        assert registered(cp) == {"web-1", "web-2", "pay-1"}
        assert proc.poll() is None
    finally:
        stop_process(proc)
    assert proc.returncode == 0, log.read_text()
    assert not any(ready(a) for a in admins.values())


def _uid(cp: ControlPlaneProcess, name: str) -> str:
    out = cp.cli("get", "workload", name, "-n", "shop", "-o", "json", check=True).stdout
    return str(json.loads(out)["metadata"]["uid"])


def test_a_malformed_host_config_file_stops_the_start_naming_the_field(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    config = tmp_path / "host.yaml"
    config.write_text("workloads:\n- {name: web-1, inbound: nowhere}\n")
    result = subprocess.run(
        [*GOSSAMER, "host", "--name", "node-1", "--discovery", cp.discovery,
         "--server", cp.api, "--token-file", str(cp.token_file),
         "--socket", str(tmp_path / "host.sock"), "--state-dir", str(tmp_path / "state"),
         "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"host config {config}: workloads[0].inbound: must be HOST:PORT" in (result.stderr), (
        result.stderr
    )
    assert "workloads[0].outbound: required" in result.stderr


def start_host(
    cp: ControlPlaneProcess, tmp: Path, config: Path, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    ready = log.with_suffix(".ready")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*GOSSAMER, "host", "--name", "node-1", "--discovery", cp.discovery,
             "--server", cp.api, "--token-file", str(cp.token_file),
             "--socket", str(tmp / "host.sock"), "--state-dir", str(tmp / "state"),
             "--config", str(config), "--ready-file", str(ready), "--log-level", "debug",
             "--handover-drain-seconds", "2", *extra],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait(lambda: ready.exists() or proc.poll() is not None, "gossamer host never ready", log)
    assert proc.poll() is None, log.read_text()
    return proc


def test_a_host_proxy_taking_over_keeps_the_config_file_s_workloads(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    cp.cli("apply", "-f", "-", stdin=host_object("node-1", ("shop", "web")), check=True)
    admin = free_port()
    config = tmp_path / "host.yaml"
    write(config, workload("web-1", "web", admin))
    old_log, new_log = tmp_path / "old.log", tmp_path / "new.log"
    old = start_host(cp, tmp_path, config, old_log)
    new: subprocess.Popen[bytes] | None = None
    try:
        wait(lambda: ready(admin), "web-1 never became ready", old_log)
        before = _uid(cp, "web-1")
        new = start_host(cp, tmp_path, config, new_log, "--take-over")
        # The old process hands web-1 (its listeners, no lease) over, drains and exits;
        # the new one serves it from the same file, unchanged: nothing stops or starts.
        assert old.wait(timeout=60) == 0, old_log.read_text()
        assert ready(admin)
        text = new_log.read_text()
        assert "took over 1 workload(s)" in text, text
        assert "1 workload(s) from it served (0 stopped, 0 started), 0 refused" in text, text
        assert _uid(cp, "web-1") == before
        assert registered(cp) == {"web-1"}
    finally:
        stop_process(old)
        if new is not None:
            stop_process(new)
