"""Which Service an HTTP authority (or a TCP destination name) means, the Kubernetes way."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gossamer.resources._names import is_dns1035_label, is_dns1123_label


@dataclass(frozen=True)
class ServiceRef:
    """A Service by name and namespace, and the port the caller asked for, if any."""

    name: str
    namespace: str
    port: int | None = None


def _split_port(authority: str) -> tuple[str, int | None] | None:
    host, colon, port = authority.rpartition(":")
    if not colon:
        return authority, None
    # More than one colon is an IPv6 literal, never a Service name.
    if ":" in host or not port.isascii() or not port.isdigit() or len(port) > 5:
        return None
    number = int(port)
    return (host, number) if 1 <= number <= 65535 else None


def resolve_authority(
    authority: str, client_namespace: str, cluster_domain: str = "cluster.local"
) -> ServiceRef | None:
    """The Service that `authority` names for a client in `client_namespace`, or None.

    The forms are those Kubernetes DNS answers: `echo` (the client's namespace),
    `echo.ns`, `echo.ns.svc` and `echo.ns.svc.<cluster_domain>`, case-insensitive, with
    an optional trailing dot and `:port`. IP literals, `localhost`, other domains and
    malformed ports give None. A ref is only a candidate: `example.com` reads as Service
    `example` in namespace `com`, as it would through a pod's DNS search path, so the
    caller must still find the Service before routing to it.
    """
    split = _split_port(authority)
    if split is None:
        return None
    host, port = split
    host = host.lower().removesuffix(".")
    if not host or host == "localhost" or "@" in host or _is_ip(host):
        return None
    labels = host.split(".")
    domain = cluster_domain.lower().strip(".").split(".")
    name, namespace = labels[0], client_namespace
    if len(labels) >= 2:
        namespace = labels[1]
    if len(labels) >= 3 and (labels[2] != "svc" or labels[3:] not in ([], domain)):
        return None
    if not is_dns1035_label(name) or not is_dns1123_label(namespace):
        return None
    return ServiceRef(name, namespace, port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
