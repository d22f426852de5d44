"""Pure translation from the store's contents to per-proxy snapshots."""

from typing import TYPE_CHECKING, Any

from gossamer._lazy import load_export

if TYPE_CHECKING:
    from gossamer.translate.build import (
        MeshView,
        ProxyInfo,
        build_snapshot,
    )
    from gossamer.translate.consistency import InconsistentSnapshot, check_consistent
    from gossamer.translate.snapshot import (
        Endpoint,
        LocalPort,
        ProxySelf,
        ServicePort,
        ServiceView,
        Snapshot,
    )

_EXPORTS = {
    "InconsistentSnapshot": "gossamer.translate.consistency",
    "MeshView": "gossamer.translate.build",
    "ProxyInfo": "gossamer.translate.build",
    "build_snapshot": "gossamer.translate.build",
    "check_consistent": "gossamer.translate.consistency",
    "Endpoint": "gossamer.translate.snapshot",
    "LocalPort": "gossamer.translate.snapshot",
    "ProxySelf": "gossamer.translate.snapshot",
    "ServicePort": "gossamer.translate.snapshot",
    "ServiceView": "gossamer.translate.snapshot",
    "Snapshot": "gossamer.translate.snapshot",
}

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


def __getattr__(name: str) -> Any:
    return load_export(__name__, _EXPORTS, name, globals())
