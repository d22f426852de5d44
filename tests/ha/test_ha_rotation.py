"""CA rotation with two control-plane replicas on a 3-member etcd cluster (decision
0054): the rotation is started through the CLI on one replica, the leader is killed
with SIGKILL in the middle of it, and the other replica finishes it from the stored
progress, with steady traffic through the mesh and no failed request. Afterwards a
workload joins and a certificate renews under the new CA with the old leader still
down, and the restarted replica adopts the CA the store holds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import pytest
from cryptography import x509

from gossamer.identity.bundle import certificate_fingerprint
from tests.e2e.conftest import GOSSAMER, ControlPlaneProcess, echo_app, free_port
from tests.e2e.test_mesh import SERVICE, served_by
from tests.ha.test_ha_e2e import Ha, Load, _get, _proxies, _renew, _until, ha

__all__ = ["ha"]  # the fixture, shared with the HA end-to-end test

pytestmark = pytest.mark.e2e


def _ca(cp: ControlPlaneProcess) -> dict[str, Any]:
    return dict(_get(cp, "/v1/ca"))


def _leader(ha: Ha) -> tuple[ControlPlaneProcess, ControlPlaneProcess]:
    """(leader, the other one), by what the replicas say of themselves."""
    a, b = ha.replicas["a"], ha.replicas["b"]
    rows = _get(a, "/v1/replicas")["replicas"]
    leader = next(r["name"] for r in rows if r["leader"])
    return (a, b) if _get(a, "/v1/replicas")["replica"] == leader else (b, a)


def test_a_rotation_survives_its_leader_killed_and_every_replica_serves_its_result(
    ha: Ha,
) -> None:
    a, b = ha.replicas["a"], ha.replicas["b"]
    b.cli("apply", "-f", "-", stdin=SERVICE, check=True)
    for name in ("echo-1", "echo-2"):
        port = free_port()
        ha.run(
            name, b, service_account="echo", labels={"app": "echo"},
            app=echo_app(name, port), port=f"http=8080:{port}",
        )  # fmt: skip
    client = ha.run(
        "client", a, service_account="client", labels={"app": "client"},
        app=[sys.executable, "-c", "import time; time.sleep(600)"],
    )  # fmt: skip
    for w in ha.workloads.values():
        w.wait_ready(timeout=60)
    _until("a leader", lambda: any(r["leader"] for r in _get(a, "/v1/replicas")["replicas"]))
    leader, survivor = _leader(ha)
    before = _ca(survivor)
    assert _ca(leader)["rootFingerprint"] == before["rootFingerprint"]
    _until(
        "the client reaches echo",
        lambda: set(served_by(client.outbound, 4)) <= {"echo-1", "echo-2"},
    )

    with Load(client.outbound) as load:
        _until("traffic flows", lambda: load.ok >= 20)
        # Started through the CLI on the replica that does not lead, which follows it
        # to the end while the leader is killed.
        cli = subprocess.Popen(
            [*GOSSAMER, "ca", "rotate", "root", "--overlap", "3s", "--wait", "--timeout", "240"],
            env=survivor.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            rotating = _until(
                "the rotation under way on both replicas",
                lambda: all((_ca(cp)["rotation"] or {}).get("active") for cp in (leader, survivor)),
            )
            assert rotating
            # Mid-rotation, both replicas serve the same trust bundle (old and new root).
            _until(
                "both replicas trust the new root",
                lambda: (
                    [r["fingerprint"] for r in _ca(leader)["roots"]]
                    == [r["fingerprint"] for r in _ca(survivor)["roots"]]
                    and len(_ca(survivor)["roots"]) == 2
                ),
            )
            phase_at_kill = _ca(survivor)["rotation"]["phase"]
            assert phase_at_kill in ("distributing", "renewing", "overlap"), phase_at_kill
            leader.proc.send_signal(signal.SIGKILL)
            leader.proc.wait()
            out, _ = cli.communicate(timeout=300)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        assert cli.returncode == 0, out
        assert "root rotation: done" in out, out
        print(f"leader killed in phase {phase_at_kill}; the CLI saw:\n{out}")

        after = _ca(survivor)
        assert after["rotation"]["phase"] == "done"
        assert after["rootFingerprint"] != before["rootFingerprint"]
        assert [r["fingerprint"] for r in after["roots"]] == [after["rootFingerprint"]]
        history = [h["phase"] for h in after["rotation"]["history"]]
        assert history == ["distributing", "renewing", "overlap", "done"], history
        _until(
            "every proxy streams from the survivor",
            lambda: set(_proxies(survivor)) == set(ha.workloads),
        )
        _until(
            "every proxy on the new intermediate",
            lambda: all(
                row["issuerFingerprint"] == after["issuerFingerprint"]
                for row in _proxies(survivor).values()
            ),
        )

        # With the old leader still down: a workload joins, a certificate renews, both
        # under the new CA.
        port = free_port()
        joined = ha.run(
            "echo-3", survivor, service_account="echo", labels={"app": "echo"},
            app=echo_app("echo-3", port), port=f"http=8080:{port}",
        )  # fmt: skip
        joined.wait_ready(timeout=60)
        chain = x509.load_pem_x509_certificates((joined.state_dir / "cert.pem").read_bytes())
        assert certificate_fingerprint(chain[1]) == after["issuerFingerprint"]
        renewed = _renew(survivor, client)
        issued = x509.load_pem_x509_certificates(renewed["certificateChain"].encode())
        assert certificate_fingerprint(issued[1]) == after["issuerFingerprint"]

        # The killed replica comes back and adopts the CA the store holds.
        back = ha.start_replica("a" if leader is a else "b")
        adopted = _ca(back)
        assert adopted["rootFingerprint"] == after["rootFingerprint"]
        assert adopted["issuerFingerprint"] == after["issuerFingerprint"]
        assert adopted["rotation"]["phase"] == "done"
        ok_before_end = load.ok
        _until("traffic still flows", lambda: load.ok >= ok_before_end + 20)

    assert load.failures == [], f"{len(load.failures)} failed of {load.ok}: {load.failures[:5]}"
    print(f"{load.ok} requests through the rotation and the failover, none failed")
    report = json.loads(survivor.cli("check", "-o", "json").stdout)
    assert not [w for w in report["warnings"] if "rotation" in w], report
