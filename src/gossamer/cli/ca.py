"""`gossamer ca`: the mesh CA's state, and rotating its root or intermediate.

`gossamer ca rotate root|intermediate` starts a rotation on the control plane
(`POST /v1/ca/rotation`) and follows it (`GET /v1/ca/rotation`), printing each step,
until every connected proxy serves a certificate under the new chain; with `--wait`,
until the old root has left the trust bundle too. The phases are explained in
gossamer.controlplane.rotation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gossamer.cli.client import ApiError, Client
from gossamer.cli.common import (
    add_output_flag,
    add_server_flags,
    client_from,
    emit,
    fail,
    parse_duration,
)

POLL_SECONDS = 0.5

_PHASE_TEXT = {
    "distributing": "pushing the new root to every proxy's trust bundle",
    "renewing": "the CA signs with the new intermediate; proxies are renewing",
    "overlap": "every connected proxy is on the new chain; old root still trusted",
    "done": "done",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ca", help="the mesh CA: status and rotation", description="The mesh CA.")
    csub = p.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    s = csub.add_parser(
        "status",
        help="trusted roots, the signing intermediate and the last rotation",
        description="Show the trusted roots, the intermediate that signs certificates now, "
        "and the progress of the current (or last) rotation.",
    )
    add_output_flag(s)
    add_server_flags(s)
    s.set_defaults(func=status)

    r = csub.add_parser(
        "rotate",
        help="rotate the root or the intermediate with no failed request",
        description="Rotate the CA. `root`: a new root is added to every proxy's trust "
        "bundle first, then the CA signs with a new intermediate under it and every proxy "
        "renews; the old root stays trusted for the overlap and is then removed. "
        "`intermediate`: the CA signs with a new intermediate under the same root and every "
        "proxy renews. Returns when every connected proxy serves a certificate under the "
        "new chain (with --wait, when the rotation is done). With your own CA, give the new "
        "files (paths on the control plane's host).",
    )
    r.add_argument("what", choices=("root", "intermediate"), help="what to rotate")
    r.add_argument(
        "--overlap",
        type=parse_duration,
        help="how long the old root stays trusted once every proxy is on the new chain "
        "(1h, 30m, seconds; default: the certificate lifetime)",
    )
    r.add_argument("--root-cert", help="your new root certificate(s), PEM (bring your own CA)")
    r.add_argument("--intermediate-cert", help="your new intermediate certificate, PEM")
    r.add_argument("--intermediate-key", help="its private key, PEM (unencrypted, mode 0600)")
    r.add_argument("--wait", action="store_true", help="wait until the old root is removed as well")
    r.add_argument(
        "--timeout",
        type=parse_duration,
        default=600,
        help="give up following after this long; the rotation goes on (default: 10m)",
    )
    add_server_flags(r)
    r.set_defaults(func=rotate)


def _short(fingerprint: str) -> str:
    return fingerprint[:16] if fingerprint else "-"


def _progress_line(rot: dict[str, Any]) -> str:
    proxies = rot["proxies"]
    n = proxies["connected"]
    line = f"{rot['kind']} rotation: {rot['phase']} ({_PHASE_TEXT.get(rot['phase'], '')})"
    if rot["phase"] == "distributing":
        line += f"; {proxies['withNewRoots']}/{n} proxies trust the new root"
    elif rot["phase"] == "renewing":
        line += f"; {proxies['onNewChain']}/{n} proxies on the new chain"
    elif rot["phase"] == "overlap":
        line += f"; old root removed at {rot['overlapEndsAt']}"
    # Replicas sharing a store: the count above is the answering replica's proxies;
    # each replica's own, as the leader sees them, for the phase under way.
    field = {"distributing": "withNewRoots", "renewing": "onNewChain"}.get(rot["phase"])
    replicas = rot.get("replicas") or {}
    if field and replicas:
        parts = [
            f"{name} {p.get(field, 0)}/{p.get('connected', 0)}"
            for name, p in replicas.items()
            if p.get("phase") == rot["phase"] and p.get("rotation") == rot["startedAt"]
        ]
        if parts:
            line += " (by replica: " + ", ".join(parts) + ")"
    return line


def _pending(rot: dict[str, Any]) -> list[str]:
    key = "hasNewRoots" if rot["phase"] == "distributing" else "onNewChain"
    return [f"{p['namespace']}/{p['workload']}" for p in rot["proxies"]["items"] if not p[key]]


def rotate(args: argparse.Namespace) -> int:
    client = client_from(args)
    body: dict[str, Any] = {"kind": args.what}
    if args.overlap is not None:
        body["overlapSeconds"] = args.overlap
    for flag, field in (
        ("root_cert", "rootCert"),
        ("intermediate_cert", "intermediateCert"),
        ("intermediate_key", "intermediateKey"),
    ):
        value = getattr(args, flag)
        if value:
            body[field] = str(Path(value).resolve())
    try:
        started = client.request("POST", "/v1/ca/rotation", body=json.dumps(body).encode())
    except ApiError as err:
        fail(err.message)
    return _follow(client, started["rotation"], args.wait, float(args.timeout))


def _follow(client: Client, rot: dict[str, Any], wait: bool, timeout: float) -> int:
    print(f"started: new intermediate {_short(rot['newIssuerFingerprint'])}", end="")
    if rot["newRootFingerprints"]:
        print(f", new root {_short(rot['newRootFingerprints'][0])}", end="")
    print()
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        line = _progress_line(rot)
        if line != last:
            print(line, flush=True)
            last = line
        finished = rot["phase"] == "done" or (rot["phase"] == "overlap" and not wait)
        if finished:
            break
        if time.monotonic() >= deadline:
            pending = _pending(rot)
            print(
                f"still {rot['phase']} after {timeout:g}s; the rotation goes on "
                f"(waiting for: {', '.join(pending) or 'nothing'}); follow it with "
                "`gossamer ca status`",
                file=sys.stderr,
            )
            return 1
        time.sleep(POLL_SECONDS)
        try:
            rot = client.get("/v1/ca/rotation")["rotation"]
        except ApiError as err:
            print(f"cannot read progress: {err.message}; retrying", file=sys.stderr)
    if rot["phase"] == "done":
        print(f"✓ {rot['kind']} rotation done; {rot['proxies']['connected']} proxies on it")
    else:
        print(
            f"✓ every connected proxy ({rot['proxies']['connected']}) serves a certificate "
            f"under the new chain; the old root leaves the trust bundle at "
            f"{rot['overlapEndsAt']} (`gossamer ca status` shows it)"
        )
    return 0


def status(args: argparse.Namespace) -> int:
    client = client_from(args)
    try:
        ca = client.get("/v1/ca")
    except ApiError as err:
        fail(err.message)
    if emit(args, ca):
        return 0
    print(f"trust domain {ca['trustDomain']}")
    for root in ca.get("roots", []):
        signer = " (signs the intermediate)" if root["fingerprint"] == ca["rootFingerprint"] else ""
        print(f"  root {_short(root['fingerprint'])} expires {root['expiresAt']}{signer}")
    print(
        f"  intermediate {_short(ca.get('issuerFingerprint', ''))} expires "
        f"{ca['intermediateExpiresAt']}"
    )
    rot = ca.get("rotation")
    if not rot:
        print("no rotation yet")
        return 0
    print(_progress_line(rot))
    if rot["active"]:
        pending = _pending(rot)
        if pending and rot["phase"] in ("distributing", "renewing"):
            print(f"  waiting for: {', '.join(pending)}")
    else:
        print(f"  finished at {rot['finishedAt']}")
    return 0
