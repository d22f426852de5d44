"""Scoped API tokens with the real control plane process, the real CLI and curl."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ControlPlaneProcess, start_control_plane, stop_process

pytestmark = pytest.mark.e2e

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80}]
"""


def _create(cp: ControlPlaneProcess, tmp: Path, name: str, *flags: str) -> tuple[str, Path]:
    """A new token: its secret (printed once) and a file holding it, for --token-file."""
    out = cp.cli("api-token", "create", name, *flags, check=True).stdout
    secret = out.strip()
    assert secret.startswith("gst_") and len(out.splitlines()) == 1
    path = tmp / f"{name}.token"
    path.write_text(secret + "\n")
    return secret, path


def _curl(method: str, url: str, token: str | None = None) -> str:
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    done = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, *auth, url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout


def test_a_read_token_reads_an_admin_token_changes_and_the_audit_names_each(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    reader, reader_file = _create(cp, tmp_path, "grafana", "--scope", "read", "--ttl", "30d")
    admin, admin_file = _create(cp, tmp_path, "ci-bot", "--scope", "admin")

    refused = cp.cli("apply", "-f", "-", "--token-file", str(reader_file), stdin=SERVICE)
    assert refused.returncode == 1
    assert "API token grafana has scope read; this call needs scope admin" in refused.stderr
    assert "gossamer api-token create NAME --scope admin" in refused.stderr
    cp.cli("apply", "-f", "-", "--token-file", str(admin_file), stdin=SERVICE, check=True)
    cp.cli("delete", "svc", "echo", "-n", "shop", check=True)  # admin.token: bootstrap-admin

    audit = cp.cli("audit", "-o", "json", "--token-file", str(reader_file), check=True)
    actors = [(i["actor"], i["action"], i["name"]) for i in json.loads(audit.stdout)["items"]]
    assert actors == [
        ("bootstrap-admin", "apitoken.create", "grafana"),
        ("bootstrap-admin", "apitoken.create", "ci-bot"),
        ("ci-bot", "apply.created", "echo"),
        ("bootstrap-admin", "delete", "echo"),
    ]

    listed = json.loads(cp.cli("api-token", "list", "-o", "json", check=True).stdout)["items"]
    assert [(t["name"], t["scope"]) for t in listed] == [
        ("bootstrap-admin", "admin"),
        ("ci-bot", "admin"),
        ("grafana", "read"),
    ]
    by_name = {t["name"]: t for t in listed}
    assert by_name["grafana"]["expiresAt"] is not None and by_name["ci-bot"]["expiresAt"] is None
    assert by_name["ci-bot"]["lastUsedAt"] is not None
    table = cp.cli("api-token", "list", check=True).stdout.splitlines()
    assert table[0].split() == ["NAME", "SCOPE", "CREATED", "EXPIRES", "LAST-USED"]
    assert table[3].split()[:2] == ["grafana", "read"] and "in 29d" in table[3]

    assert cp.cli("api-token", "revoke", "grafana", check=True).stdout == (
        "api token grafana revoked\n"
    )
    gone = cp.cli("audit", "--token-file", str(reader_file))
    assert gone.returncode == 1 and "not known (revoked" in gone.stderr
    bootstrap = cp.cli("api-token", "revoke", "bootstrap-admin")
    assert bootstrap.returncode == 1 and "replace that file and restart" in bootstrap.stderr

    # Kept as hashes in a private file; never written to the log.
    tokens_file = cp.data_dir / "api-tokens.json"
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    for secret in (reader, admin, cp.token_file.read_text().strip()):
        assert secret not in tokens_file.read_text()
        assert secret not in cp.log.read_text()
    assert "api token ci-bot created by bootstrap-admin" in cp.log.read_text()


def test_with_auth_reads_every_read_needs_a_token_but_the_dashboard_page_loads(
    tmp_path: Path,
) -> None:
    cp = start_control_plane(tmp_path / "cp", "--auth-reads")
    try:
        _, reader_file = _create(cp, tmp_path, "viewer", "--scope", "read")
        reader = reader_file.read_text().strip()

        anonymous = cp.cli("get", "svc", "-A", token=False)
        assert anonymous.returncode == 1
        assert "needs an API token (scope read or admin)" in anonymous.stderr
        cp.cli("get", "svc", "-A", "--token-file", str(reader_file), check=True)
        assert _curl("GET", f"{cp.api}/v1/stats/services", reader) == "200"
        assert _curl("GET", f"{cp.api}/v1/stats/services") == "401"
        # The page and its files load without a token: the user enters one there.
        assert _curl("GET", f"{cp.api}/") == "200"
        assert _curl("GET", f"{cp.api}/dashboard/app.js") == "200"
        assert _curl("GET", f"{cp.api}/v1/whoami", reader) == "200"
        # A read token still changes nothing.
        assert _curl("DELETE", f"{cp.api}/v1/resources/services/shop/echo", reader) == "403"
        assert _curl("POST", f"{cp.api}/v1/ca/rotation", reader) == "403"
    finally:
        stop_process(cp.proc)
