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


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise CaptureError(
            f"capture: {argv[0]} is not installed (Debian: apt-get install iptables)"
        )
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)


def check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        hint = (
            " (capture needs root or CAP_NET_ADMIN in the workload's network namespace)"
            if "denied" in result.stderr.lower() or "not permitted" in result.stderr.lower()
            else ""
        )
        raise CaptureError(f"capture: {what} failed: {result.stderr.strip()}{hint}")


# A jump from a built-in chain to one of ours: (table, built-in chain, our chain, match).
Jump = tuple[str, str, str, tuple[str, ...]]
_NAT_JUMPS: list[Jump] = [(TABLE, *jump) for jump in JUMPS]


def restore(text: str, command: str = "iptables") -> None:
    """Replace our chains with `text` (`COMMAND-restore --noflush` input: declaring a
    chain flushes it), one transaction per table."""
    check(run([f"{command}-restore", "--noflush"], text), f"{command}-restore")


def add_jumps(jumps: list[Jump], command: str = "iptables") -> None:
    """Add each jump unless it is there already: idempotent, never stacks duplicates."""
    for table, builtin, chain, match in jumps:
        rule = [builtin, *match, "-j", chain]
        if run([command, "-t", table, "-C", *rule]).returncode != 0:
            check(
                run([command, "-t", table, "-A", *rule]),
                f"adding the jump {table} {builtin} → {chain}",
            )


def remove_jumps(jumps: list[Jump], command: str = "iptables") -> bool:
    """Remove each jump (every copy of it) and then our chains; True when there were any."""
    found = False
    for table, builtin, chain, match in jumps:
        rule = [builtin, *match, "-j", chain]
        for _ in range(100):  # each -D takes one copy, should a copy have been added by hand
            if run([command, "-t", table, "-D", *rule]).returncode != 0:
                break
            found = True
    for table, _, chain, _ in jumps:
        if run([command, "-t", table, "-F", chain]).returncode == 0:
            found = True
            check(run([command, "-t", table, "-X", chain]), f"deleting chain {chain}")
    return found


def install(spec: CaptureSpec) -> None:
    """Install (or replace) the rules for `spec`: idempotent, never stacks duplicates."""
    restore(restore_text(spec))
    add_jumps(_NAT_JUMPS)


def remove() -> bool:
    """Remove every capture rule and chain (nat table); True when there were any."""
    return remove_jumps(_NAT_JUMPS)


def listed() -> list[str]:
    """Gossamer's rules now in the nat table, as `iptables -S` prints them."""
    result = run(["iptables", "-t", TABLE, "-S"])
    check(result, "iptables -S")
    chains = {chain for _, chain, _ in JUMPS}
    return [
        line
        for line in result.stdout.splitlines()
        if any(chain in line.split() for chain in chains)
    ]
