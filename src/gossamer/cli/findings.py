"""`gossamer findings`: retry storms, cascades, noisy neighbours and metastable failures
the control plane found in its golden metrics, and the controls that would contain them
(docs/traffic-control.md, "Findings")."""

from __future__ import annotations

import argparse
from typing import Any

from gossamer.cli.client import ApiError
from gossamer.cli.common import add_output_flag, add_server_flags, client_from, emit, fail
from gossamer.cli.output import duration, table

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "findings",
        help="emergent behaviour found in the golden metrics, with controls to contain it",
        description="Retry storms, retry amplification along a path, cascades, noisy "
        "neighbours and metastable failures the control plane finds in the golden metrics "
        "of the last WINDOW, judged step by step. Each finding has an ID, its evidence and "
        "suggested TrafficControls: `gossamer findings ID` shows them as YAML, "
        "`--apply ID` applies them (all or none; needs the admin token). The rules and "
        "their thresholds: docs/traffic-control.md, section Findings.",
    )
    p.add_argument("id", nargs="?", metavar="ID", help="show this finding in full")
    p.add_argument(
        "--apply",
        metavar="ID",
        help="apply the suggested TrafficControls of finding ID (as `gossamer apply` would)",
    )
    p.add_argument(
        "-w",
        "--window",
        default="5m",
        help="how far back to look, e.g. 1m, 5m, 15m (default: 5m; at most 15m)",
    )
    p.add_argument(
        "--step",
        default="15s",
        help="the rules judge each step of the window (default: 15s; not shorter than the "
        "control plane's scrape interval)",
    )
    add_output_flag(p)
    add_server_flags(p)
    p.set_defaults(func=findings)


def findings(args: argparse.Namespace) -> int:
    client = client_from(args)
    try:
        answer: dict[str, Any] = client.get("/v1/findings", window=args.window, step=args.step)
    except ApiError as err:
        fail(err.message)
    items: list[dict[str, Any]] = answer["items"]
    wanted = args.apply or args.id
    if wanted:
        found = [f for f in items if f["id"] == wanted]
        if not found:
            known = ", ".join(f["id"] for f in items) or "none now"
            fail(
                f"no finding {wanted} in the last {args.window} (findings: {known})",
                hint="findings come and go with the metrics: `gossamer findings` lists the "
                "current ones; --window looks further back",
            )
        [finding] = found
        if args.apply:
            return _apply(args, finding)
        if not emit(args, finding):
            _show(finding)
        return 0
    if emit(args, answer):
        return 0
    if not items:
        print(f"no findings in the last {args.window} ({args.step} steps)")
        return 0
    table(
        ["ID", "KIND", "SINCE", "SERVICES", "SUMMARY"],
        [
            [
                f["id"],
                f["kind"],
                duration(answer["at"] - f["firstSeen"]) + " ago",
                ",".join(f["services"]),
                f["summary"],
            ]
            for f in items
        ],
    )
    return 0


def _show(finding: dict[str, Any]) -> None:
    from gossamer.cli.output import dump

    print(f"{finding['id']}  {finding['kind']}: {finding['summary']}")
    print("edges:", ", ".join(finding["edges"]))
    print("evidence:")
    for line in _yaml(finding["evidence"]).splitlines():
        print("  " + line)
    if not finding["suggestions"]:
        print(finding.get("unsuggested") or "no control suggested")
        return
    print(f"# suggested: `gossamer findings --apply {finding['id']}` applies these")
    for control in finding["suggestions"]:
        print("---")
        dump(control, "yaml")


def _yaml(data: Any) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def _apply(args: argparse.Namespace, finding: dict[str, Any]) -> int:
    from gossamer.cli.resources import apply_objects

    if not finding["suggestions"]:
        fail(
            f"finding {finding['id']} suggests no control: "
            + (finding.get("unsuggested") or "none fits"),
            hint="write a TrafficControl by hand and `gossamer apply -f` it",
        )
    return apply_objects(args, list(finding["suggestions"]), analyze=False)
