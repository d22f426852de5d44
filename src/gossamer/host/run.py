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


def register(path: Path, request: dict[str, Any]) -> tuple[socket.socket, dict[str, str]]:
    """Register with the host proxy at `path`; the open connection and the workload's
    listener addresses. This process's network namespace goes along (SCM_RIGHTS), so a
    host proxy in another namespace opens the workload's listeners in this one."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as err:
        sock.close()
        fail(
            f"cannot reach the host proxy at {path}: {err.strerror or err}",
            hint="start it with `gossamer host`, or run a sidecar (drop --host-proxy)",
        )
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
        sock.close()
        fail(f"the host proxy did not answer within {REGISTER_TIMEOUT:.0f}s")
    try:
        reply = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        sock.close()
        fail("the host proxy closed the registration without an answer (its log says why)")
    if not reply.get("ok"):
        sock.close()
        fail(f"the host proxy refused the workload: {reply.get('error')}")
    sock.settimeout(None)
    return sock, {k: str(reply[k]) for k in ("outbound", "inbound", "admin")}


def run_hosted(args: argparse.Namespace) -> int:
    from gossamer.cli.capture import captured
    from gossamer.cli.proxy import _die_with_supervisor, app_environment

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("no command to run", hint="gossamer run --host-proxy SOCKET --name web -- CMD")
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    with captured(args):
        lease, addresses = register(args.host_proxy, registration(args))
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
