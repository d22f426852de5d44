"""`gossamer host`: one proxy for every workload on this host (per-host mode).

Workloads join it with `gossamer run --host-proxy SOCKET -- CMD`. See docs/per-host.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from gossamer.cli.common import add_join_flags, fail
from gossamer.errors import GossamerError

DEFAULT_SOCKET = "/run/gossamer/host.sock"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "host",
        allow_abbrev=False,
        help="run one proxy for every workload on this host",
        description="Join the mesh as host NAME (a join token for ns gossamer-hosts, service "
        "account NAME), then serve each workload that registers on --socket with its own "
        "listeners, certificate and configuration. The control plane gives this host only "
        "the identities its Host object lists.",
    )
    p.add_argument("--name", required=True, help="the host's name: its Host object's name")
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a host config file (YAML or JSON, kind HostConfiguration): workloads to serve "
        "besides those registering on --socket, each by network namespace or by uid; "
        "applied again on SIGHUP and when it changes (a bad file is rejected whole, the "
        "workloads already served go on). See docs/per-host.md",
    )
    p.add_argument(
        "--remove-capture",
        action="store_true",
        help="remove the capture rules of the host's uid workloads (which stay in place "
        "while no host proxy runs, so their traffic is refused, not sent uncaptured), "
        "and exit",
    )
    add_join_flags(
        p,
        "the host's join token (default: $GOSSAMER_JOIN_TOKEN); or --token-file with "
        "the admin token to mint one",
    )
    p.add_argument(
        "--socket",
        type=Path,
        default=Path(DEFAULT_SOCKET),
        help=f"where workloads register (mode 0600; default: {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="certificates and snapshots (default: $XDG_STATE_HOME/gossamer/host-NAME)",
    )
    p.add_argument(
        "--proxy-gid",
        type=int,
        help="run with this group id (root keeps its uid): workloads captured with "
        "`gossamer run --host-proxy --capture` exclude the proxy's own connections by it "
        "(their --capture-proxy-gid, 1337 by default)",
    )
    p.add_argument(
        "--max-connections-per-workload",
        type=int,
        default=2048,
        metavar="N",
        help="each workload's cap on its open connections, so one cannot starve the "
        "others of the process's descriptors (default: 2048)",
    )
    p.add_argument(
        "--max-in-flight-per-workload",
        type=int,
        default=1024,
        metavar="N",
        help="each workload's cap on requests in flight, both directions: over it a new "
        "HTTP/1.1 request gets 503 and an HTTP/2 stream REFUSED_STREAM, for that workload "
        "only (default: 1024)",
    )
    p.add_argument(
        "--take-over",
        action="store_true",
        help="upgrade or restart without dropping traffic: take the workloads, listening "
        "sockets and registration socket of the host proxy running on --socket, which "
        "drains and exits (if none runs, start afresh)",
    )
    p.add_argument(
        "--handover-drain-seconds",
        type=float,
        default=30.0,
        help="after handing over: how long connections may finish (default: 30)",
    )
    p.add_argument("--drain-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--config-poll-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run_host)


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "gossamer" / f"host-{args.name}"


def _remove_capture() -> int:
    from gossamer.capture.rules import CaptureError
    from gossamer.host import capture

    try:
        found = capture.remove()
    except CaptureError as err:
        fail(str(err))
    print("capture removed" if found else "no capture rules were installed")
    return 0


def run_host(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gossamer.cli.proxy import _install_loop, _mint_join_token, _raise_fd_limit
    from gossamer.host import HOSTS_NAMESPACE
    from gossamer.host.proxy import HostConfig, HostProxy

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.remove_capture:
        return _remove_capture()
    _install_loop()
    _raise_fd_limit()
    if args.max_connections_per_workload < 1:
        fail("--max-connections-per-workload must be at least 1")
    if args.max_in_flight_per_workload < 1:
        fail("--max-in-flight-per-workload must be at least 1")
    if args.proxy_gid is not None:
        # Before any thread: every socket of this process, in every workload's network
        # namespace, is then this group's, which those workloads' capture rules let pass.
        try:
            os.setgroups([])
            os.setgid(args.proxy_gid)
        except OSError as err:
            fail(f"--proxy-gid {args.proxy_gid}: {err.strerror or err}", hint="run as root")
    if not args.join_token:
        args.namespace, args.service_account = HOSTS_NAMESPACE, args.name
        args.join_token = _mint_join_token(args)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        proxy = HostProxy(
            HostConfig(
                name=args.name,
                discovery=args.discovery,
                replicas=args.discovery_replicas,
                state_dir=_state_dir(args),
                socket_path=args.socket,
                join_token=args.join_token,
                drain_seconds=args.drain_seconds,
                max_connections=args.max_connections_per_workload,
                max_in_flight=args.max_in_flight_per_workload,
                handover_drain_seconds=args.handover_drain_seconds,
                config_path=args.config,
                config_poll_seconds=args.config_poll_seconds,
                proxy_gid=args.proxy_gid,
            )
        )
        # SIGHUP: apply the host config file again (the file changing does it too).
        loop.add_signal_handler(signal.SIGHUP, lambda: proxy.spawn(proxy.reload(), "reload"))
        try:
            await proxy.start(take_over=args.take_over)
            if args.ready_file:
                tmp = args.ready_file.with_suffix(".tmp")
                tmp.write_text(json.dumps({"socket": str(args.socket)}))
                os.replace(tmp, args.ready_file)
            # Until a signal, or until the next process took every workload over and
            # this one has drained.
            stopped = asyncio.ensure_future(stop.wait())
            retired = asyncio.ensure_future(proxy.retired.wait())
            await asyncio.wait({stopped, retired}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            retired.cancel()
        finally:
            await proxy.close()

    try:
        asyncio.run(main())
    except GossamerError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot start the host proxy: {err}")
    return 0
