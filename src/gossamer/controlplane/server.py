"""The control plane process: store, CA, REST API and discovery, wired together."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import ssl
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from gossamer.controlplane.api import Api
from gossamer.controlplane.audit import AuditLog
from gossamer.controlplane.auth import (
    AccessPolicy,
    admin_token_created,
    load_or_create_admin_token,
)
from gossamer.controlplane.discovery import Discovery
from gossamer.controlplane.hosts import HostAuthority
from gossamer.controlplane.replicas import (
    Replicas,
    replica_id_for,
    shared_admin_token,
    store_health,
)
from gossamer.controlplane.rotation import RotationController
from gossamer.controlplane.routestatus import RouteStatusReconciler
from gossamer.controlplane.telemetry import Telemetry
from gossamer.controlplane.tokens_store import ApiTokenStore
from gossamer.errors import StoreError
from gossamer.identity.ca import CertificateAuthority, OperatorCA
from gossamer.identity.spiffe import SpiffeId
from gossamer.identity.tls import server_context
from gossamer.identity.tokens import JoinTokenIssuer, load_or_create_token_key
from gossamer.store import Store, make_dirs, open_store, system_store_for
from gossamer.store.aio import AsyncStore

if TYPE_CHECKING:
    from gossamer.xds.server import XdsServer

log = logging.getLogger("gossamer.controlplane")

CONTROL_PLANE_NAMESPACE = "gossamer-system"
CONTROL_PLANE_ACCOUNT = "control-plane"
SERVER_CERT_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class ControlPlaneConfig:
    data_dir: Path
    api: tuple[str, int] = ("127.0.0.1", 15000)
    discovery: tuple[str, int] = ("127.0.0.1", 15012)
    xds: tuple[str, int] | None = None  # Envoy's ADS/SDS listener (gossamer.xds); off
    trust_domain: str = "cluster.local"
    store_url: str | None = None
    operator_ca: OperatorCA | None = None
    certificate_ttl: timedelta = timedelta(hours=24)
    scrape_interval: float = 5.0
    prometheus_sd_file: Path | None = None  # default: DATA_DIR/prometheus/targets.json
    auth_reads: bool = False  # reads need a read token too (writes always need admin)


def control_plane_identity(trust_domain: str) -> SpiffeId:
    return SpiffeId(trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_ACCOUNT)


def has_run_before(data_dir: Path) -> bool:
    """Whether a control plane has started with `data_dir` before.

    Every start opens the store first and then writes the CA and admin.token, so either
    of those being there means the store was created (with its tables) on an earlier
    start. The store and the audit log use this to tell a lost database (an existing
    but empty file: refused) from a new one (no file: created)."""
    ca_dir = data_dir / "ca"
    return (data_dir / "admin.token").exists() or (ca_dir.is_dir() and any(ca_dir.iterdir()))


class ControlPlane:
    def __init__(self, config: ControlPlaneConfig) -> None:
        self.config = config
        try:
            self._open_data_dir(config)
        except BaseException as err:
            for opened in ("audit", "store"):
                if hasattr(self, opened):
                    getattr(self, opened).close()
            if not isinstance(err, OSError):
                raise
            # Not the CLI's "ports in use" hint: a file or directory here is the problem.
            where = err.filename or config.data_dir
            raise StoreError(
                f"cannot use {where}: {err.strerror or err}: check that it is a directory "
                "(or file) this user may read and write"
            ) from None
        self.discovery = Discovery(self)
        self.hosts = HostAuthority(self)  # per-host mode's node authorization
        self.rotation = RotationController(self)  # CA rotation (resumed in start)
        self.route_status = RouteStatusReconciler(self.store)
        self.telemetry = Telemetry(
            self.store,
            interval=config.scrape_interval,
            sd_file=config.prometheus_sd_file or config.data_dir / "prometheus" / "targets.json",
            self_target=self._metrics_target,
        )
        self.api = Api(self)
        self._runners: list[web.AppRunner] = []
        self._tls: ssl.SSLContext | None = None
        self._tls_current: ssl.SSLContext | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self.api_address: tuple[str, int] = config.api
        self.discovery_address: tuple[str, int] = config.discovery
        self.xds: XdsServer | None = None
        self.xds_address: tuple[str, int] | None = None

    def _open_data_dir(self, config: ControlPlaneConfig) -> None:
        """The state kept in DATA_DIR: store, CA, token key, admin token, API tokens,
        audit log. Each file is created with its mode set (0600, directories 0700),
        whatever the umask; an unreadable or lost one stops the start with what to do."""
        data_dir = config.data_dir
        ran_before = has_run_before(data_dir)
        make_dirs(data_dir, 0o700)
        self.store: Store = open_store(
            config.store_url or str(data_dir / "gossamer.db"), expect_existing=ran_before
        )
        # Replicas sharing the store (etcd) keep their own records beside it (0051).
        self.system_store = system_store_for(self.store)
        # Store calls from the event loop run here, off it, with a deadline (0050).
        self.astore = AsyncStore(self.store)
        ca_dir = data_dir / "ca"
        self.ca = CertificateAuthority.initialize(ca_dir, config.trust_domain, config.operator_ca)
        token_key = load_or_create_token_key(ca_dir / "token.key")
        self.tokens = JoinTokenIssuer(
            token_key,
            trust_domain=self.ca.trust_domain,
            ca_fingerprint=self.ca.root_fingerprint(),
        )
        if self.system_store is not None:
            shared_admin_token(data_dir, token_key)  # the same on every replica (0052)
        self.admin_token = load_or_create_admin_token(data_dir)
        # Named API tokens (read or admin); admin.token is the "bootstrap-admin" one.
        self.api_tokens = ApiTokenStore(
            data_dir / "api-tokens.json",
            self.admin_token,
            admin_token_created(data_dir),
            shared=self.system_store,
        )
        self.access = AccessPolicy(
            self.api_tokens,
            auth_reads=config.auth_reads,
            off_loop=self.astore if self.system_store is not None else None,
        )
        # Who changed what, certificates and tokens issued; join-token use counts.
        self.audit = AuditLog(
            data_dir / "audit.db", expect_existing=ran_before, shared=self.system_store
        )
        self.replicas = Replicas(self.system_store, replica_id_for(data_dir), self._addresses)

    def _addresses(self) -> dict[str, str]:
        return {
            "api": "{}:{}".format(*self.api_address),
            "discovery": "{}:{}".format(*self.discovery_address),
        }

    async def replicas_status(self, request: web.Request) -> web.Response:
        """GET /v1/replicas: the replicas sharing the store, the leader, the store's health."""
        rows = await self.astore.run(self.replicas.rows)
        health = await self.astore.run(store_health, self.store)
        return web.json_response(
            {"replica": self.replicas.replica_id, "replicas": rows, "store": health}
        )

    def _metrics_target(self) -> str:
        """Where Prometheus finds the control plane's own /metrics (the API listener)."""
        host, port = self.api_address
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _server_certificate(self) -> tuple[bytes, str]:
        """A fresh key and chain for the discovery listener, naming how proxies dial it."""
        host = self.config.discovery[0]
        ips, names = ["127.0.0.1"], ["localhost"]
        try:
            ipaddress.ip_address(host)
            if host not in ("0.0.0.0", "::"):
                ips.append(host)
        except ValueError:
            names.append(host)
        key_pem, issued = self.ca.issue_server_identity(
            control_plane_identity(self.ca.trust_domain), names, ips, SERVER_CERT_TTL
        )
        return key_pem, issued.chain_pem

    def _make_tls(self) -> ssl.SSLContext:
        # Client certificates are optional: joining proxies have none yet, and the
        # calls that need one check for it.
        key_pem, chain_pem = self._server_certificate()
        return server_context(
            chain_pem, key_pem, self.ca.trust_bundle_pem(), require_client_cert=False
        )

    def _discovery_tls(self) -> ssl.SSLContext:
        # The listener keeps this context; each handshake switches to the current one
        # (see _on_sni), so a new certificate or trust bundle applies at once.
        self._tls = self._tls_current = self._make_tls()
        self._tls.sni_callback = self._on_sni
        return self._tls

    def _on_sni(
        self, ssl_object: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        current = self._tls_current
        if current is not None and current is not ctx:
            ssl_object.context = current

    def refresh_tls(self) -> None:
        """A new certificate from the current intermediate and the current trust bundle
        for new handshakes (renewal, CA rotation); open connections keep theirs."""
        if self._tls is not None:
            self._tls_current = self._make_tls()

    async def _renew_server_certificate(self) -> None:
        while True:
            await asyncio.sleep(SERVER_CERT_TTL.total_seconds() / 3)
            self.refresh_tls()
            log.info("renewed the discovery listener's certificate")

    async def start(self) -> None:
        await self.discovery.start()
        api_app = self.api.app()
        api_app.router.add_get("/v1/replicas", self.replicas_status)
        api_runner = web.AppRunner(api_app, access_log=None)
        await api_runner.setup()
        api_site = web.TCPSite(api_runner, *self.config.api, reuse_address=True)
        await api_site.start()
        self._runners.append(api_runner)
        self.api_address = _bound(api_runner)
        disc_app = self.discovery.app()
        self.hosts.attach(disc_app)
        disc_runner = web.AppRunner(disc_app, access_log=None)
        await disc_runner.setup()
        disc_site = web.TCPSite(
            disc_runner,
            *self.config.discovery,
            ssl_context=self._discovery_tls(),
            reuse_address=True,
        )
        await disc_site.start()
        self._runners.append(disc_runner)
        self.discovery_address = _bound(disc_runner)
        self._renew_task = asyncio.create_task(self._renew_server_certificate())
        if self.config.xds is not None:
            from gossamer.xds.server import XdsServer  # grpcio only when asked for

            self.xds = XdsServer(self)
            self.xds_address = await self.xds.start(self.config.xds)
        await self.replicas.start()  # its addresses are known now
        await self.route_status.start()
        await self.telemetry.start()
        await self.rotation.start()
        log.info(
            "control plane ready: api http://%s:%d, discovery https://%s:%d, trust domain %s",
            *self.api_address,
            *self.discovery_address,
            self.ca.trust_domain,
        )

    async def stop(self) -> None:
        if self._renew_task is not None:
            self._renew_task.cancel()
        await self.rotation.stop()
        await self.telemetry.stop()
        await self.route_status.stop()
        if self.xds is not None:
            await self.xds.stop()
        log.debug("stopping discovery")
        await self.discovery.stop()
        await self.replicas.stop()
        log.debug("closing the store")
        # Closing the store ends open watch streams, so the API can shut down at once.
        self.astore.close()
        self.store.close()
        if self.system_store is not None:
            self.system_store.close()
        self.audit.close()
        for runner in reversed(self._runners):
            log.debug("stopping listener %s", runner.addresses)
            await runner.cleanup()


def _bound(runner: web.AppRunner) -> tuple[str, int]:
    server = runner.addresses[0]
    return str(server[0]), int(server[1])


async def serve(config: ControlPlaneConfig, ready_file: Path | None = None) -> None:
    """Run until SIGINT/SIGTERM."""
    cp = ControlPlane(config)
    await cp.start()
    if ready_file is not None:
        # Written whole and renamed, so a reader never sees half of it; 0644 whatever
        # the umask (it holds addresses, nothing secret).
        tmp = ready_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(
                f"api=http://{cp.api_address[0]}:{cp.api_address[1]}\n"
                f"discovery={cp.discovery_address[0]}:{cp.discovery_address[1]}\n"
            )
            if cp.xds_address is not None:
                f.write(f"xds={cp.xds_address[0]}:{cp.xds_address[1]}\n")
        os.replace(tmp, ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("control plane shutting down")
        with contextlib.suppress(Exception):
            await cp.stop()
