"""What transparent capture installs: the nat rules, as a pure function of a spec.

The rules live in chains of their own (GOSSAMER_INBOUND, GOSSAMER_OUTPUT) that the
built-in PREROUTING and OUTPUT chains jump to, once each. Installing again flushes and
refills those chains, so a second install replaces the first instead of stacking
duplicates (docs/decisions/0060-transparent-capture.md).

Order matters in GOSSAMER_OUTPUT: the proxy's own sockets leave first (else its
connections to peers would come back to its own outbound listener, a loop), then DNS
goes to the proxy's resolver, then loopback, the control plane and the operator's
exclusions leave, and every other TCP connection goes to the outbound listener.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from gossamer.errors import GossamerError

INBOUND_CHAIN = "GOSSAMER_INBOUND"
OUTPUT_CHAIN = "GOSSAMER_OUTPUT"
# The proxy's identity in Kubernetes pods, as Istio's (1337): the sidecar runs as this
# uid and `gossamer run --capture` starts its proxy with this gid.
DEFAULT_PROXY_ID = 1337


class CaptureError(GossamerError):
    """Capture cannot be set up as asked; the message says which setting and what to do."""


@dataclass(frozen=True)
class CaptureSpec:
    """One workload's capture. Ports are the proxy's listeners and the workload's own."""

    outbound_port: int
    inbound_port: int
    # The workload's ports: inbound TCP to these goes to the inbound listener.
    inbound_ports: tuple[int, ...] = ()
    # Sockets owned by this uid or gid are the proxy's and are never captured.
    proxy_uid: int | None = None
    proxy_gid: int | None = None
    # Outbound TCP to these ports or networks goes out as it is (the control plane's
    # address is always among the networks).
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()
    # Where the proxy answers DNS (UDP and TCP port 53 go there), or None.
    dns_port: int | None = None

    def check(self) -> None:
        """Raise CaptureError naming the field when the spec cannot work."""
        for name in ("outbound_port", "inbound_port", "dns_port"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 65536:
                raise CaptureError(f"capture.{name}: {value} is not a port (1-65535)")
        for name in ("inbound_ports", "exclude_outbound_ports"):
            for i, port in enumerate(getattr(self, name)):
                if not 0 < port < 65536:
                    raise CaptureError(f"capture.{name}[{i}]: {port} is not a port (1-65535)")
        if self.proxy_uid is None and self.proxy_gid is None:
            raise CaptureError(
                "capture: neither proxy_uid nor proxy_gid is set: the proxy's own "
                "connections would be captured and loop back to it; give the uid or gid "
                "the proxy runs as"
            )
        if self.inbound_port in self.inbound_ports:
            raise CaptureError(
                f"capture.inbound_ports: {self.inbound_port} is the inbound listener itself"
            )
        for i, cidr in enumerate(self.exclude_outbound_cidrs):
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise CaptureError(
                    f"capture.exclude_outbound_cidrs[{i}]: {cidr!r} is not an address or network"
                ) from None
            if net.version != 4:
                raise CaptureError(
                    f"capture.exclude_outbound_cidrs[{i}]: {cidr!r}: capture is IPv4 only"
                )


def chain_rules(spec: CaptureSpec) -> dict[str, list[list[str]]]:
    """The rules of each of Gossamer's chains, in order, as iptables arguments."""
    spec.check()
    output = _proxy_exclusions(spec.proxy_uid, spec.proxy_gid) + _output_rules(spec)
    return {INBOUND_CHAIN: _inbound_rules(spec), OUTPUT_CHAIN: output}


def _inbound_rules(spec: CaptureSpec) -> list[list[str]]:
    return [
        ["-p", "tcp", "--dport", str(port), "-j", "REDIRECT", "--to-ports", str(spec.inbound_port)]
        for port in sorted(set(spec.inbound_ports))
    ]


def _proxy_exclusions(uid: int | None, gid: int | None) -> list[list[str]]:
    """The proxy's own sockets leave first: else its connections would loop back to it."""
    output: list[list[str]] = []
    if uid is not None:
        output.append(["-m", "owner", "--uid-owner", str(uid), "-j", "RETURN"])
    if gid is not None:
        output.append(["-m", "owner", "--gid-owner", str(gid), "-j", "RETURN"])
    return output


def _output_rules(spec: CaptureSpec) -> list[list[str]]:
    """What becomes of the app's outbound traffic, past the proxy's exclusions."""
    output: list[list[str]] = []
    if spec.dns_port is not None:
        for proto in ("udp", "tcp"):
            output.append(
                ["-p", proto, "--dport", "53", "-j", "REDIRECT", "--to-ports", str(spec.dns_port)]
            )
    output.append(["-d", "127.0.0.0/8", "-j", "RETURN"])
    for cidr in sorted(
        {str(ipaddress.ip_network(c, strict=False)) for c in spec.exclude_outbound_cidrs}
    ):
        output.append(["-d", cidr, "-j", "RETURN"])
    for port in sorted(set(spec.exclude_outbound_ports)):
        output.append(["-p", "tcp", "--dport", str(port), "-j", "RETURN"])
    output.append(["-p", "tcp", "-j", "REDIRECT", "--to-ports", str(spec.outbound_port)])
    return output


# Where each of Gossamer's chains is entered from: (built-in chain, match arguments).
JUMPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("PREROUTING", INBOUND_CHAIN, ("-p", "tcp")),
    ("OUTPUT", OUTPUT_CHAIN, ()),
)


