"""`gossamer capture` (install, remove or show the transparent-capture rules) and what
`gossamer run --capture` adds to `gossamer run`.

Light on purpose, like cli/proxy.py, which imports it: the supervisor of every
captured workload stays resident.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from gossamer.capture.rules import DEFAULT_PROXY_ID, CaptureError, CaptureSpec
from gossamer.cli.common import fail


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return port


def _exclusion_flags(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, prefix: str = ""
) -> None:
    p.add_argument(
        f"--{prefix}exclude-outbound-port",
        type=_port,
        action="append",
        default=[],
        metavar="PORT",
        help="outbound TCP to this port is not captured (repeatable)",
    )
    p.add_argument(
        f"--{prefix}exclude-outbound-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="outbound traffic to this address or network is not captured (repeatable)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "capture",
        help="install or remove the transparent-capture rules",
        description="Install, remove or show the iptables rules (nat table, chains "
        "GOSSAMER_INBOUND and GOSSAMER_OUTPUT) that send a workload's TCP to its proxy "
        "without changing the app. Needs root or CAP_NET_ADMIN in the workload's network "
        "namespace. `gossamer run --capture` installs and removes the same rules itself; "
        "Kubernetes injection runs `gossamer capture install` in an init container.",
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    i = verbs.add_parser(
        "install",
        help="install the rules (replacing Gossamer's earlier ones: never duplicates)",
        description="Install the capture rules. Installing again replaces them.",
    )
    i.add_argument(
        "--outbound-port", type=_port, default=4140, help="outbound listener port (default: 4140)"
    )
    i.add_argument(
        "--inbound-port", type=_port, default=4143, help="inbound listener port (default: 4143)"
    )
    i.add_argument(
        "--port",
        type=_port,
        action="append",
        default=[],
        metavar="PORT",
        help="a port the workload serves: inbound TCP to it goes to the inbound listener "
        "(repeatable)",
    )
    i.add_argument(
        "--proxy-uid", type=int, help="the uid the proxy runs as: its sockets are not captured"
    )
    i.add_argument(
        "--proxy-gid",
        type=int,
        help=f"the gid the proxy runs as: its sockets are not captured (`gossamer run "
        f"--capture` uses {DEFAULT_PROXY_ID})",
    )
    _exclusion_flags(i)
    i.add_argument(
        "--dns-port", type=_port, help="send DNS (port 53) to the proxy's DNS listener on this port"
    )
    i.add_argument("--dry-run", action="store_true", help="print the rules, install nothing")
    _output_flag(i)
    i.set_defaults(func=install_command)
    r = verbs.add_parser("remove", help="remove every Gossamer capture rule and chain")
    _output_flag(r)
    r.set_defaults(func=remove_command)
    s = verbs.add_parser("show", help="list Gossamer's capture rules now installed")
    _output_flag(s)
    s.set_defaults(func=show_command)


def _output_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="output format (default: table)",
    )


def _print(args: argparse.Namespace, report: dict[str, Any], lines: list[str]) -> None:
    if args.output == "json":
        print(json.dumps(report, indent=2))
    else:
        for line in lines:
            print(line)


def install_command(args: argparse.Namespace) -> int:
    from gossamer.capture import iptables
    from gossamer.capture.rules import restore_text

    spec = CaptureSpec(
        outbound_port=args.outbound_port,
        inbound_port=args.inbound_port,
        inbound_ports=tuple(args.port),
        proxy_uid=args.proxy_uid,
        proxy_gid=args.proxy_gid,
        exclude_outbound_ports=tuple(args.exclude_outbound_port),
        exclude_outbound_cidrs=tuple(args.exclude_outbound_cidr),
        dns_port=args.dns_port,
    )
    try:
        text = restore_text(spec)
        if not args.dry_run:
            iptables.install(spec)
    except CaptureError as err:
        fail(str(err))
    rules = text.splitlines()
    _print(
        args,
        {"installed": not args.dry_run, "rules": rules},
        rules if args.dry_run else [f"capture installed ({len(rules) - 4} rules)"],
    )
    return 0


def remove_command(args: argparse.Namespace) -> int:
    from gossamer.capture import iptables

    try:
        found = iptables.remove()
    except CaptureError as err:
        fail(str(err))
    _print(
        args,
        {"removed": found},
        ["capture removed" if found else "no capture rules were installed"],
    )
    return 0


def show_command(args: argparse.Namespace) -> int:
    from gossamer.capture import iptables

    try:
        rules = iptables.listed()
    except CaptureError as err:
        fail(str(err))
    _print(args, {"rules": rules}, rules or ["no capture rules are installed"])
    return 0


# ---- gossamer run --capture ------------------------------------------------------------


def add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("transparent capture (Linux, root or CAP_NET_ADMIN)")
    g.add_argument(
        "--capture",
        action="store_true",
        help="capture the app's traffic with iptables: its outbound TCP goes to the "
        "outbound listener and inbound TCP to its --port ports to the inbound listener, "
        "without HTTP_PROXY; removed when the workload stops. While the proxy is down, "
        "captured connections are refused (fail closed)",
    )
    g.add_argument(
        "--capture-proxy-gid",
        type=int,
        default=DEFAULT_PROXY_ID,
        metavar="GID",
        help=f"the group the proxy runs as, whose sockets are not captured (default: "
        f"{DEFAULT_PROXY_ID})",
    )
    _exclusion_flags(g, "capture-")


def run_spec(args: argparse.Namespace) -> CaptureSpec:
    """The capture of a `gossamer run`: its listeners, its ports, the control plane
    left out (its discovery and API addresses)."""
    import ipaddress
    from urllib.parse import urlsplit

    cidrs = list(args.capture_exclude_outbound_cidr)
    hosts = [args.discovery[0]]
    if args.server:
        hosts.append(urlsplit(args.server if "//" in args.server else f"//{args.server}").hostname)
    for host in hosts:
        with contextlib.suppress(ValueError, TypeError):
            cidrs.append(str(ipaddress.ip_address(host)))
    return CaptureSpec(
        outbound_port=args.outbound[1],
        inbound_port=args.inbound[1],
        inbound_ports=tuple(c for c, *_ in args.port),
        proxy_gid=args.capture_proxy_gid,
        exclude_outbound_ports=tuple(args.capture_exclude_outbound_port),
        exclude_outbound_cidrs=tuple(cidrs),
        dns_port=args.dns[1] if args.dns else None,
    )


@contextlib.contextmanager
def captured(args: argparse.Namespace) -> Iterator[Callable[[], None] | None]:
    """Around `gossamer run`: install the rules before the proxy starts, remove them
    when the workload stops, however it stops short of SIGKILL (then the next install,
    or `gossamer capture remove`, clears them). Yields what the proxy's child process
    runs before exec (its gid), or None without --capture."""
    if not args.capture:
        yield None
        return
    from gossamer.capture import iptables

    if os.geteuid() != 0:
        fail(
            "--capture needs root (or CAP_NET_ADMIN) to install iptables rules",
            hint="run as root, or set up the rules once with `gossamer capture install`",
        )
    spec = run_spec(args)
    if spec.outbound_port == 0 or spec.inbound_port == 0:
        fail("--capture needs fixed listener ports: give --outbound and --inbound a port")
    try:
        iptables.install(spec)
    except CaptureError as err:
        fail(str(err))
    print(
        f"gossamer run: capture installed: outbound TCP → :{spec.outbound_port}, inbound "
        f"{list(spec.inbound_ports)} → :{spec.inbound_port}; while the proxy is down, "
        "captured connections are refused (fail closed)",
        file=sys.stderr,
    )
    gid = spec.proxy_gid

    def as_proxy_group() -> None:
        assert gid is not None
        os.setgroups([])
        os.setgid(gid)

    try:
        yield as_proxy_group
    finally:
        try:
            iptables.remove()
        except CaptureError as err:
            print(
                f"gossamer run: {err}; remove them with `gossamer capture remove`", file=sys.stderr
            )
        else:
            print("gossamer run: capture removed", file=sys.stderr)


# The flags above belong to the supervisor: the proxy it starts is not given them.
_RUN_FLAGS = {"--capture": False, "--capture-proxy-gid": True}
_RUN_FLAGS |= {"--capture-exclude-outbound-port": True, "--capture-exclude-outbound-cidr": True}


def strip_run_flags(flags: list[str]) -> list[str]:
    """`gossamer run`'s proxy flags without the capture flags (and their values)."""
    kept: list[str] = []
    rest = iter(flags)
    for flag in rest:
        name = flag.partition("=")[0]
        if name not in _RUN_FLAGS:
            kept.append(flag)
        elif _RUN_FLAGS[name] and "=" not in flag:
            next(rest, None)
    return kept
