"""Pure translation from the store's contents to per-proxy snapshots."""

from gossamer.translate.build import (
    InconsistentSnapshot,
    MeshView,
    ProxyInfo,
    build_snapshot,
    check_consistent,
)
from gossamer.translate.snapshot import (
    Endpoint,
    LocalPort,
    ProxySelf,
    ServicePort,
    ServiceView,
    Snapshot,
)

__all__ = [
    "Endpoint",
    "InconsistentSnapshot",
    "LocalPort",
    "MeshView",
    "ProxyInfo",
    "ProxySelf",
    "ServicePort",
    "ServiceView",
    "Snapshot",
    "build_snapshot",
    "check_consistent",
]
