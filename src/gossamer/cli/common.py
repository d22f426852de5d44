"""Flags and failure handling shared by the CLI's commands.

Light on purpose: `gossamer run` stays resident beside every workload as the
supervisor of its proxy and app, and imports this; the API client (urllib, ssl, http)
is loaded only by the commands that call the control plane.

Exit codes, the same for every command (docs/cli.md): 0 done, 1 something is wrong
(an error, a failed check, a denied call), 2 the command line itself is wrong,
130 interrupted, 141 the reader of the output went away (`| head`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gossamer.cli.client import Client

# One set of output formats for every command (decision 0080): `table` for people,
# `json` and `yaml` for scripts, `wide` where a table has more to show than fits.
FORMATS = ("table", "wide", "json", "yaml")

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def add_server_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("control plane")
    g.add_argument(
        "--server",
        help="API address, http://HOST:PORT or HOST:PORT (default: $GOSSAMER_SERVER or "
        "http://127.0.0.1:15000)",
    )
    g.add_argument(
        "--token-file",
        help="file holding an API token: DATA_DIR/admin.token or one from `gossamer "
        "api-token create` (default: $GOSSAMER_TOKEN)",
    )


def add_output_flag(
    p: argparse.ArgumentParser,
    *,
    wide: bool = False,
    structured: tuple[str, ...] = ("json", "yaml"),
) -> None:
    """`-o table|json|yaml`, and `wide` where the command has a wider table."""
    choices = ("table", *(("wide",) if wide else ()), *structured)
    p.add_argument(
        "-o",
        "--output",
        choices=choices,
        default="table",
        help=f"output format: {', '.join(choices)} (default: table)",
    )


def emit(args: argparse.Namespace, data: Any) -> bool:
    """Print `data` as JSON or YAML if that is what `-o` asked for; True if it did."""
    if args.output not in ("json", "yaml"):
        return False
    from gossamer.cli.output import dump

    dump(data, args.output)
    return True


def parse_duration(text: str) -> int:
    """`1h`, `30m`, `2d12h`, `90s`, or plain seconds → seconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    m = _DURATION.match(text)
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 1m, 1h or 2d")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def duration_arg(*, least: int = 1, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: a duration (`30s`, `1m`, `90`) in seconds, within bounds."""

    def parse(text: str) -> int:
        seconds = parse_duration(text)
        if seconds < least or (most is not None and seconds > most):
            top = f" and at most {_span(most)}" if most is not None else ""
            raise argparse.ArgumentTypeError(f"{text!r}: must be at least {_span(least)}{top}")
        return seconds

    return parse


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def host_ports(text: str) -> list[tuple[str, int]]:
    """'H:P' or 'H:P,H:P,...' (several control-plane replicas), each checked."""
    return [host_port(part.strip()) for part in text.split(",") if part.strip()] or [
        host_port(text)
    ]


class DiscoveryAddresses(argparse.Action):
    """--discovery H:P[,H:P...]: `discovery` is the first replica (HOST, PORT), as every
    command reads it, and `discovery_replicas` the others, for proxies to fail over to."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        try:
            addresses = host_ports(str(values))
        except argparse.ArgumentTypeError as err:
            parser.error(f"argument {option_string}: {err}")
        namespace.discovery, namespace.discovery_replicas = addresses[0], tuple(addresses[1:])


def add_join_flags(p: argparse.ArgumentParser, join_token_help: str) -> None:
    """--discovery (one or several replicas), --join-token, and --server/--token-file to
    mint a join token with the admin token: how a proxy or a host proxy joins."""
    discovery = host_ports(os.environ.get("GOSSAMER_DISCOVERY", "127.0.0.1:15012"))
    p.add_argument(
        "--discovery",
        action=DiscoveryAddresses,
        default=discovery[0],
        metavar="HOST:PORT[,HOST:PORT...]",
        help="control plane discovery address; several control-plane replicas, comma "
        "separated, are tried in turn when one fails (default: $GOSSAMER_DISCOVERY or "
        "127.0.0.1:15012)",
    )
    p.set_defaults(discovery_replicas=tuple(discovery[1:]))
    p.add_argument(
        "--join-token", default=os.environ.get("GOSSAMER_JOIN_TOKEN"), help=join_token_help
    )
    p.add_argument("--server", help="API address, to mint a join token with the admin token")
    p.add_argument("--token-file", help="admin token file, to mint a join token")


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
