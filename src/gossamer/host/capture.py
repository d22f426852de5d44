"""Capture per uid on a plain host: install and remove the host proxy's rules.

The rules are gossamer.capture.rules' (`host_restore_text`): the sidecar's nat chains,
each workload's outbound rules behind an owner match on its uid, and a filter chain
that lets only that uid connect to the workload's outbound listener
(docs/decisions/0107). They follow the host config file: installed with its uid
workloads, replaced at each reload, and left in place when the host proxy stops or
dies, so that a workload's traffic is refused, never sent uncaptured, while no host
proxy serves it. `gossamer host --remove-capture` (or `gossamer capture remove` for
the nat part) takes them away.
"""

from __future__ import annotations

from gossamer.capture import iptables
from gossamer.capture.rules import JUMPS, OWNER_JUMP, HostCaptureSpec, host_restore_text

_JUMPS = [("nat", *jump) for jump in JUMPS] + [("filter", *OWNER_JUMP)]


def install(spec: HostCaptureSpec) -> None:
    """Install (or replace, in one transaction per table) the rules for `spec`."""
    text = host_restore_text(spec)
    iptables._check(iptables._run(["iptables-restore", "--noflush"], text), "iptables-restore")
    for table, builtin, chain, match in _JUMPS:
        rule = [builtin, *match, "-j", chain]
        if iptables._run(["iptables", "-t", table, "-C", *rule]).returncode != 0:
            iptables._check(
                iptables._run(["iptables", "-t", table, "-A", *rule]),
                f"adding the jump {table} {builtin} → {chain}",
            )


def remove() -> bool:
    """Remove the host's rules (both tables); True when there were any."""
    found = iptables.remove()
    _, builtin, chain, match = _JUMPS[-1]
    for _ in range(100):  # each -D takes one copy, should a copy have been added by hand
        if iptables._run(
            ["iptables", "-t", "filter", "-D", builtin, *match, "-j", chain]
        ).returncode:
            break
        found = True
    if iptables._run(["iptables", "-t", "filter", "-F", chain]).returncode == 0:
        found = True
        iptables._check(
            iptables._run(["iptables", "-t", "filter", "-X", chain]), f"deleting chain {chain}"
        )
    return found
