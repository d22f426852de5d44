"""`gossamer run --host-proxy SOCKET -- CMD`: a workload served by the host's proxy.

The supervisor registers the workload with `gossamer host` on its unix socket (the same
flags a sidecar takes, as JSON, and this process's network namespace as a file
descriptor), waits for the answer (the workload's listeners, certificate and first
snapshot are ready), then runs CMD as `gossamer run` does with a sidecar. The
registration's connection stays open while CMD runs: it is the workload's lease on the
host proxy, so the workload leaves the mesh when this process ends, however it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gossamer.cli.common import fail

REGISTER_TIMEOUT = 90.0


def registration(args: argparse.Namespace) -> dict[str, Any]:
    """The registration `gossamer host` reads (gossamer.host.proxy.Registration)."""
    inbound, outbound, admin = args.inbound, args.outbound, args.admin
    address = args.address or (inbound[0] if inbound[0] not in ("0.0.0.0", "::") else "127.0.0.1")
    return {
        "name": args.name,
        "namespace": args.namespace,
        "serviceAccount": args.service_account,
        "labels": dict(args.label),
        "ports": [
            {"port": c, "appPort": a, "name": n, "appProtocol": proto}
            for c, a, n, proto in args.port
        ],
        "inbound": f"{inbound[0]}:{inbound[1]}",
        "outbound": f"{outbound[0]}:{outbound[1]}",
        "admin": f"{admin[0]}:{admin[1]}",
        "address": address,
        "appHost": args.app_host,
        "dns": f"{args.dns[0]}:{args.dns[1]}" if args.dns else None,
        "serviceCidr": args.service_cidr,
    }


class NotRegistered(Exception):
    """The host proxy could not be reached, or refused the workload (the message says)."""

    def __init__(self, message: str, hint: str | None = None, *, final: bool = False) -> None:
        super().__init__(message)
        self.hint = hint
        self.final = final  # refused: asking again cannot help


def register(path: Path, request: dict[str, Any]) -> tuple[socket.socket, dict[str, str]]:
    """Register with the host proxy at `path`; the open connection and the workload's
    listener addresses. This process's network namespace goes along (SCM_RIGHTS), so a
    host proxy in another namespace opens the workload's listeners in this one."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        return sock, _register(sock, path, request)
    except BaseException:
        sock.close()
        raise


def _register(sock: socket.socket, path: Path, request: dict[str, Any]) -> dict[str, str]:
    try:
        sock.connect(str(path))
    except OSError as err:
        raise NotRegistered(
            f"cannot reach the host proxy at {path}: {err.strerror or err}",
            "start it with `gossamer host`, or run a sidecar (drop --host-proxy)",
        ) from None
    netns = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [netns])
    finally:
        os.close(netns)
    sock.settimeout(REGISTER_TIMEOUT)
    data = b""
    try:
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise NotRegistered(
            f"the host proxy did not answer within {REGISTER_TIMEOUT:.0f}s"
        ) from None
    try:
        reply = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        raise NotRegistered(
            "the host proxy closed the registration without an answer (its log says why)"
        ) from None
    if not reply.get("ok"):
        raise NotRegistered(f"the host proxy refused the workload: {reply.get('error')}",
                            final=True)  # fmt: skip
    sock.settimeout(None)
    return {k: str(reply[k]) for k in ("outbound", "inbound", "admin")}


def lease_lost(lease: socket.socket) -> bool:
    """Whether the host proxy closed the registration (it died, or restarted)."""
    try:
        return lease.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _register_again(
    path: Path, request: dict[str, Any], received: list[int]
) -> socket.socket | None:
    """Register until the host proxy (restarted) takes the workload back; None when a
    signal came first or it refused the workload."""
    print(
        "gossamer run: the host proxy went away: the app's captured connections are "
        "refused until it is back (fail closed); registering again",
        file=sys.stderr,
    )
    since = time.monotonic()
    while not received:
        try:
            sock, _ = register(path, request)
        except NotRegistered as err:
            if err.final:
                print(f"gossamer run: {err}", file=sys.stderr)
                return None
            time.sleep(0.2)
            continue
        print(f"gossamer run: registered again after {time.monotonic() - since:.1f}s",
              file=sys.stderr)  # fmt: skip
        return sock
    return None


def run_hosted(args: argparse.Namespace) -> int:
    from gossamer.cli.capture import captured
    from gossamer.cli.proxy import _die_with_supervisor, app_environment

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("no command to run", hint="gossamer run --host-proxy SOCKET --name web -- CMD")
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    request = registration(args)
    with captured(args):
        try:
            lease, addresses = register(args.host_proxy, request)
        except NotRegistered as err:
            fail(str(err), hint=err.hint)
        try:
            app = subprocess.Popen(
                command,
                env=app_environment(
                    addresses["outbound"], addresses["admin"], http_proxy=not args.capture
                ),
                preexec_fn=_die_with_supervisor(signal.SIGKILL),
                process_group=0,
            )
        except OSError as err:
            lease.close()
            fail(f"cannot start {command[0]}: {err.strerror}")
        left = False
        while app.poll() is None:
            if not left and lease_lost(lease):
                lease.close()
                again = _register_again(args.host_proxy, request, received)
                if again is None:  # refused now, or a signal came: the workload ends
                    left = True
                    received[:] = received or [signal.SIGTERM]
                else:
                    lease = again
            if received:
                if not left:
                    # Leave the mesh first (closing the lease deregisters the workload),
                    # and give peers a moment, as `gossamer run` does with a sidecar.
                    left = True
                    lease.close()
                    until = time.monotonic() + args.drain_seconds
                    while app.poll() is None and time.monotonic() < until:
                        time.sleep(0.05)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(app.pid, received.pop(0))
            time.sleep(0.05)
        lease.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(app.pid, signal.SIGKILL)
    code = app.returncode
    print(f"gossamer run: {args.namespace}/{args.name} left the host proxy", file=sys.stderr)
    return code if code >= 0 else 128 - code
