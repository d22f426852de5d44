"""End-to-end fixtures: real `gossamer` processes on ephemeral ports, always cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

GOSSAMER = [sys.executable, "-m", "gossamer.cli.main"]


@dataclass
class ControlPlaneProcess:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    api: str
    discovery: str
    log: Path

    @property
    def token_file(self) -> Path:
        return self.data_dir / "admin.token"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "GOSSAMER_SERVER": self.api,
            "GOSSAMER_TOKEN": self.token_file.read_text().strip(),
        }

    def cli(
        self, *args: str, stdin: str | None = None, token: bool = True, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        env = self.env() if token else {**os.environ, "GOSSAMER_SERVER": self.api}
        if not token:
            env.pop("GOSSAMER_TOKEN", None)
        result = subprocess.run(
            [*GOSSAMER, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"gossamer {' '.join(args)} failed: {result.stderr}")
        return result


def wait_for_file(
    path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared:\n{log.read_text()}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_control_plane(data_dir: Path, *extra: str) -> ControlPlaneProcess:
    ready = data_dir.parent / f"{data_dir.name}.ready"
    ready.unlink(missing_ok=True)
    log = data_dir.parent / f"{data_dir.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *GOSSAMER,
                "control-plane",
                "--data-dir",
                str(data_dir),
                "--api",
                "127.0.0.1:0",
                "--discovery",
                "127.0.0.1:0",
                "--log-level",
                "debug",
                "--ready-file",
                str(ready),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        lines = dict(line.split("=", 1) for line in wait_for_file(ready, proc, log).split())
    except BaseException:
        stop_process(proc)
        raise
    return ControlPlaneProcess(proc, data_dir, lines["api"], lines["discovery"], log)


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = start_control_plane(tmp_path / "cp")
    try:
        yield cp
    finally:
        stop_process(cp.proc)
