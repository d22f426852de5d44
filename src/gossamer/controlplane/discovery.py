"""Discovery: per-proxy snapshots, pushed over an mTLS WebSocket; plus what a proxy
needs to join (certificates) and to announce itself (its Workload).

Protocol on `wss://DISCOVERY/v1/discovery` (JSON text messages):
  proxy → cp  {"type": "hello", "workload": W, "namespace": NS, "interests": [...]}
  cp → proxy  {"type": "snapshot", "version": V, "snapshot": {...}}
  proxy → cp  {"type": "ack", "version": V} | {"type": "nack", "version": V, "error": E}
  proxy → cp  {"type": "subscribe", "services": ["name.namespace", ...]}
  proxy → cp  {"type": "status", "certificateNotAfter": ISO8601,
               "issuerFingerprint": SHA256, "rootFingerprint": SHA256}  (after each renewal)
  cp → proxy  {"type": "renew", "reason": R}   (renew the certificate now: a CA rotation)
  cp → proxy  {"type": "error", "message": M}   (then the control plane closes)
`hello` carries the same three certificate fields as `status`. The fingerprints are the
SHA-256 (hex) of the intermediate that issued the proxy's certificate and of the root in
its trust bundle that signed that intermediate; a CA rotation waits on them
(docs/decisions/0022-ca-rotation.md). The snapshot's `trust_bundle` is the set of roots
the proxy verifies peers (and the control plane) against; an ack says it is applied.
The proxy is authenticated by its client certificate: it may only speak for a
Workload whose namespace and service account match its SPIFFE ID, and a registration
may only replace a Workload that the same identity owns (a Workload's identity never
changes in place; an operator deletes it first).

The stream is also the workload's lease: a proxy-registered Workload whose proxy holds
no stream for LEASE_SECONDS gets the condition `ProxyConnected: False` and leaves
every endpoint set until its proxy is back; the lease starts when a proxy registers
the Workload (docs/decisions/0045-workload-ownership-lease-and-supervision.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from cryptography import x509

from gossamer.controlplane.aggregate import AggregateRates, SharedDemand
from gossamer.controlplane.api import BadRequest, error_response, errors_middleware, read_json
from gossamer.controlplane.snapshotcache import BuildKey, SnapshotCache, services_selecting
from gossamer.errors import IdentityError, InvalidResource, NotFound, StoreError, Unauthorized
from gossamer.identity.ca import issued_through_host
from gossamer.identity.spiffe import SpiffeId
from gossamer.resources import to_dict, validate
from gossamer.store import Compacted
from gossamer.store.objects import same_config
from gossamer.translate import InconsistentSnapshot, MeshView, ProxyInfo
from gossamer.translate.controls import governs

if TYPE_CHECKING:
    from gossamer.controlplane.replicas import Replicas
    from gossamer.controlplane.server import ControlPlane

log = logging.getLogger("gossamer.controlplane.discovery")

DEBOUNCE_SECONDS = 0.05
# How long a proxy-registered workload stays an endpoint without its proxy's stream:
# long enough for a proxy restart or a control-plane restart, short enough that a
# dead workload stops taking requests within seconds.
LEASE_SECONDS = 10.0
# After the control plane (re)starts, proxies in back-off (up to 30 s, jittered by
# half) need longer to find it again: no lease expires before this.
RESTART_GRACE_SECONDS = 60.0
MAX_INTERESTS = 10_000
# Replicas (decision 0053): new streams a replica admits per second (a burst of as
# many), so a replica's restart does not pile every proxy onto the one left; and the
# age at which a stream is closed cleanly, jittered, so proxies spread over replicas
# again after one came back.
NEW_SESSIONS_PER_SECOND = 200.0
MAX_STREAM_AGE_SECONDS = 1800.0
STREAM_AGE_JITTER = 0.2
# A ProxyConnected condition names the replica whose stream holds the lease.
_HELD_BY = "discovery stream held by replica "
# Refusals kept for `gossamer check` (Discovery.refused): how many, and for how long.
MAX_REFUSALS = 64
REFUSALS_KEPT_SECONDS = 600.0
# Set on a Workload a host proxy registered (per-host mode): which host, from the CA's
# mark in its certificate. Only that host may change or remove the Workload.
HOST_ANNOTATION = "gossamer.dev/registered-through-host"
MESH_KINDS = frozenset({"Service", "Workload", "HTTPRoute", "AuthorizationPolicy", "MeshPolicy"})
# The traffic policies (gossamer.resources.policies) shape snapshots too.
MESH_KINDS |= frozenset({"RetryPolicy", "OutlierPolicy", "CircuitBreakerPolicy", "FaultPolicy"})
# Routes of the other Gateway API kinds compile into the same snapshot routes.
MESH_KINDS |= frozenset({"GRPCRoute", "TCPRoute"})
# TrafficControls reach the proxies of their source groups (gossamer.translate.controls).
MESH_KINDS |= frozenset({"TrafficControl"})


def peer_identity(request: web.Request) -> SpiffeId | None:
    """The SPIFFE ID of a verified client certificate, if the client sent one."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if len(spiffe) != 1:
        return None
    try:
        return SpiffeId.parse(spiffe[0])
    except ValueError:
        return None


