"""The CLI as a user meets it: the real `gossamer` process against a real control plane.

Flags and errors (issue 19): one set of `-o` formats, durations everywhere, `--server
HOST:PORT`, `--version`, "did you mean", exit codes, and no Python traceback for a
wrong port or a closed pipe.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import (
    GOSSAMER,
    ControlPlaneProcess,
    echo_app,
    free_port,
    run_workload,
    start_control_plane,
    stop_process,
)

from gossamer import __version__
from gossamer.cli.client import Client
from gossamer.cli.common import FORMATS
from gossamer.cli.main import build_parser
from gossamer.resources import KINDS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    proc = start_control_plane(tmp_path_factory.mktemp("cli") / "cp")
    try:
        yield proc
    finally:
        stop_process(proc.proc)


def gossamer(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`gossamer ARGS` with no control-plane settings from the test's environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GOSSAMER_")}
    return subprocess.run(
        [*GOSSAMER, *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        input=stdin,
        timeout=60,
    )


def _subcommands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subcommands(sub, f"{prefix}{name} ")


def test_every_output_flag_offers_the_same_formats() -> None:
    seen = {}
    for name, sub in _subcommands(build_parser()):
        for action in sub._actions:
            if "--output" in action.option_strings:
                seen[name] = tuple(action.choices or ())
    assert {"get", "stat", "edges", "check", "apply", "audit", "tap", "top"} <= set(seen)
    for name, choices in seen.items():
        assert set(choices) <= set(FORMATS), name
        assert {"table", "json"} <= set(choices), name
        assert choices[0] == "table", name


@pytest.mark.parametrize(
    ("argv", "field", "seconds"),
    [
        (["top", "-w", "1m"], "window", 60),
        (["top", "-w", "45"], "window", 45),
        (["tap", "web", "--duration", "2m"], "duration", 120),
        (["check", "--wait", "30s"], "wait", 30),
    ],
    ids=["top takes 1m", "plain seconds", "tap takes 2m", "check --wait takes 30s"],
)
def test_every_duration_flag_takes_the_same_durations(
    argv: list[str], field: str, seconds: int
) -> None:
    assert getattr(build_parser().parse_args(argv), field) == seconds


def test_version_flag_prints_the_version() -> None:
    result = gossamer("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"gossamer {__version__}")


def test_version_command_shows_the_control_planes_version_too(cp: ControlPlaneProcess) -> None:
    result = gossamer("version", "--server", cp.api)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"gossamer {__version__}",
        f"control plane {__version__} at {cp.api}",
    ]


def test_a_mistyped_command_gets_a_suggestion_and_exit_2() -> None:
    result = gossamer("stats")
    assert result.returncode == 2
    assert "did you mean 'stat'?" in result.stderr


def test_a_mistyped_flag_names_the_nearest_flag_of_that_command() -> None:
    result = gossamer("get", "svc", "--namspace", "shop")
    assert result.returncode == 2
    assert "usage: gossamer get" in result.stderr
    assert "--namspace (did you mean --namespace?)" in result.stderr


def test_a_mistyped_output_format_gets_a_suggestion() -> None:
    result = gossamer("stat", "-o", "jsn")
    assert result.returncode == 2 and "did you mean 'json'?" in result.stderr


def test_server_takes_host_and_port_without_a_scheme(cp: ControlPlaneProcess) -> None:
    bare = cp.api.removeprefix("http://")
    result = gossamer("get", "services", "-A", "-o", "json", "--server", bare)
    assert result.returncode == 0, result.stderr
    assert '"kind": "List"' in result.stdout


def test_the_discovery_port_is_an_error_that_says_so_not_a_traceback(
    cp: ControlPlaneProcess,
) -> None:
    result = gossamer("check", "--server", cp.discovery)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "not the discovery port" in result.stdout


def test_a_closed_pipe_ends_quietly() -> None:
    """`gossamer ... | head -1`: the reader is gone before the command writes."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GOSSAMER_")}
    proc = subprocess.Popen(
        [*GOSSAMER, "version", "--client"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_stat_in_a_namespace_without_services_fails(cp: ControlPlaneProcess) -> None:
    result = gossamer("stat", "-n", "nosuchns", "--server", cp.api)
    assert result.returncode == 1
    assert "no Service in namespace nosuchns" in result.stderr
    assert result.stdout == ""


def test_get_help_lists_every_kind() -> None:
    result = gossamer("get", "--help")
    flat = " ".join(result.stdout.split())
    for info in KINDS.values():
        assert info.kind.lower() in flat


POLICY = """\
apiVersion: v1
kind: Service
metadata: {name: cli-echo, namespace: clitest}
spec:
  selector: {app: cli-echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: gossamer.dev/v1alpha1
kind: RetryPolicy
metadata: {name: cli-echo, namespace: clitest, labels: {team: shop}}
spec:
  targetRefs: [{group: "", kind: Service, name: cli-echo}]
  attempts: 2
  retryOn: [5xx]
"""


def test_get_shows_a_policys_target_and_settings_and_wide_its_labels(
    cp: ControlPlaneProcess,
) -> None:
    env = {"GOSSAMER_SERVER": cp.api, "GOSSAMER_TOKEN": cp.token_file.read_text().strip()}
    assert gossamer("apply", "-f", "-", env=env, stdin=POLICY).returncode == 0
    table = gossamer("get", "retrypolicies", "-n", "clitest", env=env)
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "TARGETS", "SETTINGS", "AGE"]
    assert row.split()[:2] == ["cli-echo", "Service/cli-echo"]
    assert row.split()[2].startswith("attempts=2,") and row.split()[2].endswith("…")
    wide = gossamer("get", "retrypolicy", "-n", "clitest", "-o", "wide", env=env)
    header, row = wide.stdout.splitlines()
    assert header.split()[-1] == "LABELS" and row.split()[-1] == "team=shop"
    assert "retryOn=5xx" in row.split()[2].split(",")


def test_delete_f_deletes_what_the_file_names(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    env = {"GOSSAMER_SERVER": cp.api, "GOSSAMER_TOKEN": cp.token_file.read_text().strip()}
    objects = tmp_path / "objects.yaml"
    objects.write_text(POLICY.replace("cli-echo", "cli-gone"))
    assert gossamer("apply", "-f", str(objects), env=env).returncode == 0
    result = gossamer("delete", "-f", str(objects), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "service/cli-gone (clitest) deleted",
        "retrypolicy/cli-gone (clitest) deleted",
    ]
    again = gossamer("delete", "-f", str(objects), env=env)
    assert again.returncode == 1 and "retrypolicy/cli-gone (clitest)" in again.stderr
    quiet = gossamer("delete", "-f", str(objects), "--ignore-not-found", env=env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_check_names_an_expected_workload_that_never_joined(cp: ControlPlaneProcess) -> None:
    result = gossamer("check", "--server", cp.api, "--workload", "shop/never-joined")
    assert result.returncode == 1
    assert "✗ workload shop/never-joined is not registered" in result.stdout
    assert "all checks passed" not in result.stdout


def test_check_wait_waits_for_a_control_plane_that_starts_later(tmp_path: Path) -> None:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("GOSSAMER_")}
    waiting = subprocess.Popen(
        [*GOSSAMER, "check", "--wait", "60s", "--server", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base,
    )
    late = None
    try:
        time.sleep(1.5)  # not a timing assertion: check must still be waiting, whatever
        assert waiting.poll() is None
        late = start_control_plane(tmp_path / "late", "--api", f"127.0.0.1:{port}")
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, out + err
        assert "all checks passed" in out
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        if late is not None:
            stop_process(late.proc)


def test_tap_finds_a_workload_by_name_and_fails_when_the_control_plane_goes_away(
    tmp_path: Path,
) -> None:
    cp = start_control_plane(tmp_path / "cp")
    workload = None
    tap = None
    try:
        env = {"GOSSAMER_SERVER": cp.api, "GOSSAMER_TOKEN": cp.token_file.read_text().strip()}
        service = POLICY.split("---")[0].replace("clitest", "shop")
        assert gossamer("apply", "-f", "-", env=env, stdin=service).returncode == 0
        app = free_port()
        workload = run_workload(
            cp, tmp_path, "cli-echo-1", service_account="echo", labels={"app": "cli-echo"},
            app=echo_app("cli-echo-1", app), port=f"http=8080:{app}",
        )  # fmt: skip
        workload.wait_ready()
        # A workload taps by its own name too: one no Service selects is a node of the
        # topology under that name (cli-echo-1 has a Service, but none by its name).
        by_workload = gossamer("tap", "cli-echo-1", "-n", "shop", "--duration", "2s", env=env)
        assert by_workload.returncode == 0, by_workload.stderr
        # "tapping ..." comes once the proxy answers, which a loaded machine may not
        # manage within the 2 s; a name that resolves to nothing is refused at once.
        assert by_workload.stderr in ("", "tapping cli-echo-1\n"), by_workload.stderr
        nothing = gossamer("tap", "nobody", "-n", "shop", env=env)
        assert nothing.returncode == 1 and "nor a workload of that name" in nothing.stderr
        base = {k: v for k, v in os.environ.items() if not k.startswith("GOSSAMER_")}
        tap = subprocess.Popen(
            [*GOSSAMER, "tap", "cli-echo", "-n", "shop"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**base, **env},
        )
        assert tap.stderr is not None
        assert tap.stderr.readline().startswith("tapping cli-echo-1")
        stop_process(cp.proc)
        _, err = tap.communicate(timeout=60)
        assert tap.returncode == 1, err
        assert "Traceback" not in err
        assert "is it still running?" in err
    finally:
        for proc in (tap, cp.proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if workload is not None:
            workload.stop()


def test_get_watch_prints_each_change_and_fails_when_the_control_plane_goes(
    tmp_path: Path,
) -> None:
    cp = start_control_plane(tmp_path / "cp")
    base = {k: v for k, v in os.environ.items() if not k.startswith("GOSSAMER_")}
    env = {"GOSSAMER_SERVER": cp.api, "GOSSAMER_TOKEN": cp.token_file.read_text().strip()}
    watching = subprocess.Popen(
        [*GOSSAMER, "get", "services", "-n", "clitest", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **env},
    )
    try:
        assert watching.stderr is not None and watching.stdout is not None
        assert watching.stderr.readline() == "No services found in namespace clitest.\n"
        service = POLICY.split("---")[0]
        assert gossamer("apply", "-f", "-", env=env, stdin=service).returncode == 0
        assert watching.stdout.readline().split()[:3] == ["added", "cli-echo", "app=cli-echo"]
        assert gossamer("delete", "svc", "cli-echo", "-n", "clitest", env=env).returncode == 0
        assert watching.stdout.readline().split()[:2] == ["deleted", "cli-echo"]
        stop_process(cp.proc)
        _, err = watching.communicate(timeout=60)
        assert watching.returncode == 1, err
        assert "ended the watch; is it still running?" in err and "Traceback" not in err
    finally:
        for proc in (watching, cp.proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["gossamer", "ge"], ["get"]),
        (["gossamer", "get", "retry"], ["retrypolicies"]),
        (["gossamer", "stat", "-o", "w"], ["wide"]),
        (["gossamer", "token", "cr"], ["create"]),
        (["gossamer", "token", "create", "--service-a"], ["--service-account"]),
        (["gossamer", "describe", "-n", "shop", "wo"], ["workload"]),
    ],
    ids=["a command", "a kind", "a flag's value", "a subcommand", "a subcommand's flag",
         "past a flag and its value"],
)  # fmt: skip
def test_bash_completion_completes_commands_flags_and_values(
    words: list[str], expected: list[str], tmp_path: Path
) -> None:
    script = tmp_path / "gossamer.bash"
    script.write_text(gossamer("completion", "bash").stdout)
    line = " ".join(f"'{w}'" for w in words)
    run = subprocess.run(
        ["bash", "-c", f'source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
         '_gossamer; printf "%s\\n" "${COMPREPLY[@]}"'],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == expected


def test_check_pre_says_whether_this_host_can_join(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    flags = ["check", "--pre", "--server", cp.api, "--discovery", cp.discovery]
    env = {"XDG_STATE_HOME": str(tmp_path), "GOSSAMER_TOKEN": cp.token_file.read_text()}
    ready = gossamer(*flags, env=env)
    lines = ready.stdout.splitlines()
    assert f"✓ control plane at {cp.api}: answers" in lines
    assert f"✓ versions: this gossamer {__version__}, the control plane {__version__}" in lines
    assert any(line.startswith("✓ clock: within") for line in lines)
    assert any(line.startswith(f"✓ discovery at {cp.discovery}: answers TLS") for line in lines)
    assert f"✓ state directory: {tmp_path}/gossamer is writable" in lines
    assert "✓ credential to join: an API token, to mint a join token" in lines
    assert {line.split(":")[0] for line in lines if "(inbound)" in line} <= {
        "✓ port 4143 (inbound)",
        "✗ port 4143 (inbound)",
    }
    # No credential, and a discovery address nothing listens on: two problems, exit 1.
    nothing = f"127.0.0.1:{free_port()}"
    bare = gossamer("check", "--pre", "--server", cp.api, "--discovery", nothing,
                    env={"XDG_STATE_HOME": str(tmp_path)})  # fmt: skip
    assert bare.returncode == 1
    assert f"✗ discovery at {nothing}:" in bare.stdout
    assert "✗ credential to join: none: set GOSSAMER_JOIN_TOKEN" in bare.stdout
    assert bare.stdout.splitlines()[-1] == "✗ fix the above before joining"


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (urllib.error.URLError(http.client.RemoteDisconnected("closed")), "did not answer as"),
        (http.client.BadStatusLine("\x15\x03\x03"), "did not answer as"),
        (ConnectionResetError(104, "reset"), "did not answer as"),
        (urllib.error.URLError(ConnectionRefusedError(111, "refused")), "cannot reach"),
        (urllib.error.URLError(TimeoutError("timed out")), "did not answer in time"),
    ],
    ids=["closed, wrapped by urllib", "not HTTP, not wrapped", "reset", "refused", "timeout"],
)
def test_failures_below_http_read_as_what_they_mean(error: BaseException, says: str) -> None:
    """However urllib hands them over: the discovery port closes or answers TLS, so it
    'did not answer as the API'; nothing listening is 'cannot reach'."""
    assert says in Client("http://127.0.0.1:15012")._unreachable(error).message
