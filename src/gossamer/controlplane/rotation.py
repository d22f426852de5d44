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

Replicas sharing a store (decision 0054) keep the CA and the rotation in one record of
the system store (gossamer.controlplane.sharedca) instead, and every step is a
compare-and-swap on it: any replica may start a rotation; only the leader moves it from
phase to phase, once every live replica reports all of its own proxies ready (each
writes its progress); every replica adopts each step from the store, so all serve the
same bundle and sign with the same intermediate; a new leader carries on from the
stored phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from cryptography import x509

from gossamer.controlplane.api import read_json
from gossamer.controlplane.auth import require_admin
from gossamer.controlplane.sharedca import CaRecord, SharedCA, record_of
from gossamer.errors import Conflict, FieldError, IdentityError, InvalidResource, StoreError
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
from gossamer.identity.sealing import KeySealer
from gossamer.identity.tokens import load_or_create_token_key

if TYPE_CHECKING:
    from gossamer.controlplane.discovery import ProxySession
    from gossamer.controlplane.server import ControlPlane

log = logging.getLogger("gossamer.controlplane.rotation")

TICK: Final = 0.2
# Replicas sharing the store read the shared CA this often (and write their progress).
SHARED_TICK: Final = 0.5
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
        # Replicas sharing a store: the shared CA, as last adopted, and every replica's
        # progress in the current rotation as last read.
        self.shared: SharedCA | None = None
        self._adopted: CaRecord | None = None
        self._progress: dict[str, dict[str, Any]] = {}
        self._alive: set[str] = set()
        self._my_progress: dict[str, Any] = {}
        self._progress_at = 0.0
        ca_dir = cp.ca.ca_dir
        if getattr(cp, "system_store", None) is not None and ca_dir is not None:
            sealer = KeySealer(load_or_create_token_key(ca_dir / "token.key"))
            self.shared = SharedCA(cp.system_store, sealer)  # type: ignore[arg-type]

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.shared is not None:
            # The first replica publishes its CA (and any rotation it had under way on
            # its own); the others adopt what is there.
            mine = record_of(self.cp.ca, load_staged(self.cp.ca.ca_dir), self.state)
            await self._adopt(await self.cp.astore.run(self.shared.publish_first, mine))
            self._run_in_background()  # follows the shared CA for as long as it runs
            return
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

    async def begin(
        self,
        kind: str,
        overlap: timedelta | None = None,
        operator: OperatorFiles | None = None,
        actor: str = "admin",
    ) -> RotationState:
        """Start rotating the root or the intermediate; Conflict if one is under way."""
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
        if self.shared is not None:
            await self._begin_shared(state, staged, new_roots)
        else:
            self._begin_here(state, staged, new_roots)
        await self._audit(
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

    def _begin_here(
        self, state: RotationState, staged: StagedIssuer, new_roots: list[x509.Certificate]
    ) -> None:
        ca = self.cp.ca
        save_staged(ca.ca_dir, staged)
        if new_roots:
            ca.add_roots(new_roots)
            self.cp.discovery.trust_bundle_changed()
            self.cp.refresh_tls()
            self._set(state)
        else:
            self._set(state)
            self._switch_here(staged)

    async def _begin_shared(
        self, state: RotationState, staged: StagedIssuer, new_roots: list[x509.Certificate]
    ) -> None:
        """One compare-and-swap on the shared CA: the new roots trusted and the issuer
        staged (or, adding no root, switched to at once)."""
        assert self.shared is not None
        shared = self.shared

        def begin(current: CaRecord) -> CaRecord:
            if current.rotation is not None and current.rotation.active:
                raise Conflict(
                    f"a {current.rotation.kind} rotation is already under way (phase "
                    f"{current.rotation.phase}, since {current.rotation.phase_since}); "
                    "wait for it to finish"
                )
            with_roots = replace(current, roots=(*current.roots, *new_roots), staged=staged)
            if new_roots:
                return replace(with_roots, rotation=state)
            return with_roots.switched(state.advance(RENEWING, state.started_at))

        def write() -> CaRecord:
            current = shared.read()
            if current is None:
                raise Conflict("the shared CA is not published yet: try again")
            return shared.write(replace(begin(current), version=current.version))

        await self._adopt(await self.cp.astore.run(write))

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

    async def _advance(self, phase: str, **changes: Any) -> None:
        assert self.state is not None
        advanced = self.state.advance(phase, _now().isoformat(), **changes)
        if self.shared is not None:
            await self._commit(lambda current: replace(current, rotation=advanced))
        else:
            self._set(advanced)
        log.info("%s rotation: %s", advanced.kind, phase)
        await self._audit(f"ca.rotate.{phase}", {"kind": advanced.kind})

    def _switch_here(self, staged: StagedIssuer) -> None:
        """Sign with the new intermediate from now on; tell every proxy to renew."""
        ca = self.cp.ca
        if ca.issuer_fingerprint() != staged.fingerprint():
            ca.activate(staged)
        discard_staged(ca.ca_dir)
        self._issuer_switched()
        assert self.state is not None
        self._set(self.state.advance(RENEWING, _now().isoformat()))
        log.info("%s rotation: %s", self.state.kind, RENEWING)

    def _issuer_switched(self) -> None:
        self.cp.tokens.repin(self.cp.ca.root_fingerprint())
        self.cp.refresh_tls()
        for session in self.cp.discovery.sessions():
            session.renew_requested_at = 0.0  # asked for an earlier rotation, if at all

    # ---- the shared CA (replicas sharing a store) -----------------------------------------

    async def _commit(self, change: Callable[[CaRecord], CaRecord]) -> None:
        """Apply `change` to the shared CA as this replica last adopted it, by
        compare-and-swap, and adopt the result; Conflict if it moved meanwhile (the next
        round adopts what is there and decides again)."""
        assert self.shared is not None and self._adopted is not None
        shared, adopted = self.shared, self._adopted

        def write() -> CaRecord:
            return shared.write(replace(change(adopted), version=adopted.version))

        await self._adopt(await self.cp.astore.run(write))

    async def _adopt(self, record: CaRecord) -> None:
        """Become the shared CA `record` describes: its roots, its issuer, its rotation."""
        ca = self.cp.ca
        roots, cert, _, root_key = ca.material()
        roots_changed = record.root_fingerprints != tuple(certificate_fingerprint(r) for r in roots)
        issuer_changed = record.issuer_fingerprint != certificate_fingerprint(cert)
        if roots_changed or issuer_changed or (record.root_key is None) != (root_key is None):
            ca.replace(record.roots, record.issuer_cert, record.issuer_key, record.root_key)
        if roots_changed:
            self.cp.discovery.trust_bundle_changed()
        if issuer_changed:
            self._issuer_switched()
        elif roots_changed:
            self.cp.refresh_tls()
        if record.staged is not None:
            save_staged(ca.ca_dir, record.staged)
        else:
            discard_staged(ca.ca_dir)
        if record.rotation != self.state:
            if record.rotation is not None and (
                self.state is None or record.rotation.phase != self.state.phase
            ):
                log.info(
                    "%s rotation: %s (shared CA %s)",
                    record.rotation.kind,
                    record.rotation.phase,
                    record.version,
                )
            self.state = record.rotation
            if record.rotation is not None:
                save_state(ca.ca_dir, record.rotation)
        self._adopted = record
        self._wake.set()

    async def _follow(self) -> None:
        """One round on a shared store: adopt the shared CA if it changed; read every
        replica's progress; write this replica's."""
        assert self.shared is not None
        shared, replicas = self.shared, self.cp.replicas
        mine = self._local_progress()
        now = time.time()
        write_mine = bool(mine) and (mine != self._my_progress or now - self._progress_at > 2.0)

        def read() -> tuple[CaRecord | None, dict[str, dict[str, Any]], set[str]]:
            if write_mine:
                shared.write_progress(replicas.replica_id, mine)
            alive = {r["name"] for r in replicas.rows() if r.get("alive")}
            return shared.read(), shared.progress(), alive

        record, progress, alive = await self.cp.astore.run(read)
        if write_mine:
            self._my_progress, self._progress_at = mine, now
        self._progress, self._alive = progress, alive
        if record is not None and (
            self._adopted is None or record.version != self._adopted.version
        ):
            await self._adopt(record)

    def _local_progress(self) -> dict[str, Any]:
        """This replica's proxies in the current rotation's phase (empty when none is
        under way)."""
        state = self.state
        if state is None or not state.active:
            return {}
        sessions = self.cp.discovery.sessions()
        return {
            "rotation": state.started_at,
            "phase": state.phase,
            "phaseSince": state.phase_since,
            "connected": len(sessions),
            "withNewRoots": sum(self._has_new_roots(s) for s in sessions),
            "onNewChain": sum(self._on_new_chain(s) for s in sessions),
        }

    def _everywhere(self, field: str, mine: bool) -> bool:
        """`mine` (this replica's proxies are all there), and every other live replica's
        progress says the same of its own, for this rotation's current phase."""
        if not mine:
            return False
        if self.shared is None:
            return True
        state = self.state
        assert state is not None
        me = self.cp.replicas.replica_id
        now = time.time()
        for name in self._alive - {me}:
            p = self._progress.get(name)
            if (
                p is None
                or (p.get("rotation"), p.get("phase"), p.get("phaseSince"))
                != (state.started_at, state.phase, state.phase_since)
                or now - float(p.get("at", 0)) > self.cp.replicas.lease
                or p.get(field) != p.get("connected")
            ):
                return False
        return True

    async def _run(self) -> None:
        while self.shared is not None or (self.state is not None and self.state.active):
            try:
                if self.shared is not None:
                    await self._follow()
                if self.state is not None and self.state.active:
                    await self._step()
            except (Conflict, StoreError) as err:
                # Another replica moved the shared CA, or the store is away: the next
                # round adopts what is there and decides again.
                log.info("CA rotation: %s; trying again", err)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("CA rotation step failed; trying again")
                await asyncio.sleep(1.0)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                tick = SHARED_TICK if self.shared is not None else TICK
                await asyncio.wait_for(self._wake.wait(), tick)

    def _leads(self) -> bool:
        replicas = getattr(self.cp, "replicas", None)
        return replicas is None or replicas.is_leader()

    async def _step(self) -> None:
        state = self.state
        assert state is not None
        sessions = self.cp.discovery.sessions()
        if state.phase == RENEWING:
            # Every replica asks its own proxies; only the leader moves the phase on.
            now = time.time()
            for s in sessions:
                if not self._on_new_chain(s) and now - s.renew_requested_at > RENEW_AGAIN_AFTER:
                    await self.cp.discovery.request_renewal(s, f"{state.kind} rotation")
        if not self._leads():
            return
        if state.phase == DISTRIBUTING:
            if self._everywhere("withNewRoots", all(self._has_new_roots(s) for s in sessions)):
                await self._switch()
        elif state.phase == RENEWING:
            if self._everywhere("onNewChain", all(self._on_new_chain(s) for s in sessions)):
                if state.old_roots:
                    ends = _now() + timedelta(seconds=state.overlap_seconds)
                    await self._advance(OVERLAP, overlap_ends_at=ends.isoformat())
                else:
                    await self._advance(DONE)
        elif state.phase == OVERLAP and _now() >= datetime.fromisoformat(state.overlap_ends_at):
            if self.shared is not None:
                old = set(state.old_roots)
                done = state.advance(DONE, _now().isoformat())
                await self._commit(
                    lambda current: replace(
                        current,
                        roots=tuple(
                            r for r in current.roots if certificate_fingerprint(r) not in old
                        ),
                        rotation=done,
                    )
                )
                log.info("%s rotation: %s", done.kind, DONE)
                await self._audit(f"ca.rotate.{DONE}", {"kind": done.kind})
            else:
                self.cp.ca.remove_roots(state.old_roots)
                self.cp.discovery.trust_bundle_changed()
                self.cp.refresh_tls()
                await self._advance(DONE)

    async def _switch(self) -> None:
        """DISTRIBUTING -> RENEWING: the staged issuer signs from now on."""
        state = self.state
        assert state is not None
        if self.shared is not None:
            renewing = state.advance(RENEWING, _now().isoformat())
            await self._commit(lambda current: current.switched(renewing))
            log.info("%s rotation: %s", state.kind, RENEWING)
            await self._audit(f"ca.rotate.{RENEWING}", {"kind": state.kind})
            return
        staged = load_staged(self.cp.ca.ca_dir)
        if staged is None:
            if self.cp.ca.ca_dir is not None:
                raise IdentityError("the staged CA in ca/next/ is missing or unreadable")
            return
        self._switch_here(staged)
        await self._audit(f"ca.rotate.{RENEWING}", {"kind": state.kind})

    def _has_new_roots(self, session: ProxySession) -> bool:
        assert self.state is not None
        return set(self.state.new_roots) <= _bundle_roots(session.acked_bundle)

    def _on_new_chain(self, session: ProxySession) -> bool:
        assert self.state is not None
        return session.issuer_fingerprint == self.state.new_issuer

    async def _audit(
        self, action: str, detail: dict[str, Any], actor: str = "control-plane"
    ) -> None:
        await self.cp.astore.run(
            self.cp.audit.record,
            actor,
            action,
            kind="CertificateAuthority",
            name="ca",
            detail=detail,
        )

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
            # Replicas sharing a store: each one's own proxies, as it last wrote them
            # (what the leader waits on); this replica's `proxies` are above.
            "replicas": dict(sorted(self._progress.items())) if self.shared else None,
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
        await self.begin(
            str(kind),
            timedelta(seconds=float(overlap)) if overlap is not None else None,
            operator,
            actor=actor,
        )
        return web.json_response({"rotation": self.progress()}, status=202)
