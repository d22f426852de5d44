"""The xDS server: Envoy's Aggregated Discovery Service, state of the world, over gRPC.

One bidirectional stream per Envoy carries listeners, clusters, routes, endpoints and
the SDS secrets (decision 0070). Per stream:

- The peer is authenticated by its client certificate (mTLS, the mesh CA): its SPIFFE
  ID must own the Workload its node metadata names (`WORKLOAD`, `NAMESPACE`), as on
  the discovery WebSocket. The stream holds that Workload's lease.
- On every change the discovery service fans out, the session takes the proxy's
  snapshot from discovery's cache (one build per change, shared with every proxy
  that asked the same) and translates it once (`envoy_resources`); a
  type is sent only when its resources changed, in the order clusters, endpoints,
  listeners, routes, with secrets first.
- Nonces: each response has a fresh nonce. A request naming an older nonce is stale
  and ignored. A request naming the latest one is an ACK (its `version_info` is now
  Envoy's) or, with `error_detail`, a NACK: Envoy keeps serving its last accepted
  config, the error is kept for `gossamer check` (`/v1/proxies`, `nackError`), and the
  refused version is not sent again until the content changes.
- SDS: secret `default` is a certificate the control plane issues for the workload's
  identity (renewed at two thirds of its life, and at once when the CA's issuer
  changes); secret `ROOTCA` is the trust bundle, so a CA rotation reaches Envoy as it
  reaches Gossamer proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from google.protobuf import json_format

from gossamer.errors import IdentityError, NotFound, StoreError
from gossamer.host import renews_only_through
from gossamer.identity.ca import issued_through_host
from gossamer.identity.csr import generate_private_key, make_csr
from gossamer.identity.spiffe import SpiffeId
from gossamer.translate import InconsistentSnapshot, ProxyInfo, Snapshot, build_snapshot
from gossamer.translate.build import WorkloadRecord
from gossamer.translate.envoy import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    TYPE_ORDER,
    EnvoyNode,
    EnvoyResources,
    TcpUpstream,
    envoy_resources,
    secrets,
)
from gossamer.translate.envoy_grpc import grpc_resources
from gossamer.xds import protos

if TYPE_CHECKING:
    from gossamer.controlplane.server import ControlPlane

log = logging.getLogger("gossamer.xds")

# Listeners and clusters are wildcard subscriptions; the other types name what they want.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})
_SHORT = {
    LISTENER: "Listener",
    CLUSTER: "Cluster",
    ROUTE: "RouteConfiguration",
    ENDPOINT: "ClusterLoadAssignment",
    SECRET: "Secret",
}
_WAKE = object()
RENEW_CHECK_SECONDS = 30.0


class NodeError(ValueError):
    """The node's metadata does not say what the session needs; the stream ends."""


def _hostport(value: Any, what: str) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise NodeError(f"node.metadata.{what}: must be 'HOST:PORT'")
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise NodeError(f"node.metadata.{what}: port must be 1-65535")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class NodeSpec:
    """What an Envoy's bootstrap says about itself (`node.metadata`, see bootstrap.py)."""

    workload: str
    namespace: str
    envoy: EnvoyNode
    interests: frozenset[str] | None  # None: every service in the mesh
    # A gRPC client with its own xDS support: no Workload, no listeners of its own
    # (see gossamer.translate.envoy_grpc and `gossamer bootstrap grpc`).
    proxyless: bool = False

    @staticmethod
    def parse(metadata: dict[str, Any]) -> NodeSpec:
        workload, namespace = metadata.get("WORKLOAD"), metadata.get("NAMESPACE")
        if not isinstance(workload, str) or not isinstance(namespace, str):
            raise NodeError(
                "node.metadata.WORKLOAD and NAMESPACE: required (write the bootstrap with "
                "`gossamer bootstrap envoy`)"
            )
        upstreams = []
        for i, up in enumerate(metadata.get("UPSTREAMS") or ()):
            if not isinstance(up, dict):
                raise NodeError(f"node.metadata.UPSTREAMS[{i}]: must be an object")
            service, port = _hostport(up.get("service"), f"UPSTREAMS[{i}].service")
            host, listen = _hostport(up.get("listen"), f"UPSTREAMS[{i}].listen")
            upstreams.append(TcpUpstream(service, port, host, listen))
        interests = metadata.get("INTERESTS")
        if interests is not None and not (
            isinstance(interests, list) and all(isinstance(i, str) for i in interests)
        ):
            raise NodeError("node.metadata.INTERESTS: must be a list of 'name.namespace'")
        return NodeSpec(
            workload,
            namespace,
            EnvoyNode(
                inbound=_hostport(metadata["INBOUND"], "INBOUND")
                if metadata.get("INBOUND")
                else None,
                outbound=_hostport(metadata["OUTBOUND"], "OUTBOUND")
                if metadata.get("OUTBOUND")
                else None,
                upstreams=tuple(upstreams),
                app_host=str(metadata.get("APP_HOST") or "127.0.0.1"),
            ),
            None
            if interests is None
            else frozenset(i.lower() for i in interests) | {u.service for u in upstreams},
            proxyless=metadata.get("PROXYLESS") is True,
        )


