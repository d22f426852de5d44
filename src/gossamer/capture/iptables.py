"""Install, remove and list the capture rules with the iptables commands (nat table).

iptables rather than nft: every Kubernetes node and CNI plugin speaks it, and on a
modern kernel `iptables` is iptables-nft anyway, so the rules land in nftables while
other tools (kube-proxy, Docker) still see and leave them alone
(docs/decisions/0060-transparent-capture.md).
"""

from __future__ import annotations

import shutil
import subprocess

from gossamer.capture.rules import JUMPS, CaptureError, CaptureSpec, restore_text

TABLE = "nat"


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise CaptureError(
            f"capture: {argv[0]} is not installed (Debian: apt-get install iptables)"
        )
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        hint = (
            " (capture needs root or CAP_NET_ADMIN in the workload's network namespace)"
            if "denied" in result.stderr.lower() or "not permitted" in result.stderr.lower()
            else ""
        )
        raise CaptureError(f"capture: {what} failed: {result.stderr.strip()}{hint}")


def install(spec: CaptureSpec) -> None:
    """Install (or replace) the rules for `spec`: idempotent, never stacks duplicates."""
    _check(_run(["iptables-restore", "--noflush"], restore_text(spec)), "iptables-restore")
    for builtin, chain, match in JUMPS:
        rule = [builtin, *match, "-j", chain]
        if _run(["iptables", "-t", TABLE, "-C", *rule]).returncode != 0:
            _check(
                _run(["iptables", "-t", TABLE, "-A", *rule]), f"adding the jump {builtin} → {chain}"
            )


def remove() -> bool:
    """Remove every capture rule and chain; True when there were any."""
    found = False
    for builtin, chain, match in JUMPS:
        rule = [builtin, *match, "-j", chain]
        for _ in range(100):  # each -D takes one copy, should a copy have been added by hand
            if _run(["iptables", "-t", TABLE, "-D", *rule]).returncode != 0:
                break
            found = True
    for _, chain, _ in JUMPS:
        if _run(["iptables", "-t", TABLE, "-F", chain]).returncode == 0:
            found = True
            _check(_run(["iptables", "-t", TABLE, "-X", chain]), f"deleting chain {chain}")
    return found


def listed() -> list[str]:
    """Gossamer's rules now in the nat table, as `iptables -S` prints them."""
    result = _run(["iptables", "-t", TABLE, "-S"])
    _check(result, "iptables -S")
    chains = {chain for _, chain, _ in JUMPS}
    return [
        line
        for line in result.stdout.splitlines()
        if any(chain in line.split() for chain in chains)
    ]
