"""What the inbound side needs of the data plane (see proxy.forward.plane)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gossamer.proxy.forward.plane import Plane

if TYPE_CHECKING:
    from gossamer.authz import Authorizer
    from gossamer.translate.snapshot import Snapshot


class InboundPlane(Plane, Protocol):
    """The common `Plane`, and what authorizes callers: the compiled policies of the
    current snapshot, the snapshot itself (mTLS mode, ports), and the refusal log."""

    @property
    def authorizer(self) -> Authorizer: ...
    @property
    def snapshot(self) -> Snapshot | None: ...
    def log_tcp_refusal(self, who: str, reason: str) -> None: ...
