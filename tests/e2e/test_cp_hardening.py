"""The real control plane against hostile requests and a damaged data dir.

Every refusal is short and says what to do: a 4xx naming the problem in the body
(never a 500 with a traceback in the log), or, at start, one `error:` line and a
non-zero exit."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import GOSSAMER, ControlPlaneProcess, start_control_plane, stop_process

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    started = start_control_plane(tmp_path_factory.mktemp("hardening") / "cp")
    try:
        yield started
    finally:
        stop_process(started.proc)


def _post(
    url: str, body: bytes, token: str | None, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _nested_yaml(levels: int) -> bytes:
    return ("items: " + "[" * levels + "]" * levels).encode()


def _laughs() -> bytes:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return ("\n".join(lines) + "\n").encode()


def _service_with_ports(count: int) -> bytes:
    ports = [{"name": f"p{i}", "port": 1024 + i} for i in range(count)]
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "wide", "namespace": "shop"},
            "spec": {"selector": {"app": "wide"}, "ports": ports},
        }
    ).encode()


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/apply", b"kind: Service\nname: caf\xe9\n", 422, "request body: not UTF-8 at byte 23"),
        ("/v1/apply", _nested_yaml(100_000), 422, "nested deeper than 64 levels"),
        ("/v1/apply", b'{"a": ' + b"[" * 1_000_000, 422, "nested deeper than 64 levels"),
        ("/v1/apply", _laughs(), 422, "aliases expand it to"),
        ("/v1/apply", _service_with_ports(10_000), 422, "spec.ports: must have at most 100 items"),
        ("/v1/tokens", b"[" * 100_000, 400, "request body: nested deeper than 64 levels"),
        ("/v1/api-tokens", b'{"name": "\xff"}', 400, "request body: not UTF-8 at byte 10"),
        ("/v1/ca/rotation", b"[" * 100_000, 400, "request body: nested deeper than 64 levels"),
    ],
    ids=[
        "apply: YAML that is not UTF-8",
        "apply: YAML nested 100,000 deep",
        "apply: JSON nested 1,000,000 deep",
        "apply: a billion laughs",
        "apply: a Service with 10,000 ports",
        "tokens: JSON nested 100,000 deep",
        "api-tokens: JSON that is not UTF-8",
        "CA rotation: JSON nested 100,000 deep",
    ],
)
def test_a_hostile_request_is_a_short_4xx_and_one_log_line_at_most(
    cp: ControlPlaneProcess, path: str, body: bytes, status: int, message: str
) -> None:
    token = cp.token_file.read_text().strip()
    before = cp.log.read_text().splitlines()
    code, answer = _post(cp.api + path, body, token)
    assert code == status, answer
    assert message in answer["error"]["message"]
    assert len(answer["error"]["message"]) < 300
    after = cp.log.read_text().splitlines()
    assert "Traceback" not in "\n".join(after)
    added = [line for line in after[len(before) :] if path in line or "ERROR" in line]
    assert len(added) <= 1, added
    # Still serving.
    with urllib.request.urlopen(cp.api + "/readyz", timeout=10) as ready:
        assert ready.status == 200


def test_a_proxy_endpoint_refuses_a_deep_body_the_same_way(cp: ControlPlaneProcess) -> None:
    context = ssl.create_default_context(cafile=str(cp.data_dir / "ca" / "bundle.crt"))
    code, answer = _post(
        f"https://{cp.discovery}/v1/identity/certificates", b"[" * 100_000, None, context
    )
    assert code == 400
    assert "request body: nested" in answer["error"]["message"]
    assert "Traceback" not in cp.log.read_text()


def test_a_service_at_the_port_limit_is_applied(cp: ControlPlaneProcess) -> None:
    token = cp.token_file.read_text().strip()
    code, answer = _post(cp.api + "/v1/apply", _service_with_ports(100), token)
    assert code == 200, answer
    assert answer["items"][0]["action"] in ("created", "configured", "unchanged")


# --- start-up ----------------------------------------------------------------------------


def _start_fails(data_dir: Path) -> str:
    """Run the control plane on `data_dir`, which must refuse to start; its stderr."""
    result = subprocess.run(
        [
            *GOSSAMER,
            "control-plane",
            "--data-dir",
            str(data_dir),
            "--api",
            "127.0.0.1:0",
            "--discovery",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _started_once(data_dir: Path) -> None:
    cp = start_control_plane(data_dir)
    stop_process(cp.proc)


def _starts(data_dir: Path) -> None:
    cp = start_control_plane(data_dir)
    try:
        listed = cp.cli("get", "svc", "-A", "-o", "json", check=True)
        assert json.loads(listed.stdout)["items"] == []
    finally:
        stop_process(cp.proc)


def test_an_emptied_store_stops_the_start_until_it_is_moved_aside(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    _started_once(data)
    db = data / "gossamer.db"
    for leftover in (data / "gossamer.db-wal", data / "gossamer.db-shm"):
        leftover.unlink(missing_ok=True)
    db.write_bytes(b"")
    error = _start_fails(data)
    assert error.startswith(f"error: {db} is not a usable store: it is empty (0 bytes)")
    assert "Restore it from a backup, or move it aside to start again with no objects" in error
    assert db.stat().st_size == 0  # left as found
    db.rename(data / "gossamer.db.empty")
    _starts(data)


def test_a_new_data_dir_with_an_empty_store_file_starts(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    data.mkdir()
    (data / "gossamer.db").touch()  # made ahead of the first start, e.g. by a volume
    _starts(data)  # it serves, with no objects
    assert (data / "gossamer.db").stat().st_size > 0  # and made a store in the file


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "audit.db",
            b"this is not an SQLite database " * 100,
            "audit.db is not a usable audit log (file is not a database): restore it from a "
            "backup, or move it aside",
        ),
        (
            "api-tokens.json",
            b'{"tokens": [{"name": "ci", "scope":',
            "api-tokens.json is not a readable API token file (Expecting value: line 1",
        ),
        (
            "admin.token",
            b"",
            "admin.token is empty, so nobody could administer this control plane: delete it to "
            "have a new admin token made at the next start",
        ),
    ],
    ids=["a corrupt audit.db", "a corrupt api-tokens.json", "an empty admin.token"],
)
def test_a_damaged_file_stops_the_start_naming_it(
    tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    data = tmp_path / "cp"
    _started_once(data)
    for leftover in data.glob(f"{name}-*"):
        leftover.unlink()
    (data / name).write_bytes(content)
    error = _start_fails(data)
    assert error.startswith(f"error: {data / name}"), error
    assert expected in error
    (data / name).unlink()  # what the message says to do (move aside or delete): starts
    _starts(data)


def test_files_in_the_data_dir_keep_their_modes_under_umask_000(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    old = os.umask(0)
    try:
        cp = start_control_plane(data, "--scrape-interval", "0.2")
    finally:
        os.umask(old)
    try:
        cp.cli("api-token", "create", "ci", "--scope", "read", check=True)
        targets = data / "prometheus" / "targets.json"
        deadline = time.monotonic() + 20
        while not targets.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert targets.exists()
    finally:
        stop_process(cp.proc)
    public = {"bundle.crt", "intermediate.crt", "root.crt", "targets.json"}
    found = {}
    for path in [data, *sorted(data.rglob("*"))]:
        found[str(path.relative_to(tmp_path))] = stat.S_IMODE(path.stat().st_mode)
    assert found["cp"] == 0o700 and found["cp/ca"] == 0o700
    assert found["cp/prometheus"] == 0o750
    assert found["cp/prometheus/targets.json"] == 0o644
    for name in ("admin.token", "api-tokens.json", "gossamer.db", "audit.db", "ca/root.key"):
        assert found[f"cp/{name}"] == 0o600, name
    for relative, mode in found.items():
        assert not mode & stat.S_IWOTH, relative
        if Path(relative).name not in public and not (tmp_path / relative).is_dir():
            assert mode == 0o600, relative


def test_a_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    data.write_text("not a directory")
    error = _start_fails(data)
    assert error.startswith(f"error: cannot use {data}"), error
    assert "ports" not in error
