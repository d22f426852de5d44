"""Which DNS names are mesh services, and each service's virtual IP.

A service's virtual IP is a pure function of its name, namespace and the mesh's
range (docs/decisions/0061-mesh-dns-and-virtual-ips.md): every proxy computes the same
address with no state to share. Two services may share an address; HTTP and gRPC are
routed by Host and :authority, never by the address, so that costs nothing there.
"""

from __future__ import annotations

import hashlib
import ipaddress

# What Istio's DNS proxy allocates from when a service has no address of its own.
DEFAULT_SERVICE_CIDR = "240.240.0.0/16"
# NAME.NS.svc.<cluster domain>, as Kubernetes; and NAME.NS.<mesh suffix>.
MESH_SUFFIX = "mesh"


def virtual_ip(name: str, namespace: str, cidr: ipaddress.IPv4Network) -> str:
    """The service's address in `cidr`: never the network or broadcast address."""
    usable = max(cidr.num_addresses - 2, 1)
    digest = hashlib.sha256(f"{name}.{namespace}".encode()).digest()
    offset = int.from_bytes(digest[:8], "big") % usable + (1 if cidr.num_addresses > 2 else 0)
    return str(cidr.network_address + offset)


def mesh_name(
    qname: str, own_namespace: str, cluster_domain: str = "cluster.local"
) -> tuple[str, str] | None:
    """(name, namespace) that `qname` means in the mesh, or None when it cannot be a
    service: `NAME` (in the asker's namespace), `NAME.NS`, `NAME.NS.svc`,
    `NAME.NS.svc.<cluster domain>` and `NAME.NS.mesh`."""
    labels = qname.lower().rstrip(".").split(".")
    for suffix in (f"svc.{cluster_domain}", "svc", MESH_SUFFIX):
        tail = suffix.split(".")
        if len(labels) == 2 + len(tail) and labels[2:] == tail:
            return labels[0], labels[1]
    if len(labels) == 1 and labels[0]:
        return labels[0], own_namespace
    if len(labels) == 2 and all(labels):
        return labels[0], labels[1]
    return None