def peer_host(request: web.Request) -> str | None:
    """The host a caller's certificate was issued through (per-host mode), or None.

    Read from the certificate itself (`gossamer.identity.ca.HOST_ISSUED_OID`)."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return issued_through_host(x509.load_der_x509_certificate(der)) if der else None


def _registered_through(obj: Mapping[str, Any]) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    host = annotations.get(HOST_ANNOTATION)
    return host if isinstance(host, str) else None


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == kind:
            return cond
    return None


def with_condition(
    status: Mapping[str, Any] | None, kind: str, flag: bool, reason: str, message: str
) -> tuple[dict[str, Any], bool]:
    """`status` with condition `kind` set; and whether its status value changed (the
    transition time moves only then, as in Kubernetes)."""
    out = dict(status or {})
    conditions = [c for c in out.get("conditions") or () if c.get("type") != kind]
    previous = _condition(out, kind)
    value = "True" if flag else "False"
    changed = previous is None or previous.get("status") != value
    conditions.append(
        {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message[:512],
            "lastTransitionTime": datetime.now(UTC).isoformat(timespec="seconds")
            if changed or previous is None
            else previous.get("lastTransitionTime", ""),
        }
    )
    out["conditions"] = conditions
    return out, changed


def require_identity(request: web.Request) -> SpiffeId:
    identity = peer_identity(request)
    if identity is None:
        raise Unauthorized(
            "this call needs a mesh client certificate (join first with a join token)"
        )
    return identity


@dataclass
class ProxySession:
    identity: SpiffeId
    workload: str
    namespace: str
    interests: set[str]
    ws: web.WebSocketResponse
    connected_since: float = field(default_factory=time.time)
    sent_version: str = ""
    acked_version: str = ""
    nack_error: str = ""
    certificate_not_after: str = ""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Certificate chain and trust bundle, for CA rotation (gossamer.controlplane.rotation).
    issuer_fingerprint: str = ""
    root_fingerprint: str = ""
    acked_bundle: str = ""  # the trust bundle of the last snapshot the proxy acked
    sent_bundles: dict[str, str] = field(default_factory=dict)  # version -> trust bundle
    renew_requested_at: float = 0.0
    build_key: BuildKey | None = None  # the snapshot cache entry it was last sent from

    async def send_shares(self, shares: dict[str, float]) -> None:
        """Its parts of the Aggregate TrafficControl rates (controlplane.aggregate)."""
        if not self.ws.closed:
            await self.ws.send_json({"type": "shares", "edges": shares})

    def certificate_status(self, msg: Mapping[str, Any]) -> None:
        self.certificate_not_after = str(msg.get("certificateNotAfter", ""))
        self.issuer_fingerprint = str(msg.get("issuerFingerprint", ""))
        self.root_fingerprint = str(msg.get("rootFingerprint", ""))

    def info(self) -> ProxyInfo:
        return ProxyInfo(self.workload, self.namespace, frozenset(self.interests))


class Discovery:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self._objects: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        self._revision = 0
        self._mesh: MeshView | None = None
        self._sessions: dict[tuple[str, str], ProxySession] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Workload lease: when each workload's proxy last left (monotonic seconds); a
        # workload not seen since this process started has RESTART_GRACE_SECONDS.
        self._started = time.monotonic()
        self._gone_since: dict[tuple[str, str], float] = {}
        # Other streams a proxy may hold instead of this one (Envoy's xDS stream,
        # gossamer.xds): they hold the lease too, are woken on every change, and
        # report their proxies' status beside this stream's.
        self._leases_held: dict[tuple[str, str], int] = {}
        self.change_listeners: list[Callable[[], None]] = []
        self.status_sources: list[Callable[[], list[dict[str, Any]]]] = []
        # One build per change (gossamer.controlplane.snapshotcache): what changed since
        # the last fan-out decides which snapshots are dropped and which sessions woken.
        self.snapshots = SnapshotCache()
        self.admission = Admission(NEW_SESSIONS_PER_SECOND)
        self.max_stream_age = MAX_STREAM_AGE_SECONDS
        self._everything_changed = False
        self._changed_workloads: list[tuple[str, str, list[dict[str, str]]]] = []
        # Aggregate TrafficControl rates, split between the source proxies by demand.
        self.aggregate = AggregateRates(lambda: self.mesh().controls, self._governs)
        self._governed: tuple[MeshView | None, dict[tuple[tuple[str, str], str], bool]] = (
            None,
            {},
        )
        # Recent refusals of joins, registrations and streams: a proxy that cannot join
        # retries for ever, and `gossamer check` says so (GET /v1/proxies "refused").
        self.refusals: deque[dict[str, Any]] = deque(maxlen=MAX_REFUSALS)

    def _governs(self, proxy: tuple[str, str], edge: str) -> bool:
        """Whether the TrafficControl of `edge` ("namespace/name/service.namespace")
        governs the calls of `proxy`'s workload to that service (cached per mesh)."""
        mesh = self.mesh()
        seen_mesh, cache = self._governed
        if seen_mesh is not mesh:
            cache = {}
            self._governed = (mesh, cache)
        found = cache.get((proxy, edge))
        if found is None:
            if len(cache) >= 100_000:
                cache.clear()
            control_ns, _, rest = edge.partition("/")
            control_name, _, service = rest.partition("/")
            svc_name, _, svc_ns = service.partition(".")
            control = next(
                (
                    c
                    for c in mesh.controls
                    if (c.metadata.namespace, c.metadata.name) == (control_ns, control_name)
                ),
                None,
            )
            workload = mesh.workloads.get(proxy)
            svc = mesh.services.get((svc_ns, svc_name))
            found = cache[(proxy, edge)] = (
                control is not None
                and workload is not None
                and svc is not None
                and governs(mesh, control, workload, svc)
            )
        return found

    def refused(self, what: str, who: str, reason: str) -> None:
        self.refusals.append({"at": time.time(), "what": what, "who": who, "reason": reason})

    def recent_refusals(self, seconds: float = REFUSALS_KEPT_SECONDS) -> list[dict[str, Any]]:
        since = time.time() - seconds
        return [r for r in self.refusals if r["at"] >= since]

    # -- mesh state ---------------------------------------------------------------

    async def _load(self) -> None:
        # The revision first: a write between the two reads is replayed by the watch.
        self._revision = await self.cp.astore.revision()
        self._objects = {
            (o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o
            for o in await self.cp.astore.list()
            if o["kind"] in MESH_KINDS
        }
        self._mesh = None

    def mesh(self) -> MeshView:
        if self._mesh is None:
            self._mesh = MeshView.from_objects(
                self._objects.values(),
                trust_domain=self.cp.ca.trust_domain,
                trust_bundle=self.cp.ca.trust_bundle_pem(),
            )
        return self._mesh

    async def start(self) -> None:
        await self._load()
        if self.cp.system_store is not None:
            # Several replicas: they split Aggregate rates over every replica's proxies.
            replicas = self.cp.replicas
            self.aggregate.shared = SharedDemand(
                self.cp.system_store, replicas.replica_id, replicas.alive
            )
        self._tasks = [
            asyncio.create_task(self._follow_store(), name="discovery-follow-store"),
            asyncio.create_task(self._fan_out(), name="discovery-fan-out"),
            asyncio.create_task(self._lease_loop(), name="discovery-leases"),
            asyncio.create_task(self.aggregate.run(), name="discovery-aggregate-rates"),
        ]

    async def stop(self) -> None:
        for session in list(self._sessions.values()):
            await session.ws.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow_store(self) -> None:
        while True:
            try:
                async for event in self.cp.store.watch(self._revision):
                    self._revision = event.revision
                    obj = event.object
                    if obj["kind"] not in MESH_KINDS:
                        continue
                    key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
                    old = self._objects.get(key)
                    if event.type == "DELETED":
                        self._objects.pop(key, None)
                    else:
                        self._objects[key] = obj
                    if self._note_change(old, obj, deleted=event.type == "DELETED"):
                        self._mesh = None
                        self._changed.set()
            except Compacted:
                log.warning("store history compacted under the watch; re-listing")
                await self._load()
                self._everything_changed = True
                self._changed.set()

    def _note_change(
        self, old: Mapping[str, Any] | None, new: Mapping[str, Any], *, deleted: bool
    ) -> bool:
        """Record what a store event changed for the next fan-out; False if it changes
        no snapshot (a status write on anything but a Workload: translation reads
        status only to tell a Workload's readiness)."""
        kind = new["kind"]
        if kind != "Workload":
            if old is not None and not deleted and same_config(dict(new), dict(old)):
                return False
            self._everything_changed = True
            return True
        labels = [dict(o["metadata"].get("labels") or {}) for o in (old, new) if o is not None]
        self._changed_workloads.append(
            (new["metadata"]["namespace"], new["metadata"]["name"], labels)
        )
        return True

    async def _fan_out(self) -> None:
        """Debounce bursts of changes, then drop the snapshots they affect and wake the
        sessions that were sent one of those (or whose own Workload changed)."""
        while True:
            await self._changed.wait()
            await asyncio.sleep(DEBOUNCE_SECONDS)
            self._changed.clear()
            self._wake_affected()

    def _wake_affected(self) -> None:
        changed, self._changed_workloads = self._changed_workloads, []
        if self._everything_changed:
            self._everything_changed = False
            self.snapshots.clear()
            for session in self._sessions.values():
                session.wake.set()
            for listener in self.change_listeners:
                listener()
            return
        mesh = self.mesh()
        holding: set[str] = set()
        own: set[tuple[str, str]] = set()
        for namespace, name, label_sets in changed:
            holding |= services_selecting(mesh, namespace, label_sets)
            own.add((namespace, name))
        dropped = self.snapshots.drop_holding(holding)
        if len(self.snapshots) > 2 * len(self._sessions) + 64:
            self.snapshots.keep_only(s.build_key for s in self._sessions.values())
        for key, session in self._sessions.items():
            if key in own or session.build_key is None or session.build_key in dropped:
                session.wake.set()
        for listener in self.change_listeners:
            listener()  # xDS sessions (gossamer.xds) compare versions themselves

    # -- workload leases --------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 5)
            try:
                await self.cp.astore.run(self.expire_leases, time.monotonic())
            except StoreError as err:
                log.warning("workload leases not checked this round: %s", err)

    def expire_leases(self, now: float) -> None:
        """Take out of endpoints every proxy-registered workload whose proxy has held no
        stream for LEASE_SECONDS. A Workload an operator applied by hand (neither a
        `ProxyConnected` nor a `Ready` condition: no proxy registered or reports for it)
        holds no lease."""
        # Runs on a store thread (the lease loop): it copies what the loop changes
        # (list() of a dict is one step under the GIL) and never iterates it live.
        for key in [k for k in list(self._gone_since) if ("Workload", *k) not in self._objects]:
            self._gone_since.pop(key, None)  # deleted workloads
        for (kind, namespace, name), obj in list(self._objects.items()):
            key = (namespace, name)
            if kind != "Workload" or key in self._sessions or key in self._leases_held:
                continue
            connected = _condition(obj, "ProxyConnected")
            if connected is None and _condition(obj, "Ready") is None:
                continue  # applied by an operator: no proxy to expect
            if connected is not None and connected.get("status") == "False":
                continue
            holder = _holder(connected)
            if holder and holder != self._replica_id:
                # Another replica's stream: its to keep while it is alive; the leader's
                # to expire, a restart grace after that replica was last seen.
                if self._expired_elsewhere(holder):
                    self._set_connected(namespace, name, False)
                continue
            if not holder and not self._leads():
                continue  # written before replicas: the leader's to judge
            gone = self._gone_since.get(key)
            if gone is None:
                expired = now - self._started >= RESTART_GRACE_SECONDS
            else:
                expired = now - gone >= LEASE_SECONDS
            if expired:
                self._set_connected(namespace, name, False)

    @property
    def _replicas(self) -> Replicas | None:
        return getattr(self.cp, "replicas", None)

    @property
    def _replica_id(self) -> str:
        replicas = self._replicas
        return replicas.replica_id if replicas is not None and replicas.shared else ""

    def _leads(self) -> bool:
        replicas = self._replicas
        return replicas is None or replicas.is_leader()

    def _expired_elsewhere(self, holder: str) -> bool:
        replicas = self._replicas
        if replicas is None or not replicas.is_leader():
            return False
        seen = replicas.last_seen(holder)
        return seen is None or replicas.now() - seen >= max(RESTART_GRACE_SECONDS, replicas.lease)

    def _set_connected(self, namespace: str, name: str, connected: bool, reason: str = "") -> None:
        try:
            current = self.cp.store.get("Workload", namespace, name)
        except NotFound:
            return
        status, changed = with_condition(
            current.get("status"),
            "ProxyConnected",
            connected,
            reason or ("StreamOpen" if connected else "LeaseExpired"),
            (_HELD_BY + self._replica_id if self._replica_id else "")
            if connected
            else f"no discovery stream from its proxy for {LEASE_SECONDS:g}s",
        )
        if status == current.get("status"):
            return
        self.cp.store.update_status("Workload", namespace, name, status)
        if not changed:
            return  # the same state, now held by this replica
        if reason == "Registered":
            return  # register() says so
        log.log(
            logging.INFO if connected else logging.WARNING,
            "workload %s/%s %s",
            namespace,
            name,
            "is back: its proxy reconnected"
            if connected
            else f"left endpoints: its proxy has been away for {LEASE_SECONDS:g}s",
        )

    async def hold_lease(self, namespace: str, name: str) -> None:
        """Another stream (xDS) from the workload's proxy is open: it holds the lease."""
        key = (namespace, name)
        self._leases_held[key] = self._leases_held.get(key, 0) + 1
        self._gone_since.pop(key, None)
        await self.cp.astore.run(self._set_connected, namespace, name, True)

    def release_lease(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        held = self._leases_held.get(key, 0) - 1
        if held > 0:
            self._leases_held[key] = held
            return
        self._leases_held.pop(key, None)
        if key not in self._sessions:
            self._gone_since[key] = time.monotonic()

    def proxy_status(self) -> list[dict[str, Any]]:
        rows = []
        mesh = self.mesh()
        for session in sorted(self._sessions.values(), key=lambda s: (s.namespace, s.workload)):
            # From the cache, never a build: status is asked often, of every proxy.
            latest = self.snapshots.latest_version(mesh, session.info())
            rows.append(
                {
                    "workload": session.workload,
                    "namespace": session.namespace,
                    "identity": str(session.identity),
                    "connectedSince": session.connected_since,
                    "sentVersion": session.sent_version,
                    "ackedVersion": session.acked_version,
                    "latestVersion": latest,
                    "upToDate": bool(latest) and session.acked_version == latest,
                    "nackError": session.nack_error,
                    "certificateNotAfter": session.certificate_not_after,
                    "issuerFingerprint": session.issuer_fingerprint,
                    "rootFingerprint": session.root_fingerprint,
                }
            )
        for source in self.status_sources:
            rows.extend(source())
        return rows

    # -- CA rotation ----------------------------------------------------------------

    def sessions(self) -> list[ProxySession]:
        return list(self._sessions.values())

    def trust_bundle_changed(self) -> None:
        """The CA's roots changed: rebuild and push every proxy's snapshot."""
        self._mesh = None
        self._everything_changed = True
        self._changed.set()

    async def request_renewal(self, session: ProxySession, reason: str) -> None:
        session.renew_requested_at = time.time()
        if not session.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await session.ws.send_json({"type": "renew", "reason": reason})

    # -- HTTP -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors_middleware], client_max_size=1024 * 1024)
        app.add_routes(
            [
                web.get("/v1/identity/bundle", self.bundle),
                web.post("/v1/identity/certificates", self.certificates),
                web.post("/v1/identity/renew", self.renew),
                web.put("/v1/workloads/{namespace}/{name}", self.register),
                web.delete("/v1/workloads/{namespace}/{name}", self.deregister),
                web.put("/v1/workloads/{namespace}/{name}/status", self.report_status),
                web.get("/v1/discovery", self.stream),
            ]
        )
        return app

    async def bundle(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.cp.ca.trust_bundle_pem(), content_type="application/x-pem-file"
        )

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("request body: must be a JSON object")
        return body

    async def _issue(self, csr: object, identity: SpiffeId, actor: str) -> web.Response:
        if not isinstance(csr, str):
            return error_response(400, "BadRequest", "csr: required (PEM text)")
        issued = self.cp.ca.sign_csr(csr, identity, ttl=self.cp.config.certificate_ttl)
        await self.cp.astore.run(
            self.cp.audit.record,
            actor,
            "certificate.issue",
            kind="Certificate",
            namespace=identity.namespace,
            name=str(identity),
            detail={"serial": str(issued.serial), "notAfter": issued.not_after.isoformat()},
        )
        log.info(
            "issued certificate serial=%s to %s, expires %s",
            issued.serial,
            identity,
            issued.not_after.isoformat(),
        )
        return web.json_response(
            {
                "certificateChain": issued.chain_pem,
                "trustBundle": issued.trust_bundle_pem,
                "spiffeId": str(identity),
                "notAfter": issued.not_after.isoformat(),
            }
        )

    async def certificates(self, request: web.Request) -> web.Response:
        """Join: a join token and a CSR buy a leaf certificate for the token's identity."""
        body = await self._json_body(request)
        token = body.get("token")
        if not isinstance(token, str):
            return error_response(400, "BadRequest", "token: required")
        try:
            claims = self.cp.tokens.verify(token)
        except IdentityError as err:
            log.warning("join refused: %s", err)
            self.refused("join", "a join token", str(err))
            return error_response(403, "Forbidden", str(err))
        if not isinstance(body.get("csr"), str):
            return error_response(400, "BadRequest", "csr: required (PEM text)")
        try:
            used = await self.cp.astore.run(
                self.cp.audit.use_token, claims.token_id, claims.max_uses
            )
        except ValueError as err:
            log.warning("join refused: %s", err)
            self.refused("join", f"join token {claims.token_id} ({claims.identity})", str(err))
            return error_response(403, "Forbidden", f"{err}; create a new one")
        actor = f"join-token {claims.token_id}"
        await self.cp.astore.run(
            self.cp.audit.record,
            actor,
            "token.use",
            kind="JoinToken",
            namespace=claims.namespace,
            name=claims.token_id,
            detail={"use": used, "of": claims.max_uses},
        )
        return await self._issue(body.get("csr"), claims.identity, actor)

    async def renew(self, request: web.Request) -> web.Response:
        """Renewal: a proxy's current certificate buys a new one for the same identity."""
        identity = require_identity(request)
        body = await self._json_body(request)
        return await self._issue(body.get("csr"), identity, str(identity))

    def _check_owner(self, identity: SpiffeId, namespace: str, service_account: str) -> None:
        if identity.namespace != namespace or identity.service_account != service_account:
            raise IdentityError(
                f"{identity} may not register a workload in namespace {namespace!r} "
                f"with service account {service_account!r}"
            )

    @staticmethod
    def _check_node(request: web.Request, current: Mapping[str, Any]) -> None:
        """A Workload registered through a host changes only through that host, and a
        host changes no other Workload (Kubernetes' NodeRestriction, for node
        authorization: decision 0064), even when both hold the same identity."""
        caller, registered = peer_host(request), _registered_through(current)
        if caller == registered:
            return
        meta = current.get("metadata") or {}
        by = f"host {registered!r}" if registered else "a sidecar (not through a host)"
        via = f"through host {caller!r}" if caller else "as a sidecar"
        raise IdentityError(
            f"workload {meta.get('namespace')}/{meta.get('name')} was registered by {by}; "
            f"a caller {via} may not change or remove it (an operator deletes it first)"
        )

    async def register(self, request: web.Request) -> web.Response:
        try:
            return await self._register(request)
        except IdentityError as err:
            self.refused("register", str(require_identity(request)), str(err))
            raise

    async def _register(self, request: web.Request) -> web.Response:
        identity = require_identity(request)
        body = await self._json_body(request)
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        body.pop("status", None)  # the control plane writes status, never a proxy's body
        body.setdefault("apiVersion", "gossamer.dev/v1alpha1")
        body.setdefault("kind", "Workload")
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise web.HTTPBadRequest(reason="metadata must be an object")
        meta.setdefault("name", name)
        meta.setdefault("namespace", namespace)
        obj = to_dict(validate(body))
        if obj["kind"] != "Workload" or (
            obj["metadata"]["namespace"],
            obj["metadata"]["name"],
        ) != (namespace, name):
            raise web.HTTPBadRequest(reason="body must be the Workload named in the path")
        self._check_owner(identity, namespace, obj["spec"].get("serviceAccount", "default"))
        annotations = obj["metadata"].setdefault("annotations", {})
        host = peer_host(request)
        if host is None:
            annotations.pop(HOST_ANNOTATION, None)  # only the CA's mark says so
        else:
            annotations[HOST_ANNOTATION] = host
        if not annotations:
            del obj["metadata"]["annotations"]
        try:
            current = await self.cp.astore.get("Workload", namespace, name)
        except NotFound:
            current = None
        if current is not None:
            self._check_node(request, current)
            owner = current["spec"].get("serviceAccount", "default")
            if owner != identity.service_account:
                raise IdentityError(
                    f"workload {namespace}/{name} belongs to service account {owner!r}; "
                    f"{identity} may not replace it (a workload's identity never changes "
                    "in place: an operator deletes it first)"
                )
        if current is None and obj["spec"].get("ports"):
            # Created not ready: its proxy reports the app's readiness once it has its
            # first snapshot. A Workload with no Ready condition counts as ready (one an
            # operator applied by hand), and peers would be sent to a proxy that does
            # not yet know its own ports.
            obj["status"], _ = with_condition(
                None, "Ready", False, "NotReported", "its proxy has not reported readiness yet"
            )
        [result] = await self.cp.astore.apply([obj])
        # Registered by a proxy: it holds a lease from now on, which its discovery
        # stream keeps (a registration that never streams leaves endpoints when it ends).
        key = (namespace, name)
        if key not in self._sessions:
            self._gone_since[key] = time.monotonic()
        if _condition(result.object, "ProxyConnected") is None:
            await self.cp.astore.run(self._set_connected, namespace, name, True, "Registered")
        log.info("workload %s/%s registered by %s (%s)", namespace, name, identity, result.action)
        return web.json_response(result.object)

    async def deregister(self, request: web.Request) -> web.Response:
        identity = require_identity(request)
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        current = await self.cp.astore.get("Workload", namespace, name)
        self._check_owner(identity, namespace, current["spec"].get("serviceAccount", "default"))
        self._check_node(request, current)
        obj = await self.cp.astore.delete("Workload", namespace, name)
        log.info("workload %s/%s removed by %s", namespace, name, identity)
        return web.json_response(obj)

    async def report_status(self, request: web.Request) -> web.Response:
        """The proxy says whether its app is listening; only a ready workload is an endpoint."""
        identity = require_identity(request)
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        body = await self._json_body(request)
        current = await self.cp.astore.get("Workload", namespace, name)
        self._check_owner(identity, namespace, current["spec"].get("serviceAccount", "default"))
        self._check_node(request, current)
        ready, message = body.get("ready"), body.get("message", "")
        if not isinstance(ready, bool) or not isinstance(message, str):
            return error_response(400, "BadRequest", "ready: must be a boolean; message: a string")
        status, changed = with_condition(
            current.get("status"),
            "Ready",
            ready,
            "AppListening" if ready else "AppNotListening",
            message,
        )
        obj = await self.cp.astore.update_status("Workload", namespace, name, status)
        if changed:
            log.info(
                "workload %s/%s is %s",
                namespace,
                name,
                "ready" if ready else f"not ready: {message}",
            )
        return web.json_response(obj)

    # -- the stream -------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        identity = require_identity(request)
        if not self.admission.admit(time.monotonic()):
            # Before the upgrade, so a refusal costs no WebSocket; the proxy tries
            # another replica, or this one after its back-off.
            return error_response(
                503, "Unavailable", "this replica admits no more new streams this second"
            )
        ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=1024 * 1024)
        await ws.prepare(request)
        try:
            hello = await ws.receive_json(timeout=10)
            session = await self._open_session(identity, hello, ws)
        except (TimeoutError, TypeError, ValueError, IdentityError, NotFound, StoreError) as err:
            reason = str(err) or "expected a hello message"
            if ws.closed or ws.close_code is not None or request.transport is None:
                # The proxy went away before its hello (it gave up, or lost the link):
                # nothing to refuse, and no one to tell.
                log.info("discovery stream from %s closed before its hello", identity)
                return ws
            log.warning("discovery stream from %s refused: %s", identity, reason)
            self.refused("stream", str(identity), reason)
            # Best effort: the proxy may close the stream while it is being refused.
            with contextlib.suppress(ConnectionError):
                await ws.send_json({"type": "error", "message": reason})
                await ws.close()
            return ws
        key = (session.namespace, session.workload)
        previous = self._sessions.get(key)
        if previous is not None:
            await previous.ws.close()
        self._sessions[key] = session
        self._gone_since.pop(key, None)
        try:
            await self.cp.astore.run(self._set_connected, *key, True)
        except StoreError as err:
            # Served anyway: its snapshot comes from memory; the condition waits.
            log.warning("proxy %s/%s: ProxyConnected not written: %s", *key, err)
        log.info("proxy %s/%s connected as %s", session.namespace, session.workload, identity)
        sender = asyncio.create_task(self._send_loop(session))
        age = self.max_stream_age * random.uniform(1 - STREAM_AGE_JITTER, 1 + STREAM_AGE_JITTER)
        try:
            try:
                async with asyncio.timeout(age):
                    async for msg in ws:
                        if msg.type != WSMsgType.TEXT:
                            continue
                        self._on_message(session, msg.data)
            except TimeoutError:
                # A clean close: the proxy reconnects at once, to any replica.
                await ws.close(message=b"stream age reached: reconnect")
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if self._sessions.get(key) is session:
                del self._sessions[key]
                self._gone_since[key] = time.monotonic()
            self.aggregate.forget(key, session)
            log.info("proxy %s/%s disconnected", session.namespace, session.workload)
        return ws

    async def _open_session(
        self, identity: SpiffeId, hello: Any, ws: web.WebSocketResponse
    ) -> ProxySession:
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            raise ValueError("expected a hello message first")
        workload, namespace = hello.get("workload"), hello.get("namespace")
        if not isinstance(workload, str) or not isinstance(namespace, str):
            raise ValueError("hello: workload and namespace are required")
        obj = await self.cp.astore.get("Workload", namespace, workload)
        self._check_owner(identity, namespace, obj["spec"].get("serviceAccount", "default"))
        interests = _interests(hello.get("interests", []))
        session = ProxySession(identity, workload, namespace, interests, ws)
        session.certificate_status(hello)
        return session

    def _on_message(self, session: ProxySession, data: str) -> None:
        try:
            msg = json.loads(data)
            kind = msg["type"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring malformed message from %s", session.identity)
            return
        if kind == "ack":
            session.acked_version = str(msg.get("version", ""))
            session.nack_error = ""
            bundle = session.sent_bundles.pop(session.acked_version, None)
            if bundle is not None:
                session.acked_bundle = bundle
                session.sent_bundles.clear()  # acks come in order: older ones are moot
        elif kind == "nack":
            session.nack_error = str(msg.get("error", ""))
            log.warning(
                "proxy %s/%s rejected snapshot %s: %s",
                session.namespace,
                session.workload,
                msg.get("version"),
                session.nack_error,
            )
        elif kind == "status":
            session.certificate_status(msg)
        elif kind == "demand":
            key = (session.namespace, session.workload)
            if self.aggregate.report(key, session, msg):
                # A proxy new to an Aggregate rate gets its part now, not in a second.
                task = asyncio.get_running_loop().create_task(self.aggregate.rebalance())
                self._tasks.append(task)
                task.add_done_callback(self._tasks.remove)
        elif kind == "subscribe":
            try:
                new = _interests(msg.get("services", []))
            except ValueError as err:
                log.warning("bad subscribe from %s: %s", session.identity, err)
                return
            if not new <= session.interests:
                session.interests |= new
                if len(session.interests) > MAX_INTERESTS:
                    log.warning("proxy %s asks for too many services", session.identity)
                    session.interests = set(sorted(session.interests)[:MAX_INTERESTS])
                session.wake.set()  # a proxy is waiting on this: no debounce

    async def _send_loop(self, session: ProxySession) -> None:
        session.wake.set()
        while True:
            await session.wake.wait()
            session.wake.clear()
            try:
                prepared = self.snapshots.prepare(self.mesh(), session.info())
            except InconsistentSnapshot as err:
                log.error(
                    "not sending a snapshot to %s/%s: %s", session.namespace, session.workload, err
                )
                continue
            session.build_key = prepared.key
            if prepared.version == session.sent_version:
                continue
            if len(session.sent_bundles) >= 16:  # a proxy that never acks
                session.sent_bundles.clear()
            session.sent_bundles[prepared.version] = prepared.trust_bundle
            await session.ws.send_str(prepared.message)
            session.sent_version = prepared.version


class Admission:
    """A token bucket: `rate` new streams a second, in bursts of up to `rate`."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at = 0.0

    def admit(self, now: float) -> bool:
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def _holder(condition: Mapping[str, Any] | None) -> str:
    message = str((condition or {}).get("message", ""))
    return message.removeprefix(_HELD_BY) if message.startswith(_HELD_BY) else ""


def _interests(raw: Any) -> set[str]:
    if not isinstance(raw, list) or len(raw) > MAX_INTERESTS:
        raise ValueError("interests must be a list of 'name.namespace' strings")
    out = set()
    for item in raw:
        if not isinstance(item, str) or item.count(".") != 1 or len(item) > 253:
            raise ValueError(f"interest {item!r} is not 'name.namespace'")
        out.add(item.lower())
    return out


__all__ = ["Discovery", "InvalidResource", "peer_identity"]
