"""`gossamer check --pre`: can this host join the mesh? Run before `gossamer run`.

Each check says what it found and, when it fails, what to do: the control plane's API
and discovery addresses answer, the versions match, the clocks agree (certificates
live a day and are checked to the second), the proxy's default ports are free, its
state directory is writable, and there is a credential to join with.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import time
import urllib.request
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from gossamer import __version__
from gossamer.cli.client import ApiError, Client
from gossamer.cli.common import client_from, emit, host_port

# More than this between the clocks and a fresh certificate may be "not yet valid" on
# one side or expire early on the other.
MAX_CLOCK_SKEW = 30.0


@dataclass(frozen=True)
class Result:
    ok: bool
    what: str
    detail: str


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _discovery(address: tuple[str, int]) -> Result:
    """A TLS listener answers there (the handshake fails without a mesh certificate:
    that it gets as far as asking for one is the check)."""
    what = f"discovery at {address[0]}:{address[1]}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(address, timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            return Result(True, what, f"answers TLS ({tls.version()})")
    except ssl.SSLError as err:
        return Result(True, what, f"answers TLS (and wants a mesh certificate: {err.reason})")
    except OSError as err:
        return Result(
            False, what, f"{err}; is the control plane's --discovery reachable from this host?"
        )


def _clock(client: Client) -> Result:
    try:
        with urllib.request.urlopen(client.server + "/readyz", timeout=5) as resp:
            date = resp.headers.get("Date")
    except OSError as err:
        return Result(False, "clock", f"cannot read the control plane's time: {err}")
    if not date:
        return Result(True, "clock", "the control plane sends no Date header; not compared")
    skew = time.time() - parsedate_to_datetime(date).timestamp()
    if abs(skew) > MAX_CLOCK_SKEW:
        return Result(
            False,
            "clock",
            f"this host's clock is {skew:+.0f}s off the control plane's; certificates "
            "may be refused: synchronise it (chrony, systemd-timesyncd)",
        )
    return Result(True, "clock", f"within {max(abs(skew), 1):.0f}s of the control plane's")


def preflight(args: argparse.Namespace) -> int:
    client = client_from(args)
    results: list[Result] = []
    try:
        server = client.get("/version")
        results.append(Result(True, f"control plane at {client.server}", "answers"))
        theirs = server.get("version") if isinstance(server, dict) else None
        results.append(
            Result(
                theirs == __version__,
                "versions",
                f"this gossamer {__version__}, the control plane {theirs}"
                + ("" if theirs == __version__ else "; install the same version on both"),
            )
        )
        results.append(_clock(client))
    except ApiError as err:
        results.append(Result(False, f"control plane at {client.server}", err.message))
    results.append(_discovery(args.discovery or discovery_default()))
    for listener, (host, port) in (
        ("inbound", ("0.0.0.0", 4143)),
        ("outbound", ("127.0.0.1", 4140)),
        ("admin", ("127.0.0.1", 4191)),
    ):
        free = _port_free(host, port)
        results.append(
            Result(
                free,
                f"port {port} ({listener})",
                "free"
                if free
                else f"taken; pass gossamer run --{listener} HOST:PORT with a free one",
            )
        )
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    state = state / "gossamer"
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".preflight"
        probe.write_text("")
        probe.unlink()
        results.append(Result(True, "state directory", f"{state} is writable"))
    except OSError as err:
        results.append(
            Result(False, "state directory", f"{state}: {err.strerror}; pass --state-dir")
        )
    has_join = bool(os.environ.get("GOSSAMER_JOIN_TOKEN"))
    has_admin = bool(args.token_file or os.environ.get("GOSSAMER_TOKEN"))
    results.append(
        Result(
            has_join or has_admin,
            "credential to join",
            "a join token (GOSSAMER_JOIN_TOKEN)"
            if has_join
            else "an API token, to mint a join token"
            if has_admin
            else "none: set GOSSAMER_JOIN_TOKEN (`gossamer token create`) or pass "
            "--token-file with an admin token",
        )
    )
    ok = all(r.ok for r in results)
    report: dict[str, Any] = {"ok": ok, "checks": [asdict(r) for r in results]}
    if not emit(args, report):
        for r in results:
            print(f"{'✓' if r.ok else '✗'} {r.what}: {r.detail}")
        print("✓ this host can join the mesh" if ok else "✗ fix the above before joining")
    return 0 if ok else 1


def discovery_default() -> tuple[str, int]:
    return host_port(os.environ.get("GOSSAMER_DISCOVERY", "127.0.0.1:15012"))
