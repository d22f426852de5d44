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
from dataclasses import dataclass

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
    inbound: list[list[str]] = [
        ["-p", "tcp", "--dport", str(port), "-j", "REDIRECT", "--to-ports", str(spec.inbound_port)]
        for port in sorted(set(spec.inbound_ports))
    ]
    output: list[list[str]] = []
    if spec.proxy_uid is not None:
        output.append(["-m", "owner", "--uid-owner", str(spec.proxy_uid), "-j", "RETURN"])
    if spec.proxy_gid is not None:
        output.append(["-m", "owner", "--gid-owner", str(spec.proxy_gid), "-j", "RETURN"])
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
    return {INBOUND_CHAIN: inbound, OUTPUT_CHAIN: output}


# Where each of Gossamer's chains is entered from: (built-in chain, match arguments).
JUMPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("PREROUTING", INBOUND_CHAIN, ("-p", "tcp")),
    ("OUTPUT", OUTPUT_CHAIN, ()),
)


def restore_text(spec: CaptureSpec) -> str:
    """Input for `iptables-restore --noflush`: declaring a chain flushes it, so the
    same text installs or replaces Gossamer's chains in one transaction, leaving every
    other chain as it is. The jumps into them are added separately, only if missing."""
    lines = ["*nat"]
    rules = chain_rules(spec)
    lines += [f":{chain} - [0:0]" for chain in rules]
    for chain, chain_rules_ in rules.items():
        lines += [" ".join(["-A", chain, *rule]) for rule in chain_rules_]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


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
