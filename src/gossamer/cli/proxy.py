"""`gossamer proxy` and `gossamer run -- CMD`: the data plane beside a workload.

`gossamer run` stays resident as the supervisor of the proxy and the app, so what
only the proxy needs (asyncio, logging, the data plane) is imported where the proxy
starts, not here: the supervisor is about half the memory it would otherwise be.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossamer.cli.capture import add_run_flags as add_capture_flags
from gossamer.cli.common import add_join_flags, fail, host_port
from gossamer.cli.envoy import add_engine_flags
from gossamer.dns.names import DEFAULT_SERVICE_CIDR
from gossamer.errors import GossamerError

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Coroutine


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _port(text: str) -> tuple[int, int, str | None, str | None]:
    """`8080`, `8080:18080`, `http=8080:18080` or `db=5432/tcp` → (container port, app
    port, name, appProtocol)."""
    from gossamer.resources import validate_label_key

    head, _, protocol = text.partition("/")  # appProtocol may hold one: kubernetes.io/h2c
    name, sep, rest = head.rpartition("=")
    container, _, app = rest.partition(":")
    try:
        c = int(container)
        a = int(app) if app else c
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not [NAME=]CONTAINER_PORT[:APP_PORT][/APP_PROTOCOL]"
        ) from None
    if not (0 < c < 65536 and 0 < a < 65536):
        raise argparse.ArgumentTypeError(f"{text!r}: ports must be 1-65535")
    if protocol and (errors := validate_label_key(protocol)):
        raise argparse.ArgumentTypeError(f"{text!r}: appProtocol: {'; '.join(errors)}")
    return c, a, (name if sep else None), (protocol or None)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 1 to 64")
    return int(text)


def _upstream(text: str) -> tuple[str, int, str, int]:
    """`SVC[.NS]:PORT=LOCAL_HOST:LOCAL_PORT`."""
    remote, sep, local = text.partition("=")
    svc, _, port = remote.rpartition(":")
    try:
        lhost, lport = host_port(local)
        if not sep or not svc or not port.isdigit():
            raise ValueError
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not SVC[.NS]:PORT=LOCAL_HOST:LOCAL_PORT"
        ) from None
    return svc, int(port), lhost, lport


def _service_cidr(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.IPv4Network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IPv4 network like 240.240.0.0/16"
        ) from None


def add_proxy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="workload name (unique in its namespace)")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument(
        "--service-account",
        default="default",
        help="service account: the workload's identity (default: default)",
    )
    p.add_argument(
        "-l",
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="workload label, selected by Services (repeatable)",
    )
    p.add_argument(
        "--port",
        type=_port,
        action="append",
        default=[],
        metavar="[NAME=]PORT[:APP_PORT][/APP_PROTOCOL]",
        help="a port the workload serves: mesh traffic for PORT goes to the app "
        "on APP_PORT; APP_PROTOCOL (tcp, http, http2, grpc...) says what the app speaks "
        "there, else it is detected (repeatable)",
    )
    p.add_argument(
        "--upstream",
        type=_upstream,
        action="append",
        default=[],
        metavar="SVC:PORT=HOST:PORT",
        help="open a local listener carried over mTLS to a service port: HTTP is "
        "routed, anything else carried as opaque TCP (repeatable)",
    )
    p.add_argument(
        "--detect-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="how long a connection whose protocol is not declared may send nothing "
        "before it is carried as opaque TCP (default: 3; see docs/protocols.md)",
    )
    p.add_argument(
        "--inbound",
        type=host_port,
        default=("0.0.0.0", 4143),
        help="mTLS inbound listener (default: 0.0.0.0:4143)",
    )
    p.add_argument(
        "--outbound",
        type=host_port,
        default=("127.0.0.1", 4140),
        help="outbound listener for the app (default: 127.0.0.1:4140)",
    )
    p.add_argument(
        "--admin",
        type=host_port,
        default=("127.0.0.1", 4191),
        help="admin listener: /ready /live /metrics /config (default: 127.0.0.1:4191)",
    )
    p.add_argument(
        "--address",
        help="address peers use to reach this proxy (default: the "
        "inbound host, or 127.0.0.1 when that is 0.0.0.0)",
    )
    p.add_argument("--app-host", default="127.0.0.1", help="where the app listens")
    add_join_flags(
        p,
        "join token (default: $GOSSAMER_JOIN_TOKEN; with the admin token the proxy mints its own)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where certificates and the last snapshot are cached (default: "
        "$XDG_STATE_HOME/gossamer/NAMESPACE-NAME)",
    )
    p.add_argument(
        "--access-log",
        metavar="PATH|-",
        default=os.environ.get("GOSSAMER_ACCESS_LOG"),
        help="write one JSON line per request to PATH, or - for standard output "
        "(default: $GOSSAMER_ACCESS_LOG, else off)",
    )
    p.add_argument(
        "--dns",
        type=host_port,
        metavar="HOST:PORT",
        help="answer DNS here (UDP and TCP): services by name with their virtual IPs, "
        "anything else forwarded to the host's resolver; with --capture the app's DNS comes "
        "here (docs/decisions/0061-mesh-dns-and-virtual-ips.md)",
    )
    p.add_argument(
        "--service-cidr",
        type=_service_cidr,
        default=DEFAULT_SERVICE_CIDR,
        help=f"the range services' virtual IPs are in (default: {DEFAULT_SERVICE_CIDR})",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=1.0,
        help="on shutdown, keep serving this long after leaving the mesh, so peers "
        "learn of it before the listeners close (default: 1)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="data-plane processes serving the listeners (SO_REUSEPORT), fed by one "
        "agent; more than 1 uses more cores (default: 1; see docs/decisions/"
        "0100-proxy-workers.md)",
    )
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    # gossamer run: a pipe on which it writes its app's process group, for the proxy to
    # end that group if gossamer run itself is killed (see run_wrapped).
    p.add_argument("--app-group-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_engine_flags(p)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # No abbreviations: `--join-tok` would slip past _proxy_command's rewriting.
    p = sub.add_parser(
        "proxy",
        allow_abbrev=False,
        help="run the proxy for one workload",
        description="Join the mesh (join token → certificate), register the workload, follow "
        "discovery, and carry the workload's traffic with mTLS.",
    )
    add_proxy_flags(p)
    p.set_defaults(func=run_proxy)

    r = sub.add_parser(
        "run",
        allow_abbrev=False,
        help="run a command with a proxy beside it",
        description="Start the proxy, wait until it is ready, then run CMD with HTTP_PROXY "
        "and GOSSAMER_OUTBOUND pointing at the outbound listener (and without "
        "GOSSAMER_TOKEN or GOSSAMER_JOIN_TOKEN). CMD runs in its own process group: "
        "signals go to it after the workload has left the mesh; the exit code is CMD's; "
        "the proxy, CMD and what CMD started end with gossamer run, even on kill -9.",
        usage="gossamer run [proxy flags] -- CMD [ARGS...]",
    )
    add_proxy_flags(r)
    add_capture_flags(r)
    r.add_argument(
        "--host-proxy",
        type=Path,
        metavar="SOCKET",
        help="no sidecar: register the workload with the host's proxy (`gossamer host`) "
        "on its unix socket; the workload keeps its own identity (docs/per-host.md)",
    )
    r.add_argument("command", nargs=argparse.REMAINDER, help="the app to run, after --")
    r.set_defaults(func=run_wrapped)


def _mint_join_token(args: argparse.Namespace) -> str | None:
    from gossamer.cli.client import ApiError, Client

    token_file = args.token_file
    if not token_file and not os.environ.get("GOSSAMER_TOKEN"):
        return None
    try:
        client = Client.from_settings(args.server, token_file)
        result = client.request(
            "POST",
            "/v1/tokens",
            body=json.dumps(
                {
                    "namespace": args.namespace,
                    "serviceAccount": args.service_account,
                    "ttlSeconds": 600,
                }
            ).encode(),
        )
    except ApiError as err:
        fail(f"could not mint a join token: {err.message}")
    return str(result["token"])


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "gossamer" / f"{args.namespace}-{args.name}"


async def _serve(
    args: argparse.Namespace, ready: asyncio.Event, stop: asyncio.Event, leave: asyncio.Event
) -> None:
    import asyncio
    import gc

    from gossamer.proxy.agent.session import Agent, AgentConfig, WorkloadPortSpec
    from gossamer.proxy.dataplane import DataPlane, DataPlaneConfig
    from gossamer.proxy.outbound.tcp import TcpUpstream

    upstreams = []
    for svc, port, lhost, lport in args.upstream:
        name, _, ns = svc.partition(".")
        upstreams.append(
            TcpUpstream(
                service=name, namespace=ns or None, port=port, listen_host=lhost, listen_port=lport
            )
        )
    dp_config = DataPlaneConfig(
        outbound=args.outbound,
        inbound=args.inbound,
        admin=args.admin,
        app_host=args.app_host,
        upstreams=tuple(upstreams),
        access_log=args.access_log,
        dns=args.dns,
        service_cidr=args.service_cidr,
    )
    if args.detect_timeout is not None:  # else DataPlaneConfig's default
        dp_config.detect_timeout = args.detect_timeout
    dp_config.reuse_port = args.workers > 1
    agent_ref: list[Agent] = []
    dataplane = DataPlane(dp_config, on_interest=lambda s: agent_ref[0].subscribe(s))
    await dataplane.start()
    workers = None
    if args.workers > 1:
        from gossamer.workers import WorkerSet

        workers = WorkerSet(dataplane, args.workers, args.log_level)
        try:
            await workers.start()
        except BaseException:
            await workers.stop()
            await dataplane.close()
            raise
    inbound_port = int(_hp(dataplane.inbound_address).rsplit(":", 1)[1])
    address = args.address or (
        args.inbound[0] if args.inbound[0] not in ("0.0.0.0", "::") else "127.0.0.1"
    )
    interests = set()
    for svc, *_ in args.upstream:
        name, _, ns = svc.partition(".")
        interests.add(f"{name}.{ns or args.namespace}")
    agent = Agent(
        AgentConfig(
            discovery=args.discovery,
            replicas=args.discovery_replicas,
            workload=args.name,
            namespace=args.namespace,
            service_account=args.service_account,
            address=address,
            inbound_port=inbound_port,
            state_dir=_state_dir(args),
            labels=dict(args.label),
            ports=tuple(WorkloadPortSpec(c, a, n, proto) for c, a, n, proto in args.port),
            join_token=args.join_token or _mint_join_token(args),
            interests=frozenset(interests),
            app_host=args.app_host,
            admin_port=_scrapable_admin_port(dataplane.admin_address, address),
        ),
        dataplane,
    )
    agent_ref.append(agent)
    try:
        # Joining may wait on an unreachable control plane for as long as it takes:
        # a signal still stops the proxy meanwhile.
        if not await _until_stopped(agent.start(), stop):
            return
        while not dataplane.ready and not stop.is_set():
            await asyncio.sleep(0.05)
        if args.ready_file:
            tmp = args.ready_file.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "outbound": _hp(dataplane.outbound_address),
                        "inbound": _hp(dataplane.inbound_address),
                        "admin": _hp(dataplane.admin_address),
                    }
                )
            )
            os.replace(tmp, args.ready_file)
        ready.set()
        # Everything allocated so far lives as long as the proxy: keep it out of the
        # collector's way, and collect the young generation less often, so garbage
        # collection does not stretch the latency tail.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 20, 20)

        async def leave_on_request() -> None:
            await leave.wait()
            await agent.leave()

        leaving = asyncio.create_task(leave_on_request())
        await stop.wait()
        leaving.cancel()
    finally:
        was_registered = agent.registered
        await agent.stop(deregister=True)
        if was_registered and args.drain_seconds > 0:
            await asyncio.sleep(args.drain_seconds)
        await dataplane.close()
        if workers is not None:
            await workers.stop()


async def _until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` is set first (then cancel it): True when it finished."""
    import asyncio

    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False
    task.result()  # its error, if it failed
    return True


