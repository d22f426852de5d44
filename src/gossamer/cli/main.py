"""The `gossamer` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gossamer import __version__

# Command groups, one module each, registered in this order (the order of `--help`).
COMMAND_MODULES = (
    "controlplane",
    "resources",
    "token",
    "apitoken",
    "proxy",
    "check",
    "stat",
    "tap",
    "top",
    "authz",
    "audit",
    "ca",
    "routes",
    "demo",
)
# The proxy lives as long as its workload: it loads only its own command module, so
# it does not carry the rest of the CLI (the resource models alone are megabytes).
LEAN_COMMANDS = {"proxy": "proxy", "run": "proxy"}


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gossamer",
        description="Gossamer: a service mesh. mTLS with workload identity, discovery, "
        "and a fast proxy, on plain hosts and Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        importlib.import_module(f"gossamer.cli.{name}").register(sub)
    v = sub.add_parser("version", help="print the version", description="Print the version.")
    v.set_defaults(func=lambda _args: print(f"gossamer {__version__}") or 0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    lean = LEAN_COMMANDS.get(raw[0]) if raw else None
    parser = build_parser((lean,) if lean else COMMAND_MODULES)
    args = parser.parse_args(raw)
    args.raw_argv = raw
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
