"""`gossamer demo --scenario cascade`: the landscape's shape (fast), and a small landscape
run end to end (slow: `pytest -m slow tests/e2e/test_scenario.py`): every phase gives
numbers, the healthy landscape gives no finding and phase 1's incident gives some, and
no process of the scenario outlives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gossamer.demo.scenario import SLOW, hand_written_controls, landscape, mesh_resources
from gossamer.resources import validate

GOSSAMER = [sys.executable, "-m", "gossamer.cli.main"]


def test_the_landscape_has_thirty_services_in_four_tiers_and_valid_resources() -> None:
    services = landscape(30)
    assert Counter(s.tier for s in services) == {"web": 4, "api": 8, "backend": 12, "data": 6}
    names = {s.name for s in services}
    called = {t for s in services for c in s.calls for t in c.targets}
    assert called <= names
    # Every service but the entry tier is called by another; the slow one only optionally.
    assert called == {s.name for s in services if s.tier != "web"}
    slow_calls = [c for s in services for c in s.calls if SLOW in c.targets]
    assert slow_calls and all(c.optional and c.targets == [SLOW] for c in slow_calls)
    assert len({s.team for s in services}) == 4
    for doc in [*mesh_resources(services), *hand_written_controls()]:
        validate(doc)  # raises with the field path if the API would refuse it


@pytest.mark.parametrize("n", [4, 5, 8, 13, 30, 45])
def test_in_a_landscape_of_any_size_only_optional_calls_reach_the_slow_service(n: int) -> None:
    services = landscape(n)
    assert len(services) == n
    names = {s.name for s in services}
    for s in services:
        for call in s.calls:
            assert set(call.targets) <= names
            assert SLOW not in call.targets or (call.optional and s.tier == "api")
    assert any(SLOW in c.targets for s in services for c in s.calls)


def test_a_landscape_smaller_than_one_service_per_tier_is_refused() -> None:
    out = subprocess.run(
        [*GOSSAMER, "demo", "--scenario", "cascade", "--services", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "--services: at least 4 (one per tier), not 3" in out.stderr


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.e2e
def test_a_scenario_stopped_by_sigterm_leaves_no_process_and_no_directory() -> None:
    proc = subprocess.Popen(
        [*GOSSAMER, "demo", "--scenario", "cascade", "--services", "4", "--rate", "5",
         "--warmup", "60", "--duration", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    root = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded: the scenario ends by itself after ~3 minutes
            if "data dir " in line:
                root = line.split("data dir ")[1].rstrip(")\n").removesuffix("/cp")
            if "phase 1/3" in line:  # every process of the landscape is up
                break
        assert root and _processes_mentioning(root), "the scenario never started"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, rest
    assert "interrupted" in rest and "stopping every process of the scenario" in rest
    assert _processes_mentioning(root) == []
    assert not Path(root).exists()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_small_cascade_scenario_finds_the_incident_measures_3_phases_leaves_no_process() -> None:
    run = subprocess.run(
        [*GOSSAMER, "demo", "--scenario", "cascade", "--services", "8", "--rate", "10",
         "--warmup", "15", "--duration", "15", "-o", "json"],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["services"] == 8
    assert "phase 3/3" in run.stderr  # progress goes to standard error with -o json

    assert [p["name"] for p in report["phases"]] == [
        "no controls",
        "suggested by findings",
        "hand-written",
    ]
    for phase in report["phases"]:
        incident = phase["incident"]
        assert incident["requests"] > 0, phase
        assert 0.0 <= incident["successRate"] <= 1.0
        assert 0 < incident["p50Ms"] <= incident["p99Ms"]
        assert phase["healthy"]["requests"] > 0
    assert report["memory"]["proxiesMiB"] > 0 and report["memory"]["appsMiB"] > 0
    assert report["phases"][0]["controls"] == []
    assert report["phases"][2]["controls"] == ["bulkhead-backend-0", "retry-budget-api"]

    # The healthy landscape gives no finding; phase 1's incident — a slow backend behind
    # retrying callers — is found, and the controls the findings suggest are the ones
    # phase 2 ran with.
    assert report["phases"][0]["healthyFindings"] == []
    assert report["findings"], "phase 1 gave no findings"
    assert {f["kind"] for f in report["findings"]} & {"RetryStorm", "Cascade"}
    assert report["phases"][1]["controls"] == [c["metadata"]["name"] for c in report["suggested"]]
    assert report["phases"][1]["controls"]

    # Every process it started is gone, and so is its data dir (no --keep).
    assert report["pids"]
    assert _processes_mentioning(report["root"]) == []
    for pid in report["pids"]:
        assert not Path(f"/proc/{pid}").exists() or report["root"] not in (
            Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        )
    assert not Path(report["root"]).exists()