def _scrapable_admin_port(admin: tuple[str, int] | None, address: str) -> int | None:
    """The admin port, when the control plane can reach it at the workload's address."""
    if admin is None:
        return None
    host, port = admin
    if host in ("0.0.0.0", "::", address):
        return port
    import logging

    logging.getLogger("gossamer.run").info(
        "admin listener %s:%d is not reachable at %s: the control plane will not scrape it "
        "(listen on %s or 0.0.0.0 to be scraped)",
        host,
        port,
        address,
        address,
    )
    return None


def _hp(address: tuple[str, int] | None) -> str:
    assert address is not None, "listeners are bound once the data plane has started"
    return f"{address[0]}:{address[1]}"


def _install_loop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def _end_orphaned_app(fd: int | None, parent: int) -> None:
    """`gossamer run` was killed (this proxy outlived its parent): end its app's whole
    process group, which PR_SET_PDEATHSIG alone does not reach (the app's children)."""
    if fd is None or os.getppid() == parent:
        return  # the supervisor is alive and ends its app itself
    try:
        data = os.read(fd, 64)  # its writer is gone: this cannot block
        pgid = int(data.split()[0])
    except (OSError, ValueError, IndexError):
        return  # it died before the app started
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def _raise_fd_limit() -> None:
    """Every connection is a descriptor: take the hard RLIMIT_NOFILE, not the soft one
    (often 1,024). The data plane keeps a share of it back for the admin listener and
    for connections to peers and the app (proxy.wire.limits)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_proxy(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    if args.engine == "envoy":
        from gossamer.cli.envoy import run_envoy_proxy

        if args.workers > 1:
            # Said, not ignored: Envoy runs one worker thread here (--concurrency 1).
            fail("--workers is for Gossamer's own proxy, not --engine envoy")
        return run_envoy_proxy(args)

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _install_loop()
    _raise_fd_limit()
    parent = os.getppid()

    async def main() -> None:
        stop, ready, leave = asyncio.Event(), asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # SIGUSR1: leave the mesh but keep serving (`gossamer run` sends it before it
        # passes a shutdown signal on to the app).
        loop.add_signal_handler(signal.SIGUSR1, lambda: leave.set())
        await _serve(args, ready, stop, leave)

    try:
        asyncio.run(main())
    except GossamerError as err:
        fail(str(err))
    except OSError as err:
        fail(
            f"cannot start the proxy: {err}",
            hint="pick free ports with --inbound, --outbound and --admin",
        )
    finally:
        _end_orphaned_app(args.app_group_fd, parent)
    return 0


# Never in the app's environment: control-plane credentials stay with the proxy.
CREDENTIAL_VARIABLES = ("GOSSAMER_TOKEN", "GOSSAMER_JOIN_TOKEN")


def _die_with_supervisor(signum: int, then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A preexec_fn: the child gets `signum` when the supervisor dies, even by SIGKILL;
    `then` runs after (the proxy of a captured workload takes its own group)."""
    from gossamer.lifeline import die_with_parent

    parent = os.getpid()

    def arm() -> None:
        # The supervisor's catch-all handlers (remember) are inherited until exec: a
        # SIGTERM before then would be remembered by nobody and lost.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        die_with_parent(signum, parent)
        if then is not None:
            then()

    return arm


