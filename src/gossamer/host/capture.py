"""Capture per uid on a plain host: install and remove the host proxy's rules.

The rules are gossamer.capture.rules' (`host_restore_text`): the sidecar's nat chains,
each workload's outbound rules behind an owner match on its uid, and a filter chain
that lets only that uid connect to the workload's outbound listener
(docs/decisions/0107); and, in ip6tables, each uid's IPv6 beyond loopback refused (the
mesh captures IPv4 only: nothing leaves uncaptured). They follow the host config file:
installed with its uid workloads, replaced at each reload, and left in place when the
host proxy stops or dies, so that a workload's traffic is refused, never sent
uncaptured, while no host proxy serves it. `gossamer host --remove-capture` (or
`gossamer capture remove` for the nat part) takes them away.
"""

from __future__ import annotations

import os

from gossamer.capture import iptables
from gossamer.capture.rules import (
    JUMPS,
    OWNER_JUMP,
    UID6_JUMP,
    HostCaptureSpec,
    host_restore_text,
    host_restore_text6,
)

_JUMPS: list[iptables.Jump] = [("nat", *jump) for jump in JUMPS] + [("filter", *OWNER_JUMP)]
_JUMPS6: list[iptables.Jump] = [("filter", *UID6_JUMP)]


def _has_ipv6() -> bool:
    """Whether this network namespace has IPv6 at all (else there is nothing to refuse)."""
    return os.path.exists("/proc/net/if_inet6")


def install(spec: HostCaptureSpec) -> None:
    """Install (or replace, in one transaction per table) the rules for `spec`: IPv4
    captured, and IPv6 beyond loopback refused where the namespace has IPv6."""
    iptables.restore(host_restore_text(spec))
    iptables.add_jumps(_JUMPS)
    if _has_ipv6():
        iptables.restore(host_restore_text6(spec), "ip6tables")
        iptables.add_jumps(_JUMPS6, "ip6tables")


def remove() -> bool:
    """Remove the host's rules (both tables, both families); True when there were any."""
    found = iptables.remove_jumps(_JUMPS)
    if _has_ipv6():
        found = iptables.remove_jumps(_JUMPS6, "ip6tables") or found
    return found