def restore_text(spec: CaptureSpec) -> str:
    """Input for `iptables-restore --noflush`: declaring a chain flushes it, so the
    same text installs or replaces Gossamer's chains in one transaction, leaving every
    other chain as it is. The jumps into them are added separately, only if missing."""
    return "\n".join(_table("nat", chain_rules(spec))) + "\n"


def _table(table: str, rules: dict[str, list[list[str]]]) -> list[str]:
    """One table's part of iptables-restore input: declare (so flush) each chain, fill it."""
    lines = [f"*{table}"]
    lines += [f":{chain} - [0:0]" for chain in rules]
    for chain, chain_rules_ in rules.items():
        lines += [" ".join(["-A", chain, *rule]) for rule in chain_rules_]
    lines.append("COMMIT")
    return lines


def command_flags(spec: CaptureSpec) -> list[str]:
    """`gossamer capture install` flags that install this spec: what Kubernetes
    injection puts in its init container, so both run the same code."""
    flags = ["--outbound-port", str(spec.outbound_port), "--inbound-port", str(spec.inbound_port)]
    for port in spec.inbound_ports:
        flags += ["--port", str(port)]
    if spec.proxy_uid is not None:
        flags += ["--proxy-uid", str(spec.proxy_uid)]
    if spec.proxy_gid is not None:
        flags += ["--proxy-gid", str(spec.proxy_gid)]
    for port in spec.exclude_outbound_ports:
        flags += ["--exclude-outbound-port", str(port)]
    for cidr in spec.exclude_outbound_cidrs:
        flags += ["--exclude-outbound-cidr", cidr]
    if spec.dns_port is not None:
        flags += ["--dns-port", str(spec.dns_port)]
    return flags


# ---- per uid, on a plain host (per-host mode: docs/decisions/0107) ----------------------
#
# One host proxy serves several workloads that share the host's network namespace, each
# running as a uid of its own. The nat chains are the sidecar's, but each workload's
# outbound rules are the sidecar's own behind an owner match on its uid, so its traffic
# goes to its own outbound listener: the port names the workload. A filter chain then
# refuses a connection to a workload's outbound listener from any other uid, so no
# workload can borrow another's identity by connecting to its port directly.

OWNER_CHAIN = "GOSSAMER_OWNER"
# The filter table's jump: (built-in chain, chain, match arguments).
OWNER_JUMP: tuple[str, str, tuple[str, ...]] = ("OUTPUT", OWNER_CHAIN, ())


@dataclass(frozen=True)
class UidCapture:
    """One workload on a plain host: the uid it runs as, and what its sidecar's capture
    would be (its listeners, its ports, DNS, exclusions; the proxy's ids are the host's)."""

    uid: int
    spec: CaptureSpec


@dataclass(frozen=True)
class HostCaptureSpec:
    """A host proxy's capture: every uid workload of the host's namespace."""

    workloads: tuple[UidCapture, ...]
    # The host proxy's own sockets (this uid or gid) are never captured.
    proxy_uid: int | None = None
    proxy_gid: int | None = None

    def check(self) -> None:
        """Raise CaptureError naming the workload and the field when it cannot work."""
        seen: dict[tuple[str, int], int] = {}
        for i, w in enumerate(self.workloads):
            where = f"capture.workloads[{i}] (uid {w.uid})"
            try:
                replace(w.spec, proxy_uid=self.proxy_uid, proxy_gid=self.proxy_gid).check()
            except CaptureError as err:
                raise CaptureError(f"{where}: {str(err).removeprefix('capture')}") from None
            if w.uid == self.proxy_uid:
                raise CaptureError(f"{where}: the uid is the host proxy's own")
            claims = [("uid", w.uid), ("outbound_port", w.spec.outbound_port)]
            claims += [("inbound_ports", p) for p in set(w.spec.inbound_ports)]
            for claim in claims:
                if claim in seen and seen[claim] != i:
                    raise CaptureError(
                        f"{where}: {claim[0]} {claim[1]} is capture.workloads[{seen[claim]}]'s too"
                    )
                seen[claim] = i


