"""The real control plane process, driven by the real CLI, curl and openssl."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import GOSSAMER, ControlPlaneProcess, start_control_plane, stop_process

pytestmark = pytest.mark.e2e

APP = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop, labels: {app: echo}}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: gossamer.dev/v1alpha1
kind: Workload
metadata: {name: echo-1, namespace: shop, labels: {app: echo}}
spec:
  address: 127.0.0.1
  inboundPort: 4143
  serviceAccount: echo
  ports: [{name: http, port: 8080, appPort: 18080}]
"""

BAD_PORT = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 70000}]
"""


def test_applied_objects_are_listed_by_get(control_plane: ControlPlaneProcess) -> None:
    applied = control_plane.cli("apply", "-f", "-", stdin=APP, check=True)
    assert "service/echo (shop) created" in applied.stdout
    assert "workload/echo-1 (shop) created" in applied.stdout

    listed = control_plane.cli("get", "services", "-n", "shop", "-o", "json", check=True)
    doc = json.loads(listed.stdout)
    assert doc["kind"] == "List"
    assert [i["metadata"]["name"] for i in doc["items"]] == ["echo"]
    assert doc["items"][0]["spec"]["ports"][0]["targetPort"] == 8080

    table = control_plane.cli("get", "wl", "-n", "shop", check=True).stdout.splitlines()
    assert table[0].split() == ["NAME", "ADDRESS", "INBOUND", "SERVICE-ACCOUNT", "PORTS", "AGE"]
    assert table[1].split()[:5] == ["echo-1", "127.0.0.1", "4143", "echo", "http:8080→18080"]


def test_reapplying_the_same_objects_reports_unchanged(control_plane: ControlPlaneProcess) -> None:
    control_plane.cli("apply", "-f", "-", stdin=APP, check=True)
    again = control_plane.cli("apply", "-f", "-", stdin=APP, check=True)
    assert again.stdout.count("unchanged") == 2


def test_invalid_object_is_rejected_with_its_field_path(control_plane: ControlPlaneProcess) -> None:
    result = control_plane.cli("apply", "-f", "-", stdin=BAD_PORT)
    assert result.returncode != 0
    assert "spec.ports[0].port: must be 1-65535" in result.stderr
    listed = control_plane.cli("get", "services", "-n", "shop", "-o", "json", check=True)
    assert json.loads(listed.stdout)["items"] == []


def test_apply_of_several_documents_is_all_or_nothing(control_plane: ControlPlaneProcess) -> None:
    result = control_plane.cli("apply", "-f", "-", stdin=APP + "---" + BAD_PORT)
    assert result.returncode != 0
    assert "nothing was applied" in result.stderr
    for kind in ("services", "workloads"):
        listed = control_plane.cli("get", kind, "-A", "-o", "json", check=True)
        assert json.loads(listed.stdout)["items"] == [], kind


def test_a_stale_resource_version_is_a_conflict(control_plane: ControlPlaneProcess) -> None:
    control_plane.cli("apply", "-f", "-", stdin=APP, check=True)
    current = json.loads(
        control_plane.cli("get", "svc", "echo", "-n", "shop", "-o", "json", check=True).stdout
    )
    newer = {**current, "spec": {**current["spec"], "selector": {"app": "newer"}}}
    control_plane.cli("apply", "-f", "-", stdin=json.dumps(newer), check=True)
    # A write based on the version read before that change is stale.
    stale = {**current, "spec": {**current["spec"], "selector": {"app": "stale"}}}
    result = control_plane.cli("apply", "-f", "-", stdin=json.dumps(stale))
    assert result.returncode != 0
    assert current["metadata"]["resourceVersion"] in result.stderr
    after = json.loads(
        control_plane.cli("get", "svc", "echo", "-n", "shop", "-o", "json", check=True).stdout
    )
    assert after["spec"]["selector"] == {"app": "newer"}


def test_mutations_need_the_admin_token(control_plane: ControlPlaneProcess) -> None:
    result = control_plane.cli("apply", "-f", "-", stdin=APP, token=False)
    assert result.returncode != 0
    assert "admin token" in result.stderr
    curl = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            f"{control_plane.api}/v1/resources/services/shop/echo",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert curl.stdout == "401"
    # Reads stay open: the dashboard and `get` need no token.
    assert control_plane.cli("get", "svc", "-A", token=False).returncode == 0


def test_secrets_on_disk_are_private(control_plane: ControlPlaneProcess) -> None:
    for path in [control_plane.token_file, *control_plane.data_dir.glob("ca/*.key")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert len(list(control_plane.data_dir.glob("ca/*.key"))) >= 2


def test_openapi_description_lists_the_api(control_plane: ControlPlaneProcess) -> None:
    out = subprocess.run(
        ["curl", "-sf", f"{control_plane.api}/openapi.json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    doc = json.loads(out)
    assert doc["openapi"].startswith("3.")
    assert {"/v1/apply", "/v1/resources/{kind}", "/v1/watch", "/readyz"} <= set(doc["paths"])


def _openssl_csr(tmp: Path, uri: str) -> Path:
    key, csr = tmp / "w.key", tmp / "w.csr"
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-key",
            str(key),
            "-subj",
            "/O=test",
            "-addext",
            f"subjectAltName=URI:{uri}",
            "-out",
            str(csr),
        ],
        check=True,
        capture_output=True,
    )
    return csr


def _request_certificate(cp: ControlPlaneProcess, tmp: Path, token: str, csr: Path) -> dict:
    bundle = tmp / "bundle.pem"
    # Trust comes from the CA's bundle on disk; curl checks the server name (127.0.0.1).
    bundle.write_text((cp.data_dir / "ca" / "bundle.crt").read_text())
    body = tmp / "req.json"
    body.write_text(json.dumps({"token": token, "csr": csr.read_text()}))
    out = subprocess.run(
        [
            "curl",
            "-s",
            "--cacert",
            str(bundle),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            f"@{body}",
            f"https://{cp.discovery}/v1/identity/certificates",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return json.loads(out)


def test_a_join_token_buys_a_certificate_openssl_verifies(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    token = control_plane.cli(
        "token", "create", "-n", "shop", "--service-account", "echo", "--ttl", "10m", check=True
    ).stdout.strip()
    spiffe = "spiffe://cluster.local/ns/shop/sa/echo"
    issued = _request_certificate(control_plane, tmp_path, token, _openssl_csr(tmp_path, spiffe))
    assert issued["spiffeId"] == spiffe
    certs = issued["certificateChain"].split("-----END CERTIFICATE-----")
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(certs[0] + "-----END CERTIFICATE-----\n")
    inter = tmp_path / "intermediate.pem"
    inter.write_text(certs[1].lstrip() + "-----END CERTIFICATE-----\n")
    roots = tmp_path / "roots.pem"
    roots.write_text(issued["trustBundle"])
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(roots), "-untrusted", str(inter), str(leaf)],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.strip().endswith(": OK")
    text = subprocess.run(
        ["openssl", "x509", "-in", str(leaf), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"URI:{spiffe}" in text


def test_a_csr_for_another_identity_is_refused(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    token = control_plane.cli(
        "token", "create", "-n", "shop", "--service-account", "echo", check=True
    ).stdout.strip()
    other = "spiffe://cluster.local/ns/bank/sa/ledger"
    answer = _request_certificate(control_plane, tmp_path, token, _openssl_csr(tmp_path, other))
    assert answer["error"]["code"] == 403
    assert "ledger" in answer["error"]["message"]


def test_a_token_from_another_control_plane_is_refused(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    other = start_control_plane(tmp_path / "other")
    try:
        foreign = other.cli(
            "token", "create", "-n", "shop", "--service-account", "echo", check=True
        ).stdout.strip()
    finally:
        stop_process(other.proc)
    csr = _openssl_csr(tmp_path, "spiffe://cluster.local/ns/shop/sa/echo")
    answer = _request_certificate(control_plane, tmp_path, foreign, csr)
    assert answer["error"]["code"] == 403
    assert "not issued by this control plane" in answer["error"]["message"]


def test_a_corrupt_store_is_a_clear_error_at_start(tmp_path: Path) -> None:
    data = tmp_path / "broken"
    data.mkdir()
    (data / "gossamer.db").write_bytes(b"this is not a database" * 100)
    result = subprocess.run(
        [
            *GOSSAMER,
            "control-plane",
            "--data-dir",
            str(data),
            "--api",
            "127.0.0.1:0",
            "--discovery",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "error:" in result.stderr and "gossamer.db" in result.stderr
    assert "Traceback" not in result.stderr


def test_watch_streams_changes_as_they_happen(control_plane: ControlPlaneProcess) -> None:
    watcher = subprocess.Popen(
        ["curl", "-sN", f"{control_plane.api}/v1/watch?since=0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        control_plane.cli("apply", "-f", "-", stdin=APP, check=True)
        control_plane.cli("delete", "svc", "echo", "-n", "shop", check=True)
        assert watcher.stdout is not None
        events = [json.loads(watcher.stdout.readline()) for _ in range(3)]
    finally:
        watcher.kill()
        watcher.wait()
        if watcher.stdout is not None:
            watcher.stdout.close()
    assert [(e["type"], e["object"]["kind"]) for e in events] == [
        ("ADDED", "Service"),
        ("ADDED", "Workload"),
        ("DELETED", "Service"),
    ]
    assert events[0]["revision"] < events[1]["revision"] < events[2]["revision"]


def test_version_command_prints_the_version() -> None:
    out = subprocess.run([*GOSSAMER, "version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("gossamer 0.")


def test_every_command_has_help() -> None:
    for cmd in (["apply"], ["get"], ["delete"], ["token", "create"], ["control-plane"]):
        out = subprocess.run(
            [*GOSSAMER, *cmd, "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "100"},
            timeout=30,
        )
        assert out.returncode == 0 and "usage:" in out.stdout, cmd
        assert len(out.stdout.splitlines()) > 3, cmd


def test_control_plane_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    cp = start_control_plane(tmp_path / "cp2")
    start = time.monotonic()
    stop_process(cp.proc)
    assert cp.proc.returncode == 0, cp.log.read_text()
    assert time.monotonic() - start < 10


def test_an_unknown_kind_is_an_error_that_lists_the_known_ones(
    control_plane: ControlPlaneProcess,
) -> None:
    result = control_plane.cli("get", "gadgets")
    assert result.returncode != 0
    assert "unknown kind" in result.stderr and "Service" in result.stderr


def test_a_token_request_with_bad_fields_names_them(control_plane: ControlPlaneProcess) -> None:
    result = control_plane.cli("token", "create", "-n", "Not_A_Namespace", "--ttl", "5s")
    assert result.returncode != 0
    assert "namespace: must be a valid DNS-1123 label" in result.stderr
    assert "ttlSeconds: must be an integer from 60 to 2592000" in result.stderr


def test_a_yaml_syntax_error_names_the_document_and_applies_nothing(
    control_plane: ControlPlaneProcess,
) -> None:
    result = control_plane.cli("apply", "-f", "-", stdin=APP + "---\nkind: [unclosed\n")
    assert result.returncode != 0
    assert "document 3" in result.stderr
    listed = control_plane.cli("get", "svc", "-A", "-o", "json", check=True)
    assert json.loads(listed.stdout)["items"] == []


def test_check_reports_the_control_plane_and_ca(control_plane: ControlPlaneProcess) -> None:
    result = control_plane.cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "control plane is up" in result.stdout
    assert "root expires in 3649d" in result.stdout or "root expires in 3650d" in result.stdout
    report = json.loads(control_plane.cli("check", "-o", "json").stdout)
    assert report["ok"] is True and report["proxies"] == []
