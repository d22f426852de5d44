"""`gossamer demo` prints the line that points another shell at it, and shows edges."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from tests.e2e.conftest import GOSSAMER

pytestmark = pytest.mark.e2e


def test_the_demo_prints_an_export_line_that_tap_works_with_and_shows_edges() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GOSSAMER_")}
    demo = subprocess.Popen(
        [*GOSSAMER, "demo", "--duration", "60", "--interval", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=base,
        start_new_session=True,
    )
    assert demo.stdout is not None
    try:
        settings = None
        for line in demo.stdout:
            if line.startswith("ready; in another shell: "):
                settings = line.removeprefix("ready; in another shell: ").strip()
                break
        assert settings and settings.startswith("export GOSSAMER_SERVER=http://127.0.0.1:")
        # Pasted into another shell, the line is all `tap` needs (it wants a token).
        tapped = subprocess.run(
            ["bash", "-c", f"{settings}; {' '.join(GOSSAMER)} tap web -n demo --max 1"],
            capture_output=True,
            text=True,
            env=base,
            timeout=60,
        )
        assert tapped.returncode == 0, tapped.stderr
        assert "dst=web" in tapped.stdout or "src=web" in tapped.stdout
        # The refresh after the tap is whole once the next one begins.
        shown = ""
        for line in demo.stdout:
            shown += line
            if shown.count("Gossamer demo —") >= 2:
                break
        edges = shown.split("Gossamer demo —")[1].split("per call from service to service")[1]
        assert "loadgen.demo  web.demo" in edges
        assert "web.demo      catalog.demo" in edges
        assert "over the last 2s" in shown
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            try:
                demo.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.communicate()
    assert demo.returncode == 0
