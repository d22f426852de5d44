"""`gossamer check`: is the mesh healthy, and is anything about to expire?"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from gossamer.cli.client import ApiError, Client
from gossamer.cli.common import (
    add_output_flag,
    add_server_flags,
    client_from,
    duration_arg,
    emit,
    host_port,
)
from gossamer.cli.output import duration, table

# Warn well before anything expires: a CA a month ahead, a leaf when a third of its
# day is left (renewal should have happened at two thirds of its life).
CA_WARN_SECONDS = 30 * 86400
LEAF_WARN_SECONDS = 8 * 3600
# A refused join, registration or stream this recent fails `gossamer check`.
REFUSED_RECENT_SECONDS = 120


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="check the control plane, the CA and every connected proxy",
        description="Say whether the control plane is up, how long the CA certificates and "
        "each proxy's certificate have left, and whether every registered proxy is "
        "connected, on its latest snapshot and finds its app listening. Exits 1 if "
        "anything is wrong. With --wait, checks again every second until all is well or "
        "the time is up (a script's way to wait for a control plane it just started). "
        "A proxy that cannot join registers nothing, so name the workloads you expect "
        "with --workload to have their absence reported.",
    )
    p.add_argument(
        "--wait",
        type=duration_arg(),
        metavar="DURATION",
        help="retry until every check passes, for at most DURATION (e.g. 30s); print "
        "only the last result",
    )
    p.add_argument(
        "--workload",
        action="append",
        default=[],
        metavar="[NS/]NAME",
        help="a workload that must be registered, connected and ready (repeatable)",
    )
    p.add_argument(
        "--pre",
        action="store_true",
        help="pre-flight for this host before it joins: the API and discovery answer, "
        "versions and clocks agree, the proxy's ports are free, its state directory is "
        "writable, a credential to join is at hand",
    )
    p.add_argument(
        "--discovery",
        type=host_port,
        metavar="HOST:PORT",
        help="with --pre: the discovery address to try (default: $GOSSAMER_DISCOVERY or "
        "127.0.0.1:15012)",
    )
    add_output_flag(p)
    add_server_flags(p)
    p.set_defaults(func=check)


def _left(iso: str | None, now: datetime) -> float | None:
    if not iso:
        return None
    return (datetime.fromisoformat(iso) - now).total_seconds()


def _rotation_text(rotation: dict[str, Any]) -> str:
    proxies = rotation["proxies"]
    text = f"CA {rotation['kind']} rotation under way: {rotation['phase']}"
    if rotation["phase"] == "distributing":
        text += f", {proxies['withNewRoots']}/{proxies['connected']} proxies trust the new root"
    elif rotation["phase"] == "renewing":
        text += f", {proxies['onNewChain']}/{proxies['connected']} proxies on the new chain"
    elif rotation["phase"] == "overlap":
        text += f", old root trusted until {rotation['overlapEndsAt']}"
    return text + " (`gossamer ca status`)"


def _expected(text: str) -> tuple[str, str]:
    namespace, sep, name = text.rpartition("/")
    return (namespace if sep else "default"), name


def _not_ready(workload: dict[str, Any]) -> str | None:
    """Why a registered workload is kept out of endpoints, if it is."""
    for cond in (workload.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready" and cond.get("status") != "True":
            return cond.get("message") or cond.get("reason") or "its app is not ready"
    return None


def check(args: argparse.Namespace) -> int:
    if args.pre:
        from gossamer.cli.preflight import preflight

        return preflight(args)
    client = client_from(args)
    deadline = time.monotonic() + (args.wait or 0)
    while True:
        report = gather(client, [_expected(w) for w in args.workload])
        if report["ok"] or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    return show(args, client, report)


def gather(client: Client, expected: list[tuple[str, str]]) -> dict[str, Any]:
    """Every check's result, as `-o json` prints it."""
    now = datetime.now(UTC)
    report: dict[str, Any] = {"ok": True, "problems": [], "warnings": []}
    try:
        client.get("/readyz")
        ca = client.get("/v1/ca")
        listed = client.get("/v1/proxies")
        proxies = listed["items"]
        workloads = client.get("/v1/resources/workloads")["items"]
        replicas = client.get("/v1/replicas")
    except ApiError as err:
        report.update(ok=False, problems=[err.message], unreachable=True)
        return report
    report["controlPlane"] = {"server": client.server, "up": True}
    _check_refusals(report, listed.get("refused", []), now)
    report["replicas"] = replicas
    alive = _check_replicas(report, replicas)
    report["ca"] = ca
    for what, field in (("root", "rootExpiresAt"), ("intermediate", "intermediateExpiresAt")):
        left = _left(ca[field], now)
        if left is not None and left < CA_WARN_SECONDS:
            report["warnings"].append(
                f"CA {what} certificate expires in {duration(left)}; "
                f"rotate it with `gossamer ca rotate {what}`"
            )
    for root in ca.get("roots", []):
        left = _left(root["expiresAt"], now)
        if root["fingerprint"] != ca["rootFingerprint"] and left is not None and left < 0:
            report["warnings"].append(
                f"trust bundle holds root {root['fingerprint'][:16]}, which has expired"
            )
    rotation = ca.get("rotation")
    rotating = bool(rotation and rotation["active"])
    if rotating:
        assert rotation is not None
        report["warnings"].append(_rotation_text(rotation))
    elif len(ca.get("roots", [])) > 1:
        report["warnings"].append(
            f"the trust bundle holds {len(ca['roots'])} roots and no rotation is under way; "
            "a root that no longer signs anything can be dropped by rotating the root"
        )
    connected: dict[tuple[str, str], dict[str, Any]] = {
        (p["namespace"], p["workload"]): p for p in proxies
    }
    registered = {(w["metadata"]["namespace"], w["metadata"]["name"]) for w in workloads}
    for ns, name in expected:
        if (ns, name) not in registered:
            report["problems"].append(
                f"workload {ns}/{name} is not registered: its proxy has not joined the mesh "
                "(see its log; `gossamer audit --kind JoinToken` shows join tokens used)"
            )
    rows = []
    for wl in workloads:
        key = (wl["metadata"]["namespace"], wl["metadata"]["name"])
        p = connected.get(key)
        # With several replicas, a proxy streams from one of them: this one answers for
        # its own streams, the store's lease says which live replica holds the others.
        holder = replicas["replica"] if p else _stream_holder(wl)
        elsewhere = p is None and holder in alive
        state = "connected" if p or elsewhere else "disconnected"
        if p is None and not elsewhere:
            report["problems"].append(f"proxy {key[0]}/{key[1]} is not connected")
        elif p is not None and not p["upToDate"]:
            report["problems"].append(
                f"proxy {key[0]}/{key[1]} is not on its latest snapshot"
                + (f" (rejected: {p['nackError']})" if p.get("nackError") else "")
            )
        why = _not_ready(wl)
        if p is not None and why:
            report["problems"].append(f"workload {key[0]}/{key[1]} is not ready: {why}")
        issuer = (p or {}).get("issuerFingerprint") or ""
        if p and not rotating and issuer and issuer != ca.get("issuerFingerprint", issuer):
            report["warnings"].append(
                f"proxy {key[0]}/{key[1]} serves a certificate from an earlier intermediate "
                f"({issuer[:16]}); it renews onto the current one by itself"
            )
        left = _left(p.get("certificateNotAfter") if p else None, now)
        if left is not None and left < LEAF_WARN_SECONDS:
            report["warnings"].append(
                f"proxy {key[0]}/{key[1]} certificate expires in {duration(left)}"
            )
        rows.append(
            {
                "namespace": key[0],
                "workload": key[1],
                "state": state,
                "replica": holder if state == "connected" else "",
                "upToDate": bool(p and p["upToDate"]),
                "snapshot": (p or {}).get("ackedVersion", ""),
                "certificateLeftSeconds": left,
                "connectedSeconds": time.time() - p["connectedSince"] if p else None,
            }
        )
    report["proxies"] = rows
    report["ok"] = not report["problems"]
    return report