@dataclass
class TypeState:
    """One resource type on one stream."""

    names: frozenset[str] | None = None  # None: wildcard
    subscribed: bool = False
    sent_version: str = ""
    nonce: str = ""
    acked_version: str = ""
    nack: str = ""


@dataclass
class XdsSession:
    identity: SpiffeId
    node_id: str
    spec: NodeSpec
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    connected_since: float = field(default_factory=time.time)
    types: dict[str, TypeState] = field(default_factory=dict)
    snapshot: Snapshot | None = None
    resources: EnvoyResources | None = None
    sent_snapshot: str = ""  # the snapshot version of the resources last sent
    acked_snapshot: str = ""  # the last snapshot version Envoy accepted in full
    nack_error: str = ""
    certificate: tuple[str, str] | None = None  # chain, key
    certificate_not_after: datetime | None = None
    renew_at: datetime | None = None
    issuer: str = ""

    def wake(self) -> None:
        self.queue.put_nowait(_WAKE)

    def state(self, type_url: str) -> TypeState:
        return self.types.setdefault(type_url, TypeState())


def peer_certificate(context: Any) -> x509.Certificate | None:
    """A gRPC peer's verified client certificate."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or ()
    return x509.load_pem_x509_certificate(pems[0]) if pems else None


def peer_spiffe_id(context: Any) -> SpiffeId | None:
    """The SPIFFE ID in a gRPC peer's verified client certificate."""
    cert = peer_certificate(context)
    if cert is None:
        return None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if len(spiffe) != 1:
        return None
    try:
        return SpiffeId.parse(spiffe[0])
    except ValueError:
        return None


