"""`gossamer host`: one process, one event loop, every workload on the host.

Each registered workload gets what a sidecar has, in this process: its own `DataPlane`
(listeners, certificate, snapshot, metrics, tap) and its own control-plane session (a
`HostedAgent`: it registers the Workload, follows discovery, reports readiness). Only the
certificate differs: it is obtained as the host, under node authorization. So peers,
authorization policies, golden metrics and tap see the workload, as with a sidecar, and
sidecars elsewhere interoperate unchanged.

Workloads register on a unix socket (`--socket`, mode 0600: whoever may write it may put
a workload on this host, within what the operator's Host object allows). One JSON line
asks, one JSON line answers; the connection then stands for the workload: when it
closes (its `gossamer run` ended, or was killed), the workload leaves the mesh, its
connections drain and its listeners close. A connection is attributed to a workload by
the listener it arrived on: every workload has its own (docs/decisions/0065).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import struct
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from gossamer.capture.rules import CaptureError, CaptureSpec, HostCaptureSpec, UidCapture
from gossamer.errors import GossamerError, IdentityError, InvalidResource
from gossamer.host import capture
from gossamer.host.config import ConfigFile, plan
from gossamer.host.fairness import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT, share_fairly
from gossamer.host.handover import Channel, HandoverError
from gossamer.host.identity import HostedAgent, HostSession, NotOnHost
from gossamer.host.netns import (
    NamespaceThread,
    check_namespace,
    open_namespace,
    same_namespace,
)
from gossamer.proxy.agent.session import AgentConfig, WorkloadPortSpec
from gossamer.proxy.dataplane import DataPlane, DataPlaneConfig
from gossamer.resources.host import ConfiguredWorkload, HostConfiguration

log = logging.getLogger("gossamer.host")

MAX_REQUEST: Final = 64 * 1024
REQUEST_TIMEOUT: Final = 5.0
READY_TIMEOUT: Final = 60.0

Address = tuple[str, int]
T = TypeVar("T")


class BadRegistration(ValueError):
    """A registration that cannot be served; the message names the field."""


def _address(raw: Any, what: str) -> Address:
    if not isinstance(raw, str):
        raise BadRegistration(f"{what}: required, HOST:PORT")
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise BadRegistration(f"{what}: {raw!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _text(raw: dict[str, Any], key: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise BadRegistration(f"{key}: required, a string")
    return value


def _cidr(raw: Any) -> str | None:
    if raw is None:
        return None
    import ipaddress

    try:
        return str(ipaddress.IPv4Network(str(raw), strict=False))
    except ValueError:
        raise BadRegistration(f"serviceCidr: {raw!r} is not an IPv4 network") from None


@dataclass(frozen=True)
class Registration:
    """What a workload asks the host proxy for: the flags `gossamer proxy` takes."""

    name: str
    namespace: str
    service_account: str
    address: str
    inbound: Address
    outbound: Address
    admin: Address
    app_host: str = "127.0.0.1"
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[WorkloadPortSpec, ...] = ()
    dns: Address | None = None  # mesh DNS (decision 0061), for a captured workload
    service_cidr: str | None = None
    # Only from the host config file (the operator's): the workload's own network
    # namespace, opened by the host proxy, or the uid whose traffic is captured to it.
    netns_path: str | None = None
    uid: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @classmethod
    def from_json(cls, raw: Any, *, configured: bool = False) -> Registration:
        """Read a registration; `configured` when it comes from the host config file,
        which alone may name a network namespace by path or a uid to capture."""
        if not isinstance(raw, dict):
            raise BadRegistration("the registration must be a JSON object")
        for key in ("netns", "uid"):
            if raw.get(key) is not None and not configured:
                raise BadRegistration(
                    f"{key}: only the host config file (gossamer host --config) may set it"
                )
        uid = raw.get("uid")
        if uid is not None and (isinstance(uid, bool) or not isinstance(uid, int) or uid < 1):
            raise BadRegistration("uid: must be a positive integer")
        netns_path = raw.get("netns")
        if netns_path is not None and not isinstance(netns_path, str):
            raise BadRegistration("netns: must be a path")
        labels = raw.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise BadRegistration("labels: must map strings to strings")
        ports = []
        for i, p in enumerate(raw.get("ports") or ()):
            try:
                port, app_port = int(p["port"]), int(p.get("appPort", p["port"]))
                name, protocol = p.get("name"), p.get("appProtocol")
            except (KeyError, TypeError, ValueError, AttributeError):
                raise BadRegistration(f"ports[{i}]: needs port (and appPort) numbers") from None
            if not (0 < port < 65536 and 0 < app_port < 65536):
                raise BadRegistration(f"ports[{i}]: ports must be 1-65535")
            ports.append(WorkloadPortSpec(port, app_port, name, protocol))
        inbound = _address(raw.get("inbound"), "inbound")
        return cls(
            name=_text(raw, "name"),
            namespace=_text(raw, "namespace", "default"),
            service_account=_text(raw, "serviceAccount", "default"),
            address=_text(raw, "address", inbound[0]),
            inbound=inbound,
            outbound=_address(raw.get("outbound"), "outbound"),
            admin=_address(raw.get("admin"), "admin"),
            app_host=_text(raw, "appHost", "127.0.0.1"),
            labels=dict(labels),
            ports=tuple(ports),
            dns=_address(raw["dns"], "dns") if raw.get("dns") else None,
            service_cidr=_cidr(raw.get("serviceCidr")),
            netns_path=netns_path,
            uid=uid,
        )


@dataclass
class HostedWorkload:
    registration: Registration
    dataplane: DataPlane
    agent: HostedAgent
    state_dir: Path
    peer: dict[str, int]
    # What the workload sent, as sent: handed to the next process on a handover.
    raw: dict[str, Any] = field(default_factory=dict)
    # Its registration connection: the lease (closed: the workload leaves).
    lease: socket.socket | None = None
    # The thread inside the workload's network namespace that runs its data plane, and
    # a descriptor of that namespace; None (-1) when it shares the host proxy's.
    namespace: NamespaceThread | None = None
    netns: int = -1
    handed_over: bool = False
    # Who registered it: a `gossamer run --host-proxy` ("socket"; its lease ends it) or
    # the host config file ("config"; a reload that drops it ends it).
    source: str = "socket"


@dataclass(frozen=True)
class HostConfig:
    name: str
    discovery: Address
    state_dir: Path
    socket_path: Path
    join_token: str | None = None
    replicas: tuple[Address, ...] = ()
    drain_seconds: float = 1.0
    # After a handover, how long connections may finish their requests before closing.
    handover_drain_seconds: float = 30.0
    # Each workload's cap on its connections (gossamer.host.fairness).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # The host config file (gossamer.host.config): workloads registered by the operator.
    config_path: Path | None = None
    config_poll_seconds: float = 1.0
    # The group this process runs as (gossamer host --proxy-gid): its sockets are never
    # captured, per uid on this host either.
    proxy_gid: int | None = None
    # And on its requests in flight.
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT


class HostProxy:
    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self.session = HostSession(
            config.name,
            config.discovery,
            config.state_dir / "host",
            config.join_token,
            config.replicas,
        )
        self.workloads: dict[tuple[str, str], HostedWorkload] = {}
        self._starting: set[tuple[str, str]] = set()
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._handing_over = False
        # Set once this process has handed its workloads over and drained.
        self.retired = asyncio.Event()
        self._config = ConfigFile(config.config_path) if config.config_path else None
        self._config_lock = asyncio.Lock()
        self._captured = False  # whether uid capture rules are installed (by this file)
        # Entries of the host config file refused at the last reload, and why.
        self.config_refused: dict[tuple[str, str], str] = {}

    def spawn(self, coro: Any, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self, take_over: bool = False) -> None:
        """The host's certificate, then the workloads of the host proxy running on our
        socket (`take_over`), or else a registration socket of our own; then the
        workloads of the host config file. A config file that cannot be read or does
        not validate is an error before anything starts."""
        config = self._read_config() if self._config is not None else None
        await self.session.start()
        if not (take_over and await self.take_over()):
            self._listen()
        if config is not None:
            async with self._config_lock:
                await self._apply(config)
            self.spawn(self._watch_config(), name="config")

    def _read_config(self) -> HostConfiguration:
        assert self._config is not None
        try:
            return self._config.read()
        except InvalidResource as err:  # it names the file: "PATH: workloads[1].uid: ..."
            raise GossamerError(f"host config {err}") from None
        except OSError as err:
            raise GossamerError(f"host config {self._config.path}: {err.strerror or err}") from None

    def _listen(self) -> None:
        path = self.config.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.spawn(self._accept_loop(sock), name="accept")
        log.info("host %s: workloads register at %s", self.config.name, path)

    # -- handing over to the next process -------------------------------------------

    async def _hand_over(self, conn: socket.socket, peer: dict[str, int]) -> None:
        """Give every workload, and the registration socket, to the process on `conn`;
        then drain and retire (`retired` is set)."""
        loop = asyncio.get_running_loop()
        if peer.get("uid") != os.getuid() or self._sock is None:
            await _reply(loop, conn, {"ok": False, "error": "only this user may take over"})
            conn.close()
            return
        self._handing_over = True  # no reload of the host config file from here on
        async with self._config_lock:
            await self._give_all(conn, peer)

    async def _give_all(self, conn: socket.socket, peer: dict[str, int]) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        log.info("handing %d workload(s) over to pid %s", len(self.workloads), peer.get("pid"))
        conn.setblocking(True)
        channel = Channel(conn)
        hosted_all = list(self.workloads.values())
        try:
            for hosted in hosted_all:
                await self._send_workload(channel, hosted)
            await asyncio.to_thread(channel.send, {"done": True}, [self._sock.fileno()])
        except (HandoverError, OSError) as err:
            log.error("handover failed, serving on: %s", err)
            conn.close()
            self._handing_over = False
            return
        # From here on the next process serves: accept nothing more (new connections
        # wait in the shared sockets' queues), leave the control plane to it, and free
        # what cannot be shared (mesh DNS's ports) before it starts the workloads.
        for task in list(self._tasks):
            if task is not asyncio.current_task() and task.get_name() in ("accept", "config"):
                task.cancel()
        self._sock.close()
        self._sock = None
        for hosted in hosted_all:
            hosted.handed_over = True
            await self._on_loop(hosted, _stop_serving(hosted))
        with contextlib.suppress(HandoverError, OSError):
            await asyncio.to_thread(channel.send, {"released": True}, ack=False)
        try:
            answer, _ = await asyncio.to_thread(channel.receive)
        except HandoverError as err:
            answer = {"error": str(err)}
        conn.close()
        if answer.get("ok") is not True:
            log.error("the next process did not take over: %s", answer.get("error", answer))
        deadline = loop.time() + self.config.handover_drain_seconds
        await asyncio.gather(
            *(self._stop(h, _drain(h, deadline - loop.time())) for h in hosted_all)
        )
        self.workloads.clear()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        log.info("handed over and drained: this process is done")
        self.retired.set()

    async def _send_workload(self, channel: Channel, hosted: HostedWorkload) -> None:
        listeners = await self._on_loop(hosted, _listening(hosted.dataplane))
        names = sorted(listeners)
        # A workload from the host config file has no lease: the file says whether it stays.
        leases = [hosted.lease.fileno()] if hosted.lease is not None else []
        fds = [*leases, *(listeners[n].fileno() for n in names)]
        if hosted.netns >= 0:
            fds.append(hosted.netns)
        message = {
            "registration": hosted.raw,
            "peer": hosted.peer,
            "listeners": names,
            "netns": hosted.netns >= 0,
            "lease": bool(leases),
            "source": hosted.source,
        }
        try:
            await asyncio.to_thread(channel.send, message, fds)
        finally:
            for name in names:
                if name != "inbound":  # the others are duplicates made to be sent
                    listeners[name].close()

    async def take_over(self) -> bool:
        """Take the workloads of the host proxy running on our socket, if one is; False
        when none answers (then `start` binds the socket afresh)."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(self.config.socket_path))
        except OSError as err:
            conn.close()
            log.info("no host proxy to take over from at %s (%s)", self.config.socket_path, err)
            return False
        channel = Channel(conn)
        given: list[tuple[dict[str, Any], list[int]]] = []
        try:
            conn.sendall(b'{"handover": true}\n')
            while True:
                message, fds = await asyncio.to_thread(channel.receive)
                await asyncio.to_thread(channel.ack)
                if message.get("done") is True:
                    break
                given.append((message, fds))
            [registrations] = fds
            released, _ = await asyncio.to_thread(channel.receive)
            if released != {"released": True}:
                raise HandoverError(f"the running host proxy did not let go: {released}")
            for message, fds in given:
                await self._take_workload(message, fds)
            sock = socket.socket(fileno=registrations)
            sock.setblocking(False)
            self._sock = sock
            self.spawn(self._accept_loop(sock), name="accept")
            await asyncio.to_thread(channel.send, {"ok": True}, ack=False)
        except (HandoverError, OSError, ValueError, BadRegistration) as err:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"ok": False, "error": str(err)}).encode() + b"\n")
            raise HandoverError(f"taking over failed: {err}") from err
        finally:
            conn.close()
        log.info("took over %d workload(s); workloads register at %s", len(given),
                 self.config.socket_path)  # fmt: skip
        return True

    async def _take_workload(self, message: dict[str, Any], fds: list[int]) -> None:
        names = message.get("listeners") or []
        netns = fds[-1] if message.get("netns") else -1
        configured = message.get("source") == "config"
        lease = socket.socket(fileno=fds.pop(0)) if message.get("lease", True) else None
        listeners = {n: socket.socket(fileno=fd) for n, fd in zip(names, fds, strict=False)}
        registration = Registration.from_json(message.get("registration"), configured=configured)
        peer = message.get("peer") or {}
        hosted = await self._start_in_namespace(registration, peer, netns, listeners)
        hosted.raw, hosted.lease = message["registration"], lease
        self.workloads[registration.key] = hosted
        if configured:
            hosted.source = "config"
        if lease is not None:
            lease.setblocking(False)
            self.spawn(self._hold_lease(hosted))

    # -- the host config file (gossamer.host.config) -----------------------------------

    async def reload(self) -> None:
        """Apply the host config file again (SIGHUP): what changed, and the entries
        refused before (the Host object may allow them now)."""
        if self._config is None:
            log.warning("reload asked for, but this host proxy has no --config")
            return
        await self._reload()

    async def _watch_config(self) -> None:
        assert self._config is not None
        while True:
            await asyncio.sleep(self.config.config_poll_seconds)
            if self._config.changed():
                log.info("host config %s changed: reloading", self._config.path)
                await self._reload()

    async def _reload(self) -> None:
        # A reload that fails in a way nobody foresaw must not end the watch (or leave
        # an exception no task retrieves): the workloads served go on, the log says why.
        try:
            await self.apply_config()
        except Exception:
            log.exception("reloading host config %s failed", self.config.config_path)

    async def apply_config(self) -> bool:
        """Serve what the host config file lists now; False when it is rejected (then
        the workloads already served keep serving, and the log says why)."""
        assert self._config is not None
        async with self._config_lock:
            if self._handing_over or self._closed:
                return False
            try:
                config = self._read_config()
            except GossamerError as err:
                log.error("%s; rejected whole, the workloads already served keep serving", err)
                return False
            await self._apply(config)
            return True

    async def _apply(self, config: HostConfiguration) -> None:
        path = self.config.config_path
        served = {k: h for k, h in self.workloads.items() if h.source == "config"}
        registered = frozenset(k for k, h in self.workloads.items() if h.source != "config")
        todo = plan(config, {k: h.raw for k, h in served.items()}, registered | self._starting)
        stopping = [self.workloads.pop(key) for key in todo.stop]
        await asyncio.gather(*(self._stop(h) for h in stopping))
        self.config_refused = {
            w.key: f"{w.namespace}/{w.name} is registered by `gossamer run --host-proxy`"
            for w in todo.taken
        }
        starting = list(todo.start)
        if not self._install_capture(config):
            for w in [w for w in starting if w.uid is not None]:
                starting.remove(w)
                self.config_refused[w.key] = "its uid's capture rules could not be installed"
        results = await asyncio.gather(*(self._start_configured(w) for w in starting))
        for w, error in zip(starting, results, strict=True):
            if error is not None:
                self.config_refused[w.key] = error
        for (namespace, name), why in sorted(self.config_refused.items()):
            log.error("host config %s: workload %s/%s refused: %s", path, namespace, name, why)
        log.info(
            "host config %s applied: %d workload(s) from it served (%d stopped, %d started), "
            "%d refused",
            path,
            sum(1 for h in self.workloads.values() if h.source == "config"),
            len(stopping),
            len(starting) - sum(1 for r in results if r is not None),
            len(self.config_refused),
        )

    def _install_capture(self, config: HostConfiguration) -> bool:
        """The capture rules of the file's uid workloads, all of them, served or not: a
        workload refused (or not up yet) has its connections refused, not sent out
        uncaptured. False when they could not be installed."""
        spec = self._capture_spec(config)
        if spec is None:
            return True
        try:
            if spec.workloads:
                capture.install(spec)
            else:
                capture.remove()
        except CaptureError as err:
            log.error("host config %s: %s", self.config.config_path, err)
            return False
        return True

    def _capture_spec(self, config: HostConfiguration) -> HostCaptureSpec | None:
        """None when neither this file nor an earlier one captured any uid."""
        workloads = tuple(
            UidCapture(
                w.uid,
                CaptureSpec(
                    outbound_port=_port(w.outbound),
                    inbound_port=_port(w.inbound),
                    inbound_ports=tuple(p.port for p in w.ports),
                    exclude_outbound_cidrs=(self.config.discovery[0],),
                    dns_port=_port(w.dns) if w.dns else None,
                ),
            )
            for w in config.workloads
            if w.uid is not None
        )
        if not workloads and not self._captured:
            return None
        self._captured = bool(workloads)
        return HostCaptureSpec(workloads, proxy_uid=os.getuid(), proxy_gid=self.config.proxy_gid)

    async def _start_configured(self, entry: ConfiguredWorkload) -> str | None:
        """Start one workload of the host config file; None, or why it was refused."""
        raw = entry.registration()
        key = entry.key
        self._starting.add(key)
        netns = -1
        try:
            registration = Registration.from_json(raw, configured=True)
            if registration.netns_path is not None:
                netns = open_namespace(registration.netns_path)
                if same_namespace(netns):
                    os.close(netns)
                    netns = -1
            given, netns = netns, -1  # _start_in_namespace takes it, even when it fails
            hosted = await self._start_in_namespace(registration, {}, given)
        except (BadRegistration, NotOnHost, OSError, TimeoutError, IdentityError) as err:
            return str(err)
        finally:
            self._starting.discard(key)
            if netns >= 0:
                os.close(netns)
        hosted.raw, hosted.source = raw, "config"
        self.workloads[key] = hosted
        return None

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            self.spawn(self._registration(conn))

    async def _registration(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        peer = _peer_credentials(conn)
        try:
            raw, fds = await asyncio.to_thread(_read_request, conn)
        except BadRegistration as err:
            log.warning("registration refused (peer %s): %s", peer, err)
            await _reply(loop, conn, {"ok": False, "error": str(err)})
            conn.close()
            return
        if isinstance(raw, dict) and raw.get("handover") is True:
            for fd in fds:
                os.close(fd)
            await self._hand_over(conn, peer)
            return
        hosted = await self._register(conn, raw, fds, peer)
        if hosted is None:
            conn.close()
            return
        await self._hold_lease(hosted)

    async def _register(
        self, conn: socket.socket, raw: Any, fds: list[int], peer: dict[str, int]
    ) -> HostedWorkload | None:
        """Start the workload `raw` asks for and answer; None when refused (answered)."""
        loop = asyncio.get_running_loop()
        netns, *others = fds or [-1]
        for fd in others:
            os.close(fd)
        if netns >= 0 and same_namespace(netns):
            os.close(netns)
            netns = -1
        key: tuple[str, str] | None = None
        try:
            if netns >= 0:
                check_namespace(netns, "the descriptor sent as the workload's namespace")
            registration = Registration.from_json(raw)
            if registration.key in self.workloads or registration.key in self._starting:
                raise BadRegistration(
                    f"workload {registration.namespace}/{registration.name} is already "
                    "registered on this host"
                )
            key = registration.key
            self._starting.add(key)
            given, netns = netns, -1  # _start_in_namespace takes it, even when it fails
            hosted = await self._start_in_namespace(registration, peer, given)
        except (BadRegistration, NotOnHost, OSError, TimeoutError, IdentityError) as err:
            log.warning("registration refused (peer %s): %s", peer, err)
            await _reply(loop, conn, {"ok": False, "error": str(err)})
            return None
        finally:
            if key is not None:
                self._starting.discard(key)
            if netns >= 0:
                os.close(netns)
        hosted.raw, hosted.lease = raw, conn
        self.workloads[registration.key] = hosted
        await _reply(loop, conn, {"ok": True, **_addresses(hosted.dataplane)})
        return hosted

    async def _hold_lease(self, hosted: HostedWorkload) -> None:
        """The registration's connection is the workload's lease: when its supervisor
        ends (or is killed), the workload leaves. Not when it was handed over: the next
        process holds the lease then."""
        loop = asyncio.get_running_loop()
        lease = hosted.lease
        assert lease is not None
        try:
            while await loop.sock_recv(lease, 1024):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            lease.close()
            if not hosted.handed_over:
                self.workloads.pop(hosted.registration.key, None)
                await self._stop(hosted)

    async def _start_in_namespace(
        self,
        reg: Registration,
        peer: dict[str, int],
        netns: int,
        listeners: dict[str, socket.socket] | None = None,
    ) -> HostedWorkload:
        """Start the workload's data plane here, or, when it has a network namespace of
        its own (`netns` >= 0, taken: closed here if the start fails), on a thread inside
        that namespace; on the `listeners` handed over by the previous process, if any."""
        if netns < 0:
            return await self._start_workload(reg, peer, listeners)
        try:
            kept = os.dup(netns)  # for a handover; the thread owns `netns`
        except OSError:
            os.close(netns)
            raise
        thread = NamespaceThread(netns, f"{reg.namespace}-{reg.name}")
        try:
            await thread.start()
            hosted = await thread.run(self._start_workload(reg, peer, listeners))
        except BaseException:
            os.close(kept)
            await thread.close()
            raise
        hosted.namespace, hosted.netns = thread, kept
        return hosted

    async def _on_loop(self, hosted: HostedWorkload, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop of the workload's data plane."""
        if hosted.namespace is None:
            return await coro
        return await hosted.namespace.run(coro)

    async def _stop(
        self, hosted: HostedWorkload, stop: Coroutine[Any, Any, None] | None = None
    ) -> None:
        """Stop the workload (leave the mesh, drain, close), or run `stop` instead (a
        drain after a handover); then end its namespace's thread."""
        thread = hosted.namespace
        try:
            await self._on_loop(hosted, stop or self._stop_workload(hosted))
        finally:
            if thread is not None:
                await thread.close()
            if hosted.netns >= 0:
                os.close(hosted.netns)
                hosted.netns = -1

    async def _start_workload(
        self,
        reg: Registration,
        peer: dict[str, int],
        listeners: dict[str, socket.socket] | None = None,
    ) -> HostedWorkload:
        dataplane_config = DataPlaneConfig(
            outbound=reg.outbound,
            inbound=reg.inbound,
            admin=reg.admin,
            app_host=reg.app_host,
            listen_sockets=listeners or {},
        )
        if reg.dns is not None:
            dataplane_config.dns = reg.dns
        if reg.service_cidr is not None:
            dataplane_config.service_cidr = reg.service_cidr
        agent_ref: list[HostedAgent] = []
        dataplane = DataPlane(dataplane_config, on_interest=lambda s: agent_ref[0].subscribe(s))
        # One workload cannot take the descriptors, connections or requests of the others.
        share_fairly(dataplane, self.config.max_connections, self.config.max_in_flight)
        await dataplane.start()
        state_dir = self.config.state_dir / "workloads" / f"{reg.namespace}-{reg.name}"
        inbound = dataplane.inbound_address
        admin = dataplane.admin_address
        assert inbound is not None and admin is not None
        agent = HostedAgent(
            AgentConfig(
                discovery=self.config.discovery,
                replicas=self.config.replicas,
                workload=reg.name,
                namespace=reg.namespace,
                service_account=reg.service_account,
                address=reg.address,
                inbound_port=inbound[1],
                state_dir=state_dir,
                labels=reg.labels,
                ports=reg.ports,
                app_host=reg.app_host,
                admin_port=admin[1] if admin[0] in ("0.0.0.0", "::", reg.address) else None,
            ),
            dataplane,
            self.session,
        )
        agent_ref.append(agent)
        hosted = HostedWorkload(reg, dataplane, agent, state_dir, peer)
        dataplane.add_config_section("host", lambda: {"host": self.config.name, **peer})
        try:
            await agent.start()
            async with asyncio.timeout(READY_TIMEOUT):
                while not dataplane.ready:
                    await asyncio.sleep(0.05)
        except BaseException:
            await agent.stop(deregister=True)
            await dataplane.close()
            shutil.rmtree(state_dir, ignore_errors=True)
            raise
        log.info("serving workload %s/%s (registered by %s)", reg.namespace, reg.name, peer)
        return hosted

    async def _stop_workload(self, hosted: HostedWorkload) -> None:
        """Leave the mesh, let peers hear of it, then close: what is in flight drains."""
        reg = hosted.registration
        was_registered = hosted.agent.registered
        await hosted.agent.stop(deregister=True)
        if was_registered and self.config.drain_seconds > 0 and not self._closed:
            await asyncio.sleep(self.config.drain_seconds)
        await hosted.dataplane.close()
        # A workload registered again joins afresh: node authorization decides again.
        shutil.rmtree(hosted.state_dir, ignore_errors=True)
        log.info("workload %s/%s left this host", reg.namespace, reg.name)

    async def close(self) -> None:
        self._closed = True
        if self._captured and not self.retired.is_set():  # (else the next process serves)
            log.warning(
                "the capture rules of this host's uid workloads stay installed: their "
                "connections are refused until a host proxy serves them again (remove the "
                "rules with `gossamer host --remove-capture`)"
            )
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(OSError):
                self.config.socket_path.unlink()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for hosted in list(self.workloads.values()):
            await self._stop(hosted)
        self.workloads.clear()
        await self.session.stop()


async def _listening(dp: DataPlane) -> dict[str, socket.socket]:
    return dp.listening_sockets()


async def _stop_serving(hosted: HostedWorkload) -> None:
    """After a handover: accept nothing more, and stop the control-plane session (the
    next process has its own) without deregistering the workload."""
    hosted.dataplane.stop_accepting()
    await hosted.agent.stop(deregister=False)


async def _drain(hosted: HostedWorkload, seconds: float) -> None:
    """Close connections as their requests finish, then the data plane."""
    dp = hosted.dataplane
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while dp.idle_connections_closed() and loop.time() < deadline:
        await asyncio.sleep(0.1)
    await dp.close()


def _port(listener: str) -> int:
    return int(listener.rpartition(":")[2])


def _addresses(dp: DataPlane) -> dict[str, str]:
    def hp(address: Address | None) -> str:
        assert address is not None
        return f"{address[0]}:{address[1]}"

    return {
        "outbound": hp(dp.outbound_address),
        "inbound": hp(dp.inbound_address),
        "admin": hp(dp.admin_address),
    }


def _peer_credentials(conn: socket.socket) -> dict[str, int]:
    """The registering process (SO_PEERCRED): pid, uid, gid."""
    try:
        data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return {}
    pid, uid, gid = struct.unpack("3i", data)
    return {"pid": pid, "uid": uid, "gid": gid}


def _read_request(conn: socket.socket) -> tuple[Any, list[int]]:
    """One JSON line and the descriptors sent with it (the workload's network namespace),
    blocking, bounded in size and time: run in a thread."""
    conn.settimeout(REQUEST_TIMEOUT)
    data = b""
    fds: list[int] = []
    try:
        while b"\n" not in data:
            chunk, got, _, _ = socket.recv_fds(conn, 4096, 4)
            fds.extend(got)
            if not chunk:
                raise BadRegistration("the connection closed before a registration")
            data += chunk
            if len(data) > MAX_REQUEST:
                raise BadRegistration(f"the registration is larger than {MAX_REQUEST} bytes")
    except TimeoutError:
        raise BadRegistration(f"no registration within {REQUEST_TIMEOUT:.0f}s") from None
    finally:
        conn.setblocking(False)
    line = data.split(b"\n", 1)[0]
    try:
        return json.loads(line), fds
    except (ValueError, RecursionError):
        for fd in fds:
            os.close(fd)
        raise BadRegistration("the registration is not JSON") from None


async def _reply(
    loop: asyncio.AbstractEventLoop, conn: socket.socket, answer: dict[str, Any]
) -> None:
    with contextlib.suppress(OSError):
        await loop.sock_sendall(conn, json.dumps(answer).encode() + b"\n")
