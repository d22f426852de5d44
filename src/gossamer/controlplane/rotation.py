"""CA rotation as a non-event: trust first, then switch, then renew, then forget.

A root rotation goes through these phases (gossamer.identity.rotation names them):

1. **distributing**: the new root is added to the trust bundle. Every snapshot carries
   the bundle, so discovery pushes it to every proxy; a proxy rebuilds its TLS contexts
   and then acks. The control plane's own listener trusts both roots too.
2. **renewing**, once every connected proxy has acked a snapshot holding the new root:
   the CA signs with the new intermediate, join tokens pin the new root, the control
   plane's own certificate is reissued, and every proxy is told to renew now (a
   `renew` message on its stream). Each reports the issuer of its new certificate in
   a `status` message.
3. **overlap**, once every connected proxy serves a certificate from the new
   intermediate: both roots stay trusted for the overlap window (default: the leaf
   lifetime, so no certificate under the old root can still be valid after it), for
   proxies that were away and come back.
4. **done**: the old roots leave the bundle, pushed the same way.

An intermediate rotation (a new intermediate under a root already trusted) starts at
*renewing* and is done when every proxy has renewed: the bundle never changes, so both
intermediates' leaves verify throughout.

At no point does a proxy meet a certificate it cannot verify, which is why there is no
failed request (tests/e2e/test_rotation.py counts them). The state is kept in
``ca_dir/rotation.json`` and the staged CA in ``ca_dir/next/``, so a restarted control
plane carries on. See docs/decisions/0022-ca-rotation.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from gossamer.controlplane.api import read_json
from gossamer.controlplane.auth import require_admin
from gossamer.errors import Conflict, FieldError, IdentityError, InvalidResource
from gossamer.identity.bundle import certificate_fingerprint, load_bundle
from gossamer.identity.ca import StagedIssuer
from gossamer.identity.rotation import (
    DISTRIBUTING,
    DONE,
    OVERLAP,
    RENEWING,
    RotationState,
    discard_staged,
    load_staged,
    load_state,
    save_staged,
    save_state,
)

if TYPE_CHECKING:
    from gossamer.controlplane.discovery import ProxySession
    from gossamer.controlplane.server import ControlPlane

log = logging.getLogger("gossamer.controlplane.rotation")

TICK: Final = 0.2
# A proxy told to renew that has not is told again after this long.
RENEW_AGAIN_AFTER: Final = 15.0


@dataclass(frozen=True)
class OperatorFiles:
    """Bring-your-own CA material for a rotation: paths on the control plane's host."""

    intermediate_cert: Path
    intermediate_key: Path
    root_cert: Path | None = None