def _check_refusals(report: dict[str, Any], refused: list[dict[str, Any]], now: datetime) -> None:
    """A join, registration or stream refused in the last REFUSED_RECENT_SECONDS is a
    problem: a proxy that cannot join keeps trying, and nothing else would show it."""
    recent: dict[tuple[str, str, str], int] = {}
    for r in refused:
        if now.timestamp() - float(r.get("at", 0)) <= REFUSED_RECENT_SECONDS:
            key = (str(r.get("what")), str(r.get("who")), str(r.get("reason")))
            recent[key] = recent.get(key, 0) + 1
    for (what, who, reason), n in sorted(recent.items()):
        times = "" if n == 1 else f" ({n} times)"
        report["problems"].append(
            f"{what} refused for {who}{times} in the last {REFUSED_RECENT_SECONDS // 60} min: "
            f"{reason}"
        )


def _check_replicas(report: dict[str, Any], replicas: dict[str, Any]) -> set[str]:
    """Problems with the replicas and the store; the names of the live replicas."""
    rows = replicas["replicas"]
    store = replicas["store"]
    if not store.get("healthy", True):
        report["problems"].append(
            f"the {store['backend']} store is unhealthy: "
            + ", ".join(
                f"{m['endpoint']} unreachable" for m in store["members"] if not m["reachable"]
            )
        )
    elif any(not m["reachable"] for m in store.get("members", [])):
        down = [m["endpoint"] for m in store["members"] if not m["reachable"]]
        report["warnings"].append(f"etcd member(s) {', '.join(down)} unreachable")
    for row in rows:
        if not row["alive"]:
            report["warnings"].append(
                f"replica {row['name']} has not been heard from for "
                f"{duration(row.get('lastHeartbeatSecondsAgo', 0))}"
            )
    if not any(row["leader"] for row in rows):
        report["warnings"].append("no replica leads at the moment (an election is due)")
    return {row["name"] for row in rows if row["alive"]}


