"""A real etcd cluster for tests: members on free ports, data in a temporary directory,
every member killed at teardown whatever happened."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.conftest import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    """`size` members; `start()` launches them, `stop()` kills them all."""

    root: Path
    size: int = 3
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.size):
            name = f"m{i}"
            self.members.append(
                Member(name, free_port(), free_port(), self.root / name, self.root / f"{name}.log")
            )

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def url(self, prefix: str = "") -> str:
        return f"etcd://{self.endpoints}/{prefix}" if prefix else f"etcd://{self.endpoints}"

    def start(self) -> None:
        try:
            for member in self.members:
                self.start_member(member, state="new")
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def start_member(self, member: Member, *, state: str = "existing") -> None:
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        with member.log.open("ab") as out:
            member.proc = subprocess.Popen(
                [
                    ETCD,
                    "--name",
                    member.name,
                    "--data-dir",
                    str(member.data_dir),
                    "--listen-client-urls",
                    f"http://{member.endpoint}",
                    "--advertise-client-urls",
                    f"http://{member.endpoint}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{member.peer_port}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{member.peer_port}",
                    "--initial-cluster",
                    initial,
                    "--initial-cluster-state",
                    state,
                    "--initial-cluster-token",
                    f"gossamer-test-{self.root.name}",
                    # Short elections, so a killed member costs a test seconds, not tens.
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                    "--auto-compaction-mode",
                    "revision",
                    "--auto-compaction-retention",
                    "100000",
                    "--logger",
                    "zap",
                    "--log-level",
                    "warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self, member: Member) -> None:
        """SIGKILL, as a crash: no goodbye to the other members."""
        if member.proc is not None and member.proc.poll() is None:
            member.proc.kill()
            member.proc.wait()

    def pause(self, member: Member) -> None:
        """SIGSTOP: the member keeps its sockets and answers nothing (a frozen host)."""
        if member.proc is not None and member.proc.poll() is None:
            os.kill(member.proc.pid, signal.SIGSTOP)

    def resume(self, member: Member) -> None:
        if member.proc is not None and member.proc.poll() is None:
            os.kill(member.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        for member in self.members:
            self.kill(member)  # SIGKILL ends a stopped process too

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = [m for m in self.members if m.proc is not None and m.proc.poll() is None]
        while pending and time.monotonic() < deadline:
            member = pending[0]
            if member.proc is not None and member.proc.poll() is not None:
                raise AssertionError(f"etcd {member.name} exited:\n{member.log.read_text()}")
            if _healthy(member):
                pending.pop(0)
            else:
                time.sleep(0.1)
        if pending:
            raise AssertionError(
                f"etcd {pending[0].name} not healthy in {timeout} s:\n{pending[0].log.read_text()}"
            )


def _healthy(member: Member) -> bool:
    try:
        with urllib.request.urlopen(f"http://{member.endpoint}/health", timeout=1) as r:
            return bool(json.loads(r.read()).get("health") == "true")
    except (OSError, ValueError):
        return False
