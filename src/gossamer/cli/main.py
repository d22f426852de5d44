"""The `gossamer` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gossamer import __version__
from gossamer.cli import (
    apitoken,
    audit,
    authz,
    check,
    controlplane,
    demo,
    proxy,
    resources,
    stat,
    token,
)
from gossamer.cli import ca as ca_cli
from gossamer.cli import routes as routes_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gossamer",
        description="Gossamer: a service mesh. mTLS with workload identity, discovery, "
        "and a fast proxy, on plain hosts and Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    controlplane.register(sub)
    resources.register(sub)
    token.register(sub)
    apitoken.register(sub)
    proxy.register(sub)
    check.register(sub)
    stat.register(sub)
    authz.register(sub)
    audit.register(sub)
    ca_cli.register(sub)
    routes_cli.register(sub)
    demo.register(sub)
    v = sub.add_parser("version", help="print the version", description="Print the version.")
    v.set_defaults(func=lambda _args: print(f"gossamer {__version__}") or 0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.raw_argv = raw
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
