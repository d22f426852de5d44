"""Per-host mode: one `gossamer host` process serves every workload on a host.

Each registered workload keeps its own data plane (listeners, certificate, control-plane
session), so authorization, metrics and tap see workloads, not hosts; the host proxy
obtains its workloads' certificates as the host, under node authorization
(gossamer.controlplane.hosts). See docs/per-host.md.
"""

from typing import Final

# Host identities are spiffe://<td>/ns/gossamer-hosts/sa/<host>, and Host objects live here.
HOSTS_NAMESPACE: Final = "gossamer-hosts"
# Where a host proxy asks for its workloads' certificates (gossamer.controlplane.hosts).
CERTIFICATES_PATH: Final = "/v1/hosts/certificates"


def renews_only_through(host: str) -> str:
    """Why a certificate issued through a host is refused anywhere but that host's route."""
    return (
        f"this certificate was issued through host {host!r}: it renews only there "
        f"(POST {CERTIFICATES_PATH}), while the host's Host object lists its identity"
    )