def _stream_holder(workload: dict[str, Any]) -> str:
    """The replica whose discovery stream holds the workload's lease, if any."""
    for cond in (workload.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "ProxyConnected" and cond.get("status") == "True":
            message = str(cond.get("message", ""))
            prefix = "discovery stream held by replica "
            return message.removeprefix(prefix) if message.startswith(prefix) else ""
    return ""


def _replicas_text(replicas: dict[str, Any]) -> str:
    rows = replicas["replicas"]
    names = ", ".join(
        row["name"] + (" (leader)" if row["leader"] else "") + ("" if row["alive"] else " (down)")
        for row in rows
    )
    store = replicas["store"]
    if store["backend"] == "etcd":
        up = sum(1 for m in store["members"] if m["reachable"])
        where = f"etcd, {up}/{len(store['members'])} members up"
    else:
        where = store["backend"]
    return f"replicas: {names}; store: {where}"


def show(args: argparse.Namespace, client: Client, report: dict[str, Any]) -> int:
    if emit(args, report):
        return 0 if report["ok"] else 1
    if report.get("unreachable"):
        print(f"✗ control plane: {report['problems'][0]}")
        return 1
    now = datetime.now(UTC)
    ca = report["ca"]
    rows = report["proxies"]
    print(f"✓ control plane is up at {client.server}")
    print(
        ("✓ " if report["replicas"]["store"].get("healthy", True) else "✗ ")
        + _replicas_text(report["replicas"])
    )
    mark = "!" if report["warnings"] else "✓"
    print(
        f"{mark} CA ({ca['trustDomain']}): root expires in "
        f"{duration(_left(ca['rootExpiresAt'], now) or 0)}, intermediate in "
        f"{duration(_left(ca['intermediateExpiresAt'], now) or 0)}"
        + (f", {len(ca['roots'])} roots trusted" if len(ca.get("roots", [])) > 1 else "")
    )
    if rows:
        table(
            ["NAMESPACE", "WORKLOAD", "PROXY", "REPLICA", "SNAPSHOT", "CERT-LEFT"],
            [
                [
                    r["namespace"],
                    r["workload"],
                    r["state"],
                    r["replica"] or "-",
                    ("up to date " if r["upToDate"] else "behind ") + (r["snapshot"] or "-"),
                    duration(r["certificateLeftSeconds"])
                    if r["certificateLeftSeconds"] is not None
                    else "-",
                ]
                for r in rows
            ],
        )
    else:
        print(
            "✓ no workloads registered (a proxy that cannot join registers nothing: "
            "name the workloads you expect with --workload)"
        )
    for w in report["warnings"]:
        print(f"! {w}")
    for p in report["problems"]:
        print(f"✗ {p}")
    if report["ok"]:
        print("✓ all checks passed")
    return 0 if report["ok"] else 1