def _proxy_command(proxy_flags: list[str], ready_file: Path) -> tuple[list[str], dict[str, str]]:
    """The proxy's command line and environment. A join token on the command line moves
    to the environment: any local user can read a process's arguments. `-P` keeps the
    working directory (the app's, perhaps writable by it) off the import path of the
    process that holds the workload's key."""
    env = dict(os.environ)
    flags: list[str] = []
    rest = iter(proxy_flags)
    for flag in rest:
        if flag == "--join-token":
            env["GOSSAMER_JOIN_TOKEN"] = next(rest, "")
        elif flag.startswith("--join-token="):
            env["GOSSAMER_JOIN_TOKEN"] = flag.partition("=")[2]
        else:
            flags.append(flag)
    command = [sys.executable, "-P", "-m", "gossamer.cli.main", "proxy", *flags]
    return [*command, "--ready-file", str(ready_file)], env


def app_environment(outbound: str, admin: str, http_proxy: bool = True) -> dict[str, str]:
    """What the app runs with: the supervisor's environment less every control-plane
    credential, plus where its proxy listens (and HTTP_PROXY, unless its traffic is
    captured: then the app is left as it is)."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    env.update({"GOSSAMER_OUTBOUND": outbound, "GOSSAMER_ADMIN": admin})
    if http_proxy:
        url = f"http://{outbound}"
        env.update(
            {
                "HTTP_PROXY": url,
                "http_proxy": url,
                "NO_PROXY": "localhost,127.0.0.1",
                "no_proxy": "localhost,127.0.0.1",
            }
        )
    return env


def run_wrapped(args: argparse.Namespace) -> int:
    """The proxy runs as a child `gossamer proxy`; the app starts once it is ready.

    Both children die with the supervisor (PR_SET_PDEATHSIG), even when it is killed
    with SIGKILL: the proxy gets SIGTERM and leaves the mesh, the app SIGKILL. With
    --capture, the rules are in place before the proxy starts and gone after both end."""
    from gossamer.cli.capture import captured

    if args.host_proxy is not None:
        from gossamer.host.run import run_hosted

        return run_hosted(args)
    with captured(args) as as_proxy_group:
        return _supervise(args, as_proxy_group)


def _supervise(args: argparse.Namespace, as_proxy_group: Callable[[], None] | None) -> int:
    import tempfile
    import time

    from gossamer.cli.capture import strip_run_flags

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("no command to run", hint="gossamer run --name web --port 8080 -- python app.py")
    raw: list[str] = args.raw_argv
    proxy_flags = strip_run_flags(
        raw[raw.index("run") + 1 : raw.index("--") if "--" in raw else len(raw)]
    )
    received: list[int] = []

    def remember(signum: int, _frame: Any) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, remember)
    group_r, group_w = os.pipe()
    with tempfile.TemporaryDirectory(prefix="gossamer-run-") as tmp:
        ready_file = Path(tmp) / "ready.json"
        proxy_command, proxy_env = _proxy_command(proxy_flags, ready_file)
        proxy = subprocess.Popen(
            [*proxy_command, "--app-group-fd", str(group_r)],
            env=proxy_env,
            preexec_fn=_die_with_supervisor(signal.SIGTERM, then=as_proxy_group),
            pass_fds=(group_r,),
        )
        os.close(group_r)
        deadline = time.monotonic() + 60
        while not ready_file.exists():
            if proxy.poll() is not None:
                fail(f"the proxy exited with code {proxy.returncode} before it was ready")
            if received:
                _stop(proxy)
                return 128 + received[0]
            if time.monotonic() > deadline:
                _stop(proxy)
                fail(
                    "the proxy was not ready after 60s: it could not join or reach the "
                    "control plane (its log above says why)"
                )
            time.sleep(0.05)
        addresses = json.loads(ready_file.read_text())
    try:
        # Its own process group: signals reach the app and every process it starts, after
        # the proxy has left the mesh (not straight from the terminal), and what it
        # leaves behind ends with it.
        app = subprocess.Popen(
            command,
            env=app_environment(
                addresses["outbound"], addresses["admin"], http_proxy=not args.capture
            ),
            preexec_fn=_die_with_supervisor(signal.SIGKILL),
            process_group=0,
        )
    except OSError as err:
        _stop(proxy)
        fail(f"cannot start {command[0]}: {err.strerror}")
    with contextlib.suppress(OSError):
        os.write(group_w, b"%d\n" % app.pid)  # for the proxy, should this process be killed

    left = proxy_gone = False
    while app.poll() is None:
        if as_proxy_group is not None and not proxy_gone and proxy.poll() is not None:
            proxy_gone = True
            print(
                f"gossamer run: the proxy exited with code {proxy.returncode}: the app's "
                "captured connections are refused until a proxy listens again (fail closed)",
                file=sys.stderr,
            )
        if received:
            if not left:
                # Leave the mesh first and give peers a moment to hear of it, so no
                # request is sent to an app that is shutting down.
                left = True
                with contextlib.suppress(ProcessLookupError):
                    proxy.send_signal(signal.SIGUSR1)
                drain_until = time.monotonic() + args.drain_seconds
                while app.poll() is None and time.monotonic() < drain_until:
                    time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(app.pid, received.pop(0))
        time.sleep(0.05)
    code = app.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(app.pid, signal.SIGKILL)  # what the app left running
    _stop(proxy)
    os.close(group_w)
    return code if code >= 0 else 128 - code


def _stop(proxy: subprocess.Popen[bytes]) -> None:
    if proxy.poll() is None:
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def admin_get(address: str, path: str, timeout: float = 2.0) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as resp:
        data: bytes = resp.read()
        return data


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
