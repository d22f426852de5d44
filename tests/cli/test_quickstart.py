"""The README's quickstart, run as a user pastes it: the lines between its
`<!-- quickstart -->` markers, unchanged, in one fresh bash, with real processes.

The quickstart uses the default ports (15000, 15012, 4143, ...), so it runs in a
network namespace of its own (`unshare --net`; as a user that is not root, in a user
namespace too): nothing else on this machine can hold them, and nothing it starts is
reachable from outside.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"

pytestmark = pytest.mark.e2e

# What the test adds after the quickstart's lines, in the same shell: a third workload
# asks the echo app for the admin token's path (it must not serve files), the listeners
# are inspected, and then the background jobs stop as the README says.
PROBE = r"""
echo "--- probe"
gossamer run --name probe-1 --inbound 127.0.0.1:5153 --outbound 127.0.0.1:5150 \
  --admin 127.0.0.1:5192 -- curl -s http://echo/gossamer-data/admin.token
echo
echo "--- listeners"
ss -ltnH
echo "--- stop"
kill %2 %1
wait
"""


def quickstart_lines(readme: str) -> str:
    """The shell lines inside the README's quickstart markers."""
    found = re.search(r"<!-- quickstart -->\n```sh\n(.*?)```\n<!-- /quickstart -->", readme, re.S)
    assert found, "README.md has no <!-- quickstart --> ```sh ... ``` <!-- /quickstart --> block"
    return found.group(1)


def test_the_extracted_lines_are_the_readmes_code_block() -> None:
    lines = quickstart_lines(README.read_text())
    assert lines.startswith("# The control plane")
    assert "gossamer control-plane --data-dir ./gossamer-data &" in lines
    assert "python -m http.server" not in lines  # it would serve the data dir's secrets


def test_the_readme_quickstart_works_when_pasted(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.sh"
    script.write_text(quickstart_lines(README.read_text()))
    bin_dir = Path(sys.executable).parent  # where `pip install .` put gossamer and python
    env = {
        "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "LANG": "C.UTF-8",
    }
    # -e: a line that fails stops the run, as a user would stop reading there.
    shell = f"ip link set lo up && set -e && source {script}\n{PROBE}"
    # Root makes the namespace itself; anyone else through a user namespace of their own.
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    proc = subprocess.Popen(
        ["unshare", *userns, "--net", "--", "bash", "-c", shell],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with_group = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True)
        for pid in with_group.stdout.split():
            os.kill(int(pid), signal.SIGKILL)
    assert proc.returncode == 0, out
    quickstart, _, probe = out.partition("--- probe")
    # client-1's curl reached echo-1 through both proxies.
    assert '"servedBy": "echo"' in quickstart, out
    assert re.search(r"^echo-1\s+127\.0\.0\.1\s+4143\s+echo\s", quickstart, re.M), out
    assert "✓ all checks passed" in quickstart, out
    # The app serves no files: the admin token's path is just a path it echoes.
    token = (tmp_path / "gossamer-data" / "admin.token").read_text().strip()
    answer, _, listeners = probe.partition("--- listeners")
    assert '"path": "/gossamer-data/admin.token"' in answer, out
    assert token not in answer
    # Nothing the quickstart starts listens beyond 127.0.0.1.
    bound = [line.split()[3] for line in listeners.partition("--- stop")[0].split("\n") if line]
    assert bound and all(addr.startswith("127.0.0.1:") for addr in bound), listeners
