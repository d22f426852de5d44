"""`gossamer check` fails while a proxy cannot join (issue 19): the control plane keeps
the joins, registrations and streams it refused lately, and check reports them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ControlPlaneProcess, stop_process
from tests.e2e.test_join_and_stream import _proxy

pytestmark = pytest.mark.e2e


def test_check_fails_while_a_proxy_cannot_join_and_says_why(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    assert control_plane.cli("check").returncode == 0
    token = control_plane.cli(
        "token", "create", "-n", "shop", "--service-account", "lost", "--uses", "1",
        check=True,
    ).stdout.strip()  # fmt: skip
    # The one use goes to a first proxy; a second with the same token is refused, as a
    # proxy with a used-up (or expired, or revoked) token is.
    first = _proxy(control_plane.discovery, tmp_path / "first", "--join-token", token,
                   "--service-account", "lost")  # fmt: skip
    try:
        cert = tmp_path / "first" / "state" / "cert.pem"
        for _ in range(300):
            if cert.exists():
                break
            time.sleep(0.1)
        assert cert.exists(), "the first proxy never joined"
    finally:
        stop_process(first)
        first.communicate(timeout=10)  # its output pipe, closed
    second = _proxy(control_plane.discovery, tmp_path / "second", "--join-token", token,
                    "--service-account", "lost")  # fmt: skip
    try:
        out, _ = second.communicate(timeout=30)
    finally:
        stop_process(second)
    assert second.returncode != 0, out

    result = control_plane.cli("check")
    report = json.loads(control_plane.cli("check", "-o", "json").stdout)

    assert result.returncode != 0, result.stdout
    problems = [p for p in report["problems"] if p.startswith("join refused for")]
    assert len(problems) == 1, report["problems"]
    assert "spiffe://" in problems[0] and "used" in problems[0], problems[0]
    assert problems[0] in result.stdout
