"""The proxy's control-plane client: join, renew, register, follow discovery.

Bootstrap trust: the join token carries the SHA-256 of the CA root it was made
under. The agent fetches the trust bundle over TLS it cannot yet verify, keeps only
the root with that fingerprint, and from then on verifies the control plane against
it (and checks the control plane's SPIFFE ID) before sending the token or a CSR.

Static stability: certificate, key, bundle and the last snapshot are cached in the
state directory. With the control plane gone, the proxy keeps serving from them,
can restart from them, and reconnects with jittered backoff. The cache is bound to the
control plane it came from: state cached from another discovery address, or under a
CA root that a given join token does not pin, is set aside and the proxy joins afresh,
so it never serves another mesh's snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from gossamer.errors import IdentityError
from gossamer.identity.bundle import pinned_root
from gossamer.identity.der import read_pem_certificates
from gossamer.identity.keygen import new_key_and_csr
from gossamer.identity.spiffe import SpiffeId
from gossamer.identity.tls import client_context
from gossamer.identity.tokens import decode_unverified
from gossamer.proxy.agent.client import ControlPlaneClient, ControlPlaneUnavailable, WebSocket
from gossamer.proxy.wire.tls import Credentials
from gossamer.readiness import PROBE_TIMEOUT, ReadinessGate
from gossamer.translate.consistency import check_consistent
from gossamer.translate.snapshot import Snapshot

log = logging.getLogger("gossamer.proxy.agent.session")

# gRPC's connection back-off (1 s, x1.6, +-20% jitter), capped at 30 s rather than
# 120 s: a control plane that restarts keeps a proxy's lease for 60 s (decision 0045).
# The back-off is per round of every replica: on losing one, the next is tried at once.
INITIAL_BACKOFF = 1.0
BACKOFF_MULTIPLIER = 1.6
BACKOFF_JITTER = 0.2
MAX_BACKOFF = 30.0
# The control plane pings every 15 s: this long without any frame, ping included, is
# a dead peer.
STREAM_SILENCE = 45.0
# How often a proxy with an Aggregate TrafficControl rate reports its demand.
DEMAND_INTERVAL = 1.0
# Files of the cache that say where the proxy stands in one mesh.
CACHE_FILES = ("cert.pem", "key.pem", "bundle.pem", "identity.json", "snapshot.json")


class CannotJoin(IdentityError):
    """Joining cannot succeed by retrying: no join token, or one the control plane
    refused (expired, used up, for another identity). The message says what to pass."""


class DataPlaneSink(Protocol):
    def apply_snapshot(self, snapshot: Snapshot) -> None: ...
    def set_credentials(self, creds: Credentials) -> None: ...
    # Aggregate TrafficControl rates (asked only while the snapshot has one): the calls
    # that met each since the last ask, and the control plane's split.
    def control_demand(self) -> dict[str, int]: ...
    def set_control_shares(self, shares: Mapping[str, float]) -> None: ...


@dataclass(frozen=True)
class WorkloadPortSpec:
    port: int
    app_port: int
    name: str | None = None
    app_protocol: str | None = None  # what the app speaks there (proxy.wire.detect)


@dataclass
class AgentConfig:
    discovery: tuple[str, int]  # the first replica tried; the cache is bound to it
    workload: str
    namespace: str
    service_account: str
    address: str
    inbound_port: int
    state_dir: Path
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[WorkloadPortSpec, ...] = ()
    join_token: str | None = None
    interests: frozenset[str] = frozenset()
    app_host: str = "127.0.0.1"
    admin_port: int | None = None  # registered so the control plane can scrape /metrics
    # Other control-plane replicas' discovery addresses: on losing one, the next.
    replicas: tuple[tuple[str, int], ...] = ()


def control_plane_context(bundle_pem: bytes, creds: Credentials | None) -> ssl.SSLContext:
    """Verifies the control plane against the bundle, and by the name the proxy dials.

    Checking the name is what tells the control plane apart from any other holder of
    a mesh certificate: the CA refuses DNS and IP names in every workload's CSR, so
    only the control plane's own certificate carries them.
    """
    if creds is None:
        ctx = client_context(None, None, bundle_pem)
    else:
        ctx = client_context(creds.chain_pem, creds.key_pem, bundle_pem)
    ctx.check_hostname = True
    return ctx


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Agent:
    def __init__(self, config: AgentConfig, dataplane: DataPlaneSink) -> None:
        self.config = config
        self.dataplane = dataplane
        self.interests: set[str] = set(config.interests)
        self.creds: Credentials | None = None
        self.trust_domain: str | None = None
        self.snapshot: Snapshot | None = None
        self.connected = False
        self._ws: WebSocket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        addresses = [config.discovery, *(a for a in config.replicas if a != config.discovery)]
        self._clients = [ControlPlaneClient(*address) for address in addresses]
        self._current = 0
        self._backoff = Backoff(len(self._clients))
        self.registered = False
        self.app_ready: bool | None = None  # as last reported to the control plane
        self.readiness = ReadinessGate()
        self.leaving = False  # once set, the workload is never registered again
        self._streamed = False  # the current stream has delivered a snapshot
        # Set by a "renew" message (a CA rotation): renew now, not at two thirds of life.
        self._renew_now = asyncio.Event()
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- cache --------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.config.state_dir / name

    def load_cache(self) -> bool:
        """Serve from the last good state, if there is one. True when credentials were found."""
        try:
            chain = self._path("cert.pem").read_bytes()
            key = self._path("key.pem").read_bytes()
            bundle = self._path("bundle.pem").read_bytes()
            meta = json.loads(self._path("identity.json").read_text())
        except (OSError, ValueError):
            return False
        foreign = self._foreign_cache(meta, bundle)
        if foreign:
            log.warning(
                "cached state in %s is not for this control plane (%s): setting it aside "
                "and joining afresh",
                self.config.state_dir,
                foreign,
            )
            for name in CACHE_FILES:
                self._path(name).unlink(missing_ok=True)
            return False
        creds = Credentials.from_pem(chain, key, bundle)
        if creds.not_after <= datetime.now(UTC):
            log.warning("cached certificate expired at %s; joining again", creds.not_after)
            return False
        self.creds, self.trust_domain = creds, meta["trust_domain"]
        self.dataplane.set_credentials(creds)
        try:
            snapshot = Snapshot.from_json(self._path("snapshot.json").read_text())
            check_consistent(snapshot)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.info("no usable cached snapshot (%s)", err)
        else:
            self.snapshot = snapshot
            self.interests |= set(snapshot.interests)
            self.dataplane.apply_snapshot(snapshot)
            log.info("serving cached snapshot %s until the control plane answers", snapshot.version)
        return True

    @property
    def _control_plane(self) -> str:
        host, port = self.config.discovery
        return f"{host}:{port}"

    def _foreign_cache(self, meta: Any, bundle: bytes) -> str:
        """Why the cache belongs to another mesh, or "" when it is this one's."""
        if not isinstance(meta, dict):
            return "identity.json is not an object"
        cached = meta.get("controlPlane")
        if cached is not None and cached != self._control_plane:
            return f"it came from the control plane at {cached}"
        token = self.config.join_token
        if token:
            try:
                claims = decode_unverified(token)
                pinned_root(bundle, claims.ca_fingerprint)
            except IdentityError:
                return "the join token pins a CA root the cached trust bundle does not hold"
            if claims.trust_domain != meta.get("trust_domain"):
                return f"the join token is for trust domain {claims.trust_domain!r}"
        return ""

    def _save_credentials(self, creds: Credentials) -> None:
        _write_private(self._path("key.pem"), creds.key_pem)
        _write_private(self._path("cert.pem"), creds.chain_pem)
        _write_private(self._path("bundle.pem"), creds.bundle_pem)
        _write_private(
            self._path("identity.json"),
            json.dumps(
                {"trust_domain": self.trust_domain, "controlPlane": self._control_plane}
            ).encode(),
        )

    # -- control plane calls ------------------------------------------------------

    @property
    def _client(self) -> ControlPlaneClient:
        return self._clients[self._current]

    def _fail_over(self) -> None:
        """The current replica failed: the next one is asked from now on."""
        if len(self._clients) > 1:
            self._current = (self._current + 1) % len(self._clients)
            log.info("control plane: trying the replica at %s next", self.base_url)

    @property
    def base_url(self) -> str:
        host, port = self._client.host, self._client.port
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{port}"

    async def _call(
        self, method: str, path: str, ctx: ssl.SSLContext, body: dict[str, Any] | None = None
    ) -> Any:
        assert self.trust_domain is not None
        status, data = await self._client.request(method, path, ctx, body)
        if status >= 400:
            raise IdentityError(f"{method} {path}: {status} {_message(data)}")
        return data

    async def join(self) -> None:
        """Join token → pinned root → CSR → certificate."""
        token = self.config.join_token
        if not token:
            raise CannotJoin(
                "no join token and no cached credentials: pass --join-token (or set "
                "GOSSAMER_JOIN_TOKEN) with a token from `gossamer token create`, or "
                "--token-file with an admin token to mint one"
            )
        try:
            claims = decode_unverified(token)
        except IdentityError as err:
            raise CannotJoin(f"the join token cannot be read: {err}") from err
        self.trust_domain = claims.trust_domain
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # only to read the bundle, checked by the pin
        _, bundle = await self._client.request("GET", "/v1/identity/bundle", insecure)
        if not isinstance(bundle, str):
            raise IdentityError("the control plane's trust bundle is not PEM text")
        root = pinned_root(bundle, claims.ca_fingerprint).encode()
        identity = SpiffeId(claims.trust_domain, claims.namespace, claims.service_account)
        if (identity.namespace, identity.service_account) != (
            self.config.namespace,
            self.config.service_account,
        ):
            raise CannotJoin(
                f"the join token grants {identity}, but this proxy runs as namespace "
                f"{self.config.namespace!r}, service account {self.config.service_account!r}"
            )
        key, csr = await new_key_and_csr(identity)
        status, data = await self._client.request(
            "POST",
            "/v1/identity/certificates",
            control_plane_context(root, None),
            {"token": token, "csr": csr.decode()},
        )
        if status in (401, 403):  # the token itself was refused: retrying cannot help
            raise CannotJoin(f"the control plane refused the join token: {_message(data)}")
        if status >= 400:
            raise IdentityError(f"join: {status} {_message(data)}")
        self._adopt(data, key)
        log.info(
            "joined the mesh as %s (certificate until %s)",
            identity,
            self.creds.not_after if self.creds else "?",
        )

    def _adopt(self, data: dict[str, Any], key: bytes) -> None:
        creds = Credentials.from_pem(
            data["certificateChain"].encode(), key, data["trustBundle"].encode()
        )
        self.creds = creds
        self._save_credentials(creds)
        self.dataplane.set_credentials(creds)

    async def renew(self) -> None:
        assert self.creds is not None and self.trust_domain is not None
        identity = SpiffeId(self.trust_domain, self.config.namespace, self.config.service_account)
        key, csr = await new_key_and_csr(identity)
        data = await self._call(
            "POST",
            "/v1/identity/renew",
            control_plane_context(self.creds.bundle_pem, self.creds),
            {"csr": csr.decode()},
        )
        self._adopt(data, key)
        log.info("renewed certificate (until %s)", self.creds.not_after)
        await self._send_status()

    async def _send_status(self) -> None:
        ws, creds = self._ws, self.creds
        if ws is not None and not ws.closed and creds is not None:
            await ws.send_json({"type": "status", **creds.status()})

    def _adopt_bundle(self, bundle: str) -> None:
        """Verify peers (and the control plane) against ``bundle`` from now on.

        The snapshot carries the trust bundle, so a CA rotation reaches every proxy by
        discovery: the new root is trusted before any peer presents a certificate under
        it, and the old one is dropped once no peer does.
        """
        creds = self.creds
        if creds is None or bundle.encode() == creds.bundle_pem:
            return
        roots = read_pem_certificates(bundle, "the snapshot's trust bundle")
        creds = replace(creds, bundle_pem=bundle.encode())
        self.dataplane.set_credentials(creds)
        self.creds = creds
        self._save_credentials(creds)
        log.info("trust bundle changed: now %d root(s)", len(roots))

    def _ctx(self) -> ssl.SSLContext:
        assert self.creds is not None
        return control_plane_context(self.creds.bundle_pem, self.creds)

    def workload_object(self) -> dict[str, Any]:
        c = self.config
        ports = []
        for p in c.ports:
            entry: dict[str, Any] = {"port": p.port, "appPort": p.app_port}
            if p.name:
                entry["name"] = p.name
            if p.app_protocol:
                entry["appProtocol"] = p.app_protocol
            ports.append(entry)
        spec: dict[str, Any] = {
            "address": c.address,
            "inboundPort": c.inbound_port,
            "serviceAccount": c.service_account,
            "ports": ports,
        }
        if c.admin_port is not None:
            spec["adminPort"] = c.admin_port
        return {
            "apiVersion": "gossamer.dev/v1alpha1",
            "kind": "Workload",
            "metadata": {"name": c.workload, "namespace": c.namespace, "labels": c.labels},
            "spec": spec,
        }

    async def register(self) -> None:
        if self.leaving:
            return
        c = self.config
        await self._call(
            "PUT", f"/v1/workloads/{c.namespace}/{c.workload}", self._ctx(), self.workload_object()
        )
        self.registered = True

    async def probe_app(self) -> tuple[bool, str]:
        """Is the app listening on every port it serves? A connect is enough to know."""
        for p in self.config.ports:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    _, writer = await asyncio.open_connection(self.config.app_host, p.app_port)
            except (OSError, TimeoutError):
                return False, f"app not listening on {self.config.app_host}:{p.app_port}"
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return True, ""

    async def report_readiness(self, force: bool = False) -> None:
        if self.snapshot is None:
            # Until the first snapshot the inbound listener does not know the
            # workload's ports: a peer sent here would get a 404, however ready the app.
            ready, message = False, "its proxy has no configuration from the control plane yet"
        else:
            ok, message = await self.probe_app()
            ready = self.readiness.observe(ok)
            if ready and not ok:
                log.debug(
                    "readiness probe failed (%d in a row; not ready after %d): %s",
                    self.readiness.failures,
                    self.readiness.threshold,
                    message,
                )
                message = ""
        if ready == self.app_ready and not force:
            return
        c = self.config
        await self._call(
            "PUT",
            f"/v1/workloads/{c.namespace}/{c.workload}/status",
            self._ctx(),
            {"ready": ready, "message": message},
        )
        if ready != self.app_ready:
            log.info("app is %s", "ready" if ready else f"not ready ({message})")
        self.app_ready = ready

    async def _readiness_loop(self) -> None:
        while True:
            # Quick while the app starts, relaxed once it serves.
            await asyncio.sleep(1.0 if self.app_ready else 0.2)
            if not self.registered:
                continue
            try:
                await self.report_readiness()
            except (ControlPlaneUnavailable, OSError, TimeoutError, IdentityError) as err:
                log.debug("could not report readiness: %s", err)

    async def deregister(self) -> None:
        c = self.config
        if self.creds is None or not self.registered:
            return
        await self._call("DELETE", f"/v1/workloads/{c.namespace}/{c.workload}", self._ctx())
        self.registered = False
        log.info("workload %s/%s removed from the mesh", c.namespace, c.workload)

    # -- running ------------------------------------------------------------------

    def subscribe(self, service: str) -> None:
        """The data plane met a service it has not seen: ask for it (no duplicate asks)."""
        if service in self.interests:
            return
        self.interests.add(service)
        ws = self._ws
        if ws is not None and not ws.closed:
            task = asyncio.get_running_loop().create_task(
                ws.send_json({"type": "subscribe", "services": [service]})
            )
            self._tasks.append(task)

    async def start(self) -> None:
        """Get credentials (cache first, then join, retrying), then follow the control plane."""
        cached = self.load_cache()
        if not cached:
            await self._retry("join", self.join)
        self._tasks.append(asyncio.create_task(self._follow(), name="agent-follow"))
        self._tasks.append(asyncio.create_task(self._renew_loop(), name="agent-renew"))
        self._tasks.append(asyncio.create_task(self._demand_loop(), name="agent-demand"))
        if self.config.ports:
            self._tasks.append(asyncio.create_task(self._readiness_loop(), name="agent-ready"))

    async def _retry(self, what: str, call: Any) -> None:
        backoff = Backoff(len(self._clients))
        while True:
            try:
                await call()
                return
            except CannotJoin:
                raise
            except IdentityError as err:
                delay = backoff.failed()
                log.warning("%s failed: %s; retrying in %.1fs", what, err, delay)
            except (TimeoutError, ControlPlaneUnavailable, OSError) as err:
                delay = backoff.failed()
                log.warning(
                    "%s: control plane unreachable at %s (%s); retrying in %.1fs",
                    what,
                    self.base_url,
                    err or type(err).__name__,
                    delay,
                )
                self._fail_over()
            await asyncio.sleep(delay)

    async def _demand_loop(self) -> None:
        """Every DEMAND_INTERVAL, while the snapshot has an Aggregate rate and the
        stream is up: how many calls met each, so the control plane can split it."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(DEMAND_INTERVAL)
            snapshot, ws = self.snapshot, self._ws
            now = loop.time()
            if snapshot is None or not any(
                c.rate is not None and c.rate.aggregate for c in snapshot.controls
            ):
                last = now
                continue
            demand = self.dataplane.control_demand()
            if ws is not None and not ws.closed:
                with contextlib.suppress(Exception):  # the stream's own loop sees it go
                    await ws.send_json(
                        {"type": "demand", "seconds": round(now - last, 3), "edges": demand}
                    )
            last = now

    async def _renew_loop(self) -> None:
        while True:
            assert self.creds is not None
            wait = (self.creds.renew_at() - datetime.now(UTC)).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), timeout=max(wait, 0))
            self._renew_now.clear()
            await self._retry("certificate renewal", self.renew)

    async def _follow(self) -> None:
        backoff = self._backoff
        while True:
            self._streamed = False
            failed = ""
            try:
                await self.register()
                if self.config.ports:
                    await self.report_readiness(force=True)
                await self._stream()
            except (TimeoutError, ControlPlaneUnavailable, OSError, IdentityError) as err:
                failed = str(err) or type(err).__name__
            finally:
                self.connected = False
                self._ws = None
            if self._streamed:
                # It worked: whatever ended it (a replica going away, or rebalancing
                # an old stream), come back at once, to any replica.
                backoff.reset()
                if len(self._clients) > 1:
                    self._current = random.randrange(len(self._clients))
            delay = backoff.failed()
            if failed:
                log.warning(
                    "discovery at %s: %s; serving the last snapshot, retrying in %.1fs",
                    self.base_url,
                    failed,
                    delay,
                )
            if failed or not self._streamed:
                self._fail_over()
            await asyncio.sleep(delay)

    async def _stream(self) -> None:
        assert self.trust_domain is not None
        ws = await self._client.websocket("/v1/discovery", self._ctx())
        try:
            await ws.send_json(
                {
                    "type": "hello",
                    "workload": self.config.workload,
                    "namespace": self.config.namespace,
                    "interests": sorted(self.interests),
                    **(self.creds.status() if self.creds else {}),
                }
            )
            self._ws = ws
            self.connected = True
            log.info("following discovery at %s", self.base_url)
            while True:
                text = await ws.receive(silence=STREAM_SILENCE)
                if text is None:
                    break
                await self._on_message(ws, json.loads(text))
            if ws.close_code not in (None, 1000):
                raise ControlPlaneUnavailable(f"stream closed with code {ws.close_code}")
        finally:
            await ws.close()

    async def _on_message(self, ws: WebSocket, msg: dict[str, Any]) -> None:
        if msg.get("type") == "error":
            raise IdentityError(f"control plane refused the stream: {msg.get('message')}")
        if msg.get("type") == "renew":
            log.info("control plane asks for renewal now: %s", msg.get("reason", ""))
            self._renew_now.set()
            return
        if msg.get("type") == "shares":
            edges = msg.get("edges")
            if isinstance(edges, dict):
                self.dataplane.set_control_shares(
                    {k: float(v) for k, v in edges.items() if isinstance(v, int | float)}
                )
            return
        if msg.get("type") != "snapshot":
            return
        self._streamed = True  # the control plane serves this proxy
        version = str(msg.get("version", ""))
        try:
            snapshot = Snapshot.from_dict(msg["snapshot"])
            check_consistent(snapshot)
            # Trust first, so the ack below says the new bundle is in use.
            self._adopt_bundle(snapshot.trust_bundle)
            self.dataplane.apply_snapshot(snapshot)
        except Exception as err:  # a bad snapshot must never replace a good one
            log.error("rejected snapshot %s: %s", version, err)
            await ws.send_json({"type": "nack", "version": version, "error": str(err)})
            return
        self.snapshot = snapshot
        _write_private(self._path("snapshot.json"), snapshot.to_json().encode())
        await ws.send_json({"type": "ack", "version": version})
        log.debug("applied snapshot %s", version)

    async def leave(self) -> None:
        """Leave the mesh but keep serving: peers stop choosing this workload while
        requests already on their way still find it."""
        self.leaving = True
        try:
            async with asyncio.timeout(3):
                await self.deregister()
        except (ControlPlaneUnavailable, OSError, TimeoutError, IdentityError) as err:
            log.warning("could not remove workload from the mesh: %s", err)

    async def stop(self, deregister: bool = True) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if deregister:
            try:
                async with asyncio.timeout(3):
                    await self.deregister()
            except (TimeoutError, ControlPlaneUnavailable, OSError, IdentityError) as err:
                log.warning("could not remove workload from the mesh: %s", err)
        ws = self._ws
        if ws is not None:
            await ws.close()


def _message(data: Any) -> Any:
    """The message of an API error body, or the body itself."""
    error = data.get("error") if isinstance(data, dict) else None
    return error.get("message") if isinstance(error, dict) else data


class Backoff:
    """Delays between attempts over `replicas` control-plane replicas: the next replica
    at once (a little jitter, so a replica's proxies do not all arrive in the same
    instant), and gRPC's exponential back-off only once every replica failed in turn."""

    def __init__(self, replicas: int) -> None:
        self.replicas = max(replicas, 1)
        self.reset()

    def reset(self) -> None:
        self._delay = INITIAL_BACKOFF
        self._failures = 0

    def failed(self) -> float:
        """Record one failed attempt; return how long to wait before the next."""
        self._failures += 1
        if self._failures % self.replicas:
            return random.uniform(0.0, 0.1 * INITIAL_BACKOFF)  # another replica, now
        delay = self._delay * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
        self._delay = min(self._delay * BACKOFF_MULTIPLIER, MAX_BACKOFF)
        return delay