class XdsServer:
    """The ADS service of one control plane process."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self._sessions: dict[int, XdsSession] = {}
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._server: Any = None
        self._renewer: asyncio.Task[None] | None = None
        self._tls_bundle = self._tls_issuer = ""
        cp.discovery.change_listeners.append(self._wake_all)
        cp.discovery.status_sources.append(self.status_rows)

    # -- lifecycle --------------------------------------------------------------------

    def _credentials_config(self) -> Any:
        key_pem, chain_pem = self.cp._server_certificate()
        self._tls_bundle = self.cp.ca.trust_bundle_pem()
        self._tls_issuer = self.cp.ca.issuer_fingerprint()
        return grpc.ssl_server_certificate_configuration(
            [(key_pem, chain_pem.encode())], root_certificates=self._tls_bundle.encode()
        )

    def _fetch_credentials(self) -> Any:
        """Called by gRPC before each handshake: a new trust bundle or signing
        intermediate (CA rotation) applies to the next connection."""
        ca = self.cp.ca
        if ca.trust_bundle_pem() != self._tls_bundle or ca.issuer_fingerprint() != self._tls_issuer:
            return self._credentials_config()
        return None

    async def start(self, address: tuple[str, int]) -> tuple[str, int]:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20)])
        protos.add_ads_servicer(self.StreamAggregatedResources, server)
        credentials = grpc.dynamic_ssl_server_credentials(
            self._credentials_config(), self._fetch_credentials, require_client_authentication=True
        )
        host, port = address
        bound = server.add_secure_port(f"{host}:{port}", credentials)
        await server.start()
        self._server = server
        self._renewer = asyncio.create_task(self._renew_loop(), name="xds-renew")
        return host, bound

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._server is not None:
            await self._server.stop(grace=0.5)

    def _wake_all(self) -> None:
        for session in self._sessions.values():
            session.wake()

    async def _renew_loop(self) -> None:
        """Wake every session when the CA signs with a new intermediate (a rotation's
        switch, which changes no trust bundle: nothing else says so), and every
        RENEW_CHECK_SECONDS for renewals that fall due."""
        issuer = self.cp.ca.issuer_fingerprint()
        last = time.monotonic()
        # Short certificate lifetimes (tests, --certificate-ttl 1m) are checked oftener.
        every = min(RENEW_CHECK_SECONDS, self.cp.config.certificate_ttl.total_seconds() / 6)
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            current = self.cp.ca.issuer_fingerprint()
            if current != issuer or now - last >= every:
                issuer, last = current, now
                self._wake_all()

    # -- status -----------------------------------------------------------------------

    def status_rows(self) -> list[dict[str, Any]]:
        rows = []
        mesh = self.cp.discovery.mesh()
        for s in sorted(self._sessions.values(), key=lambda s: (s.spec.namespace, s.spec.workload)):
            try:
                # Cached unless discovery dropped it (it keeps only its own sessions'
                # entries when the cache grows): then this builds it once.
                latest = (
                    s.snapshot.version
                    if s.spec.proxyless and s.snapshot is not None
                    else self.cp.discovery.snapshots.prepare(mesh, self._info(s)).version
                )
            except InconsistentSnapshot:
                latest = ""
            rows.append(
                {
                    "workload": s.spec.workload,
                    "namespace": s.spec.namespace,
                    "identity": str(s.identity),
                    "engine": "grpc" if s.spec.proxyless else "envoy",
                    "node": s.node_id,
                    "connectedSince": s.connected_since,
                    "sentVersion": s.sent_snapshot,
                    "ackedVersion": s.acked_snapshot,
                    "latestVersion": latest,
                    "upToDate": bool(latest) and s.acked_snapshot == latest,
                    "nackError": s.nack_error,
                    "certificateNotAfter": s.certificate_not_after.isoformat()
                    if s.certificate_not_after
                    else "",
                    "issuerFingerprint": s.issuer,
                    "rootFingerprint": self.cp.ca.root_fingerprint(),
                }
            )
        return rows

    # -- the stream -------------------------------------------------------------------

    def _info(self, session: XdsSession) -> ProxyInfo:
        interests = session.spec.interests
        if interests is None:
            interests = frozenset(
                f"{name}.{ns}" for (ns, name) in self.cp.discovery.mesh().services
            )
        return ProxyInfo(session.spec.workload, session.spec.namespace, interests)

    async def _open(self, identity: SpiffeId, node: Any) -> XdsSession:
        metadata = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
        spec = NodeSpec.parse(metadata)
        if spec.proxyless:
            # No Workload to own: the identity's namespace is the client's.
            if identity.namespace != spec.namespace:
                raise IdentityError(
                    f"{identity} may not speak for a gRPC client in namespace {spec.namespace!r}"
                )
            return XdsSession(identity, node.id, spec)
        obj = await self.cp.astore.get("Workload", spec.namespace, spec.workload)
        account = obj["spec"].get("serviceAccount", "default")
        if identity.namespace != spec.namespace or identity.service_account != account:
            raise IdentityError(
                f"{identity} may not speak for workload {spec.namespace}/{spec.workload} "
                f"(service account {account!r})"
            )
        return XdsSession(identity, node.id, spec)

    async def StreamAggregatedResources(  # the gRPC method's name
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        identity = peer_spiffe_id(context)
        if identity is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "a mesh client certificate is required"
            )
            return
        cert = peer_certificate(context)
        host = issued_through_host(cert) if cert is not None else None
        if host is not None:
            # Its SDS secret would be a new certificate for an identity the operator may
            # have taken off the host (node authorization, decision 0064).
            log.warning("xDS stream from %s refused: issued through host %s", identity, host)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, renews_only_through(host))
            return
        first = await anext(requests, None)
        if first is None:
            return
        try:
            session = await self._open(identity, first.node)
        except (NodeError, NotFound, IdentityError, StoreError) as err:
            log.warning("xDS stream from %s refused: %s", identity, err)
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if isinstance(err, IdentityError)
                else grpc.StatusCode.UNAVAILABLE
                if isinstance(err, StoreError)
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            await context.abort(code, str(err))
            return
        sid = next(self._ids)
        self._sessions[sid] = session
        spec = session.spec
        if not spec.proxyless:
            await self.cp.discovery.hold_lease(spec.namespace, spec.workload)
        log.info(
            "envoy %s (%s/%s) connected over xDS", session.node_id, spec.namespace, spec.workload
        )
        session.queue.put_nowait(first)

        async def read() -> None:
            async for request in requests:
                session.queue.put_nowait(request)
            session.queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await session.queue.get()
                if item is None:
                    break
                if item is not _WAKE:
                    self._on_request(session, item)
                else:
                    self._rebuild(session)
                for response in self._pending(session):
                    yield response
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            del self._sessions[sid]
            if not spec.proxyless:
                self.cp.discovery.release_lease(spec.namespace, spec.workload)
            log.info(
                "envoy %s (%s/%s) disconnected", session.node_id, spec.namespace, spec.workload
            )

    def _on_request(self, session: XdsSession, request: Any) -> None:
        type_url = request.type_url
        if type_url not in _SHORT:
            log.debug("envoy %s asks for unknown type %s", session.node_id, type_url)
            return
        st = session.state(type_url)
        if request.response_nonce and request.response_nonce != st.nonce:
            return  # an answer to a response that a newer one replaced: stale
        if request.response_nonce:
            if request.HasField("error_detail"):
                st.nack = request.error_detail.message
                session.nack_error = f"{_SHORT[type_url]}: {st.nack}"
                log.warning(
                    "envoy %s (%s/%s) rejected %s version %s: %s",
                    session.node_id,
                    session.spec.namespace,
                    session.spec.workload,
                    _SHORT[type_url],
                    st.sent_version,
                    st.nack,
                )
            else:
                st.acked_version = request.version_info
                st.nack = ""
                if not any(t.nack for t in session.types.values()):
                    session.nack_error = ""
                self._note_acked(session)
        elif request.version_info and not st.subscribed:
            # A reconnecting Envoy says what it has; same content needs no response.
            st.acked_version = request.version_info
        names = None if type_url in WILDCARD_TYPES else frozenset(request.resource_names)
        if names != st.names:
            st.names = names
            st.sent_version = ""  # a new set of names is always answered
            if request.version_info and not request.response_nonce:
                st.sent_version = request.version_info
        st.subscribed = True
        if session.resources is None:
            self._rebuild(session)

    def _note_acked(self, session: XdsSession) -> None:
        if all(
            st.acked_version == st.sent_version for st in session.types.values() if st.subscribed
        ):
            session.acked_snapshot = session.sent_snapshot

    def _rebuild(self, session: XdsSession) -> None:
        """A change may concern this proxy: one build, one translation, if anything moved."""
        if session.spec.proxyless:
            self._rebuild_proxyless(session)
            return
        self._renew_if_due(session)
        try:
            # The discovery service's cache: one build per change, shared with every
            # proxy (Gossamer's or Envoy) that asked for the same.
            prepared = self.cp.discovery.snapshots.prepare(
                self.cp.discovery.mesh(), self._info(session)
            )
        except InconsistentSnapshot as err:
            log.error("not sending a snapshot to envoy %s: %s", session.node_id, err)
            return
        if (
            session.snapshot is not None
            and prepared.version == session.snapshot.version
            and session.resources is not None
        ):
            return
        snapshot = Snapshot.from_dict(json.loads(prepared.message)["snapshot"])
        assert session.certificate is not None
        chain, key = session.certificate
        resources = envoy_resources(snapshot, session.spec.envoy)
        resources.by_type[SECRET] = secrets(chain, key, snapshot.trust_bundle)
        session.snapshot, session.resources = snapshot, resources

    def _rebuild_proxyless(self, session: XdsSession) -> None:
        """A gRPC client has no Workload: its snapshot is built for a stand-in that no
        Service selects (no ports, no labels), outside the cache."""
        spec, mesh = session.spec, self.cp.discovery.mesh()
        stand_in = WorkloadRecord(
            name=spec.workload,
            namespace=spec.namespace,
            labels={},
            address="127.0.0.1",
            inbound_port=1,
            service_account=session.identity.service_account,
            ready=False,
        )
        workloads = {**mesh.workloads, (spec.namespace, spec.workload): stand_in}
        try:
            snapshot = build_snapshot(replace(mesh, workloads=workloads), self._info(session))
        except InconsistentSnapshot as err:
            log.error("not sending a snapshot to gRPC client %s: %s", session.node_id, err)
            return
        if session.snapshot is not None and snapshot.version == session.snapshot.version:
            return
        session.snapshot, session.resources = snapshot, grpc_resources(snapshot)

    def _renew_if_due(self, session: XdsSession) -> None:
        now = datetime.now(UTC)
        issuer = self.cp.ca.issuer_fingerprint()
        if (
            session.certificate is not None
            and session.renew_at is not None
            and now < session.renew_at
            and issuer == session.issuer
        ):
            return
        identity = session.identity
        key = generate_private_key()
        issued = self.cp.ca.sign_csr(
            make_csr(key, identity), identity, ttl=self.cp.config.certificate_ttl
        )
        self.cp.astore.spawn(  # off the loop: the audit log may be the shared store
            self.cp.audit.record,
            str(identity),
            "certificate.issue",
            kind="Certificate",
            namespace=identity.namespace,
            name=str(identity),
            detail={
                "serial": str(issued.serial),
                "notAfter": issued.not_after.isoformat(),
                "via": "sds",
            },
        )
        not_before = issued.not_after - self.cp.config.certificate_ttl
        session.certificate = (issued.chain_pem, key.decode())
        session.certificate_not_after = issued.not_after
        session.renew_at = not_before + (issued.not_after - not_before) * 2 / 3
        session.issuer = issuer
        session.resources = None  # the secret changed: translate again
        log.info("issued an SDS certificate to %s until %s", identity, issued.not_after.isoformat())

    def _pending(self, session: XdsSession) -> Iterable[Any]:
        """Responses for every subscribed type whose resources differ from what was sent."""
        resources = session.resources
        if resources is None or session.snapshot is None:
            return
        for type_url in TYPE_ORDER:
            st = session.types.get(type_url)
            if st is None or not st.subscribed:
                continue
            version = resources.version(type_url, st.names)
            if version == st.sent_version:
                continue
            st.sent_version = version
            st.nonce = str(next(self._nonces))
            session.sent_snapshot = session.snapshot.version
            yield protos.response(
                type_url, version, st.nonce, resources.pick(type_url, st.names).values()
            )
        if all(
            st.sent_version == resources.version(t, st.names)
            for t, st in session.types.items()
            if st.subscribed
        ):
            # Everything Envoy has asked for is what this snapshot makes (a snapshot
            # change may change nothing Envoy sees).
            session.sent_snapshot = session.snapshot.version
        self._note_acked(session)


__all__ = ["NodeSpec", "XdsServer", "peer_spiffe_id"]