@functools.lru_cache(maxsize=16)
def _bundle_roots(bundle_pem: str) -> frozenset[str]:
    try:
        return frozenset(certificate_fingerprint(c) for c in load_bundle(bundle_pem))
    except IdentityError:
        return frozenset()


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class RotationController:
    """Drives one rotation at a time through its phases; see the module docstring."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.state: RotationState | None = load_state(cp.ca.ca_dir)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.state is not None and self.state.active:
            log.info("resuming the %s rotation in phase %s", self.state.kind, self.state.phase)
            self._run_in_background()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _run_in_background(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ca-rotation")

    # ---- starting one --------------------------------------------------------------------

    def begin(
        self,
        kind: str,
        overlap: timedelta | None = None,
        operator: OperatorFiles | None = None,
        actor: str = "admin",
    ) -> RotationState:
        """Start rotating the root or the intermediate; Conflict if one is under way."""
        replicas = getattr(self.cp, "replicas", None)
        if replicas is not None and replicas.shared:
            # The CA's files are each replica's own copy (decision 0052): a rotation
            # on one would leave the others signing with the old intermediate.
            raise Conflict(
                "CA rotation is not supported while replicas share the store: stop all "
                "but one replica, rotate, copy DATA_DIR/ca to the others, start them again"
            )
        if self.state is not None and self.state.active:
            raise Conflict(
                f"a {self.state.kind} rotation is already under way (phase "
                f"{self.state.phase}, since {self.state.phase_since}); wait for it to finish"
            )
        ca = self.cp.ca
        staged = self._stage(kind, operator)
        new_roots = ca.untrusted(staged.roots)
        if kind == "root" and not new_roots:
            raise IdentityError(
                "the root certificate file holds no root that is not trusted already; for a "
                "new intermediate under a trusted root use `gossamer ca rotate intermediate`"
            )
        if kind == "intermediate" and new_roots:
            raise IdentityError(
                "the root certificate file adds a root to the trust bundle: that is a root "
                "rotation, use `gossamer ca rotate root`"
            )
        staged_fps = {certificate_fingerprint(r) for r in staged.roots}
        old_roots = (
            tuple(
                fp for fp in (certificate_fingerprint(r) for r in ca.roots) if fp not in staged_fps
            )
            if kind == "root"
            else ()
        )
        if overlap is None:
            overlap = self.cp.config.certificate_ttl
        at = _now().isoformat()
        state = RotationState(
            kind=kind,
            phase=DISTRIBUTING,
            started_at=at,
            overlap_seconds=overlap.total_seconds(),
            new_issuer=staged.fingerprint(),
            new_roots=tuple(certificate_fingerprint(r) for r in new_roots),
            old_roots=old_roots,
            operator=operator is not None,
            phase_since=at,
            history=((DISTRIBUTING, at),),
        )
        save_staged(ca.ca_dir, staged)
        if new_roots:
            ca.add_roots(new_roots)
            self.cp.discovery.trust_bundle_changed()
            self.cp.refresh_tls()
            self._set(state)
        else:
            self._set(state)
            self._switch(staged)
        self._audit(
            "ca.rotate.start",
            {"kind": kind, "newIssuer": state.new_issuer, "newRoots": list(state.new_roots)},
            actor,
        )
        log.info(
            "%s rotation started: new intermediate %s%s",
            kind,
            state.new_issuer[:16],
            f", new root {state.new_roots[0][:16]} added to the trust bundle"
            if state.new_roots
            else "",
        )
        self._run_in_background()
        return self.state or state

    def _stage(self, kind: str, operator: OperatorFiles | None) -> StagedIssuer:
        ca = self.cp.ca
        if operator is not None:
            if kind == "root" and operator.root_cert is None:
                raise InvalidResource(
                    [FieldError("rootCert", "required to rotate the root with your own CA")],
                    subject="rotation",
                )
            return ca.staged_from_operator_files(
                operator.root_cert, operator.intermediate_cert, operator.intermediate_key
            )
        if kind == "root":
            if not ca.has_root_key:
                raise IdentityError(
                    "the root key is kept offline, so the control plane cannot make a root; "
                    "rotate with your own: --root-cert, --intermediate-cert, "
                    "--intermediate-key"
                )
            return ca.new_root()
        return ca.new_intermediate()

    # ---- the phases ----------------------------------------------------------------------

    def _set(self, state: RotationState) -> None:
        self.state = state
        save_state(self.cp.ca.ca_dir, state)
        self._wake.set()

    def _advance(self, phase: str, **changes: Any) -> None:
        assert self.state is not None
        self._set(self.state.advance(phase, _now().isoformat(), **changes))
        log.info("%s rotation: %s", self.state.kind, phase)
        self._audit(f"ca.rotate.{phase}", {"kind": self.state.kind})

    def _switch(self, staged: StagedIssuer) -> None:
        """Sign with the new intermediate from now on; tell every proxy to renew."""
        ca = self.cp.ca
        if ca.issuer_fingerprint() != staged.fingerprint():
            ca.activate(staged)
        discard_staged(ca.ca_dir)
        self.cp.tokens.repin(ca.root_fingerprint())
        self.cp.refresh_tls()
        for session in self.cp.discovery.sessions():
            session.renew_requested_at = 0.0  # asked for an earlier rotation, if at all
        self._advance(RENEWING)

    async def _run(self) -> None:
        while self.state is not None and self.state.active:
            try:
                await self._step()
            except Exception:
                log.exception("CA rotation step failed; trying again")
                await asyncio.sleep(1.0)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)

    async def _step(self) -> None:
        state = self.state
        assert state is not None
        sessions = self.cp.discovery.sessions()
        if state.phase == DISTRIBUTING:
            if all(self._has_new_roots(s) for s in sessions):
                staged = load_staged(self.cp.ca.ca_dir)
                if staged is None:
                    if self.cp.ca.ca_dir is not None:
                        raise IdentityError("the staged CA in ca/next/ is missing or unreadable")
                    return
                self._switch(staged)
        elif state.phase == RENEWING:
            behind = [s for s in sessions if not self._on_new_chain(s)]
            now = time.time()
            for s in behind:
                if now - s.renew_requested_at > RENEW_AGAIN_AFTER:
                    await self.cp.discovery.request_renewal(s, f"{state.kind} rotation")
            if not behind:
                if state.old_roots:
                    ends = _now() + timedelta(seconds=state.overlap_seconds)
                    self._advance(OVERLAP, overlap_ends_at=ends.isoformat())
                else:
                    self._advance(DONE)
        elif state.phase == OVERLAP and _now() >= datetime.fromisoformat(state.overlap_ends_at):
            self.cp.ca.remove_roots(state.old_roots)
            self.cp.discovery.trust_bundle_changed()
            self.cp.refresh_tls()
            self._advance(DONE)

    def _has_new_roots(self, session: ProxySession) -> bool:
        assert self.state is not None
        return set(self.state.new_roots) <= _bundle_roots(session.acked_bundle)

    def _on_new_chain(self, session: ProxySession) -> bool:
        assert self.state is not None
        return session.issuer_fingerprint == self.state.new_issuer

    def _audit(self, action: str, detail: dict[str, Any], actor: str = "control-plane") -> None:
        self.cp.audit.record(actor, action, kind="CertificateAuthority", name="ca", detail=detail)

    # ---- what the API shows --------------------------------------------------------------

    def progress(self) -> dict[str, Any] | None:
        state = self.state
        if state is None:
            return None
        sessions = sorted(self.cp.discovery.sessions(), key=lambda s: (s.namespace, s.workload))
        proxies = []
        for s in sessions:
            proxies.append(
                {
                    "namespace": s.namespace,
                    "workload": s.workload,
                    "hasNewRoots": self._has_new_roots(s),
                    "onNewChain": self._on_new_chain(s),
                    "issuerFingerprint": s.issuer_fingerprint,
                }
            )
        return {
            "kind": state.kind,
            "phase": state.phase,
            "active": state.active,
            "startedAt": state.started_at,
            "phaseSince": state.phase_since,
            "overlapSeconds": state.overlap_seconds,
            "overlapEndsAt": state.overlap_ends_at or None,
            "finishedAt": state.finished_at or None,
            "newIssuerFingerprint": state.new_issuer,
            "newRootFingerprints": list(state.new_roots),
            "oldRootFingerprints": list(state.old_roots),
            "operator": state.operator,
            "history": [{"phase": p, "at": at} for p, at in state.history],
            "proxies": {
                "connected": len(proxies),
                "withNewRoots": sum(p["hasNewRoots"] for p in proxies),
                "onNewChain": sum(p["onNewChain"] for p in proxies),
                "items": proxies,
            },
        }

    # ---- REST ------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/ca/rotation", self.get),
            web.post("/v1/ca/rotation", self.post),
        ]

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response({"rotation": self.progress()})

    async def post(self, request: web.Request) -> web.Response:
        """Start a rotation: `{"kind": "root"|"intermediate", "overlapSeconds": N,
        "rootCert", "intermediateCert", "intermediateKey": paths on this host}`."""
        actor = require_admin(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidResource([FieldError("", "body must be a JSON object")], "rotation")
        kind, overlap = body.get("kind"), body.get("overlapSeconds")
        errors = []
        if kind not in ("root", "intermediate"):
            errors.append(FieldError("kind", 'must be "root" or "intermediate"'))
        if overlap is not None and (
            not isinstance(overlap, int | float) or isinstance(overlap, bool) or overlap < 0
        ):
            errors.append(FieldError("overlapSeconds", "must be a number of seconds, 0 or more"))
        paths = {k: body.get(k) for k in ("rootCert", "intermediateCert", "intermediateKey")}
        for name, value in paths.items():
            if value is not None and (not isinstance(value, str) or not value):
                errors.append(FieldError(name, "must be a path on the control plane's host"))
        given = {k for k, v in paths.items() if v}
        if given and not {"intermediateCert", "intermediateKey"} <= given:
            errors.append(
                FieldError("intermediateCert", "give intermediateCert and intermediateKey together")
            )
        if errors:
            raise InvalidResource(errors, subject="rotation")
        operator = None
        if given:
            root = paths["rootCert"]
            operator = OperatorFiles(
                Path(str(paths["intermediateCert"])),
                Path(str(paths["intermediateKey"])),
                Path(root) if isinstance(root, str) and root else None,
            )
        self.begin(
            str(kind),
            timedelta(seconds=float(overlap)) if overlap is not None else None,
            operator,
            actor=actor,
        )
        return web.json_response({"rotation": self.progress()}, status=202)
