"""Flags and failure handling shared by the CLI's commands.

Light on purpose: `gossamer run` stays resident beside every workload as the
supervisor of its proxy and app, and imports this; the API client (urllib, ssl, http)
is loaded only by the commands that call the control plane.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from gossamer.cli.client import Client


def add_server_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("control plane")
    g.add_argument(
        "--server", help="API address (default: $GOSSAMER_SERVER or http://127.0.0.1:15000)"
    )
    g.add_argument(
        "--token-file",
        help="file holding an API token: DATA_DIR/admin.token or one from `gossamer "
        "api-token create` (default: $GOSSAMER_TOKEN)",
    )


def add_output_flag(p: argparse.ArgumentParser, choices: tuple[str, ...], default: str) -> None:
    p.add_argument(
        "-o",
        "--output",
        choices=choices,
        default=default,
        help=f"output format (default: {default})",
    )


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def client_from(args: argparse.Namespace) -> Client:
    from gossamer.cli.client import ApiError, Client

    try:
        return Client.from_settings(args.server, args.token_file)
    except ApiError as err:
        fail(err.message)


def fail(message: str, hint: str | None = None) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    raise SystemExit(1)