def host_chain_rules(spec: HostCaptureSpec) -> dict[str, dict[str, list[list[str]]]]:
    """The rules of each chain, by table, in order, as iptables arguments."""
    spec.check()
    inbound: list[list[str]] = []
    output = _proxy_exclusions(spec.proxy_uid, spec.proxy_gid)
    owners: list[list[str]] = []
    for w in sorted(spec.workloads, key=lambda w: w.uid):
        inbound += _inbound_rules(w.spec)
        owner = ["-m", "owner", "--uid-owner", str(w.uid)]
        output += [owner + rule for rule in _output_rules(w.spec)]
        owners.append(
            ["-o", "lo", "-p", "tcp", "--dport", str(w.spec.outbound_port), "--syn",
             "-m", "owner", "!", "--uid-owner", str(w.uid),
             "-j", "REJECT", "--reject-with", "tcp-reset"]
        )  # fmt: skip
        owners += _uid_udp_rules(w)

    return {
        "nat": {INBOUND_CHAIN: inbound, OUTPUT_CHAIN: output},
        "filter": {OWNER_CHAIN: owners},
    }


def _uid_udp_rules(w: UidCapture) -> list[list[str]]:
    """UDP is not carried by the mesh. The uid's DNS goes to its mesh DNS on loopback
    (nat OUTPUT's redirect, before this chain: its destination here is 127.0.0.1; not
    `-o lo`, as filter OUTPUT still sees the route chosen before the redirect), or, with
    no mesh DNS, to the host's resolver as it is; its excluded networks are reached as
    they are; any other datagram beyond loopback is refused, never sent uncaptured (as
    its IPv6: UID6_CHAIN)."""
    owner = ["-m", "owner", "--uid-owner", str(w.uid)]
    rules: list[list[str]] = []
    if w.spec.dns_port is None:
        rules.append(["-p", "udp", "--dport", "53", *owner, "-j", "RETURN"])
    for cidr in sorted(
        {str(ipaddress.ip_network(c, strict=False)) for c in w.spec.exclude_outbound_cidrs}
    ):
        rules.append(["-d", cidr, "-p", "udp", *owner, "-j", "RETURN"])
    rules.append(["!", "-d", "127.0.0.0/8", "-p", "udp", *owner, "-j", "REJECT"])
    return rules


def host_restore_text(spec: HostCaptureSpec) -> str:
    """Input for `iptables-restore --noflush`: both tables' chains replaced at once."""
    return _restore_text(host_chain_rules(spec))


# The mesh captures IPv4 only. A uid workload's IPv6 beyond loopback is refused, so that
# its connections are never sent uncaptured (decision 0107), also while no host proxy
# runs: a chain of ip6tables' filter table, jumped to from OUTPUT.
UID6_CHAIN = "GOSSAMER_UID6"
UID6_JUMP: tuple[str, str, tuple[str, ...]] = ("OUTPUT", UID6_CHAIN, ())


def host_ipv6_rules(spec: HostCaptureSpec) -> dict[str, dict[str, list[list[str]]]]:
    """ip6tables' rules: each uid workload's IPv6 but loopback refused (TCP with a reset,
    the rest with ICMPv6 port unreachable)."""
    spec.check()
    rules: list[list[str]] = []
    for w in sorted(spec.workloads, key=lambda w: w.uid):
        owner = ["!", "-o", "lo", "-m", "owner", "--uid-owner", str(w.uid)]
        rules.append([*owner, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"])
        rules.append([*owner, "-j", "REJECT"])
    return {"filter": {UID6_CHAIN: rules}}


def host_restore_text6(spec: HostCaptureSpec) -> str:
    """Input for `ip6tables-restore --noflush`."""
    return _restore_text(host_ipv6_rules(spec))


def _restore_text(tables: dict[str, dict[str, list[list[str]]]]) -> str:
    lines: list[str] = []
    for table, rules in tables.items():
        lines += _table(table, rules)
    return "\n".join(lines) + "\n"
