"""`gossamer bootstrap grpc`: join the mesh for a proxyless gRPC client and write its
xDS bootstrap (an Envoy gets its own from `gossamer proxy --engine envoy`).

    gossamer bootstrap grpc --name checkout -n shop --out ./xds
    GRPC_XDS_BOOTSTRAP=./xds/bootstrap.json python client.py   # xds:///greeter.shop:9090
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from gossamer.cli.common import add_output_flag, add_server_flags, emit, fail, host_port


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="the client's (or workload's) name")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("--service-account", default="default", help="its identity's service account")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="directory for the certificate, key, trust bundle and bootstrap (created 0700)",
    )
    p.add_argument(
        "--xds",
        type=host_port,
        default=host_port(os.environ.get("GOSSAMER_XDS", "127.0.0.1:15010")),
        help="the control plane's xDS address (default: $GOSSAMER_XDS or 127.0.0.1:15010)",
    )
    p.add_argument(
        "--discovery",
        type=host_port,
        default=host_port(os.environ.get("GOSSAMER_DISCOVERY", "127.0.0.1:15012")),
        help="discovery address, to join (default: $GOSSAMER_DISCOVERY or 127.0.0.1:15012)",
    )
    p.add_argument(
        "--join-token",
        default=os.environ.get("GOSSAMER_JOIN_TOKEN"),
        help="join token (default: $GOSSAMER_JOIN_TOKEN; with an admin token one is minted)",
    )
    p.add_argument(
        "--interest",
        action="append",
        metavar="SVC.NS",
        help="only these services (repeatable; default: every service in the mesh)",
    )
    add_output_flag(p)
    add_server_flags(p)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bootstrap",
        help="an xDS bootstrap for a proxyless gRPC client",
        description="Join the mesh (a certificate for the xDS connection) and write a "
        "bootstrap that points a gRPC xDS client or an Envoy at the control plane's xDS "
        "server (gossamer control-plane --xds).",
    )
    bsub = p.add_subparsers(dest="bootstrap_command", required=True, metavar="KIND")
    g = bsub.add_parser(
        "grpc",
        help="a gRPC xDS bootstrap: grpcio reaches xds:///SERVICE.NS:PORT",
        description="Write DIR/bootstrap.json for GRPC_XDS_BOOTSTRAP. The client then "
        "dials xds:///SERVICE.NS:PORT and gets routes (weights, matches, retries, "
        "faults) and endpoints from the control plane. It calls endpoints directly, "
        "in plaintext: see docs/envoy.md for what proxyless gRPC does not do.",
    )
    _common(g)
    g.set_defaults(func=bootstrap_grpc)


def _mint(args: argparse.Namespace) -> str:
    if args.join_token:
        return str(args.join_token)
    from gossamer.cli.client import ApiError
    from gossamer.cli.common import client_from

    body = {"namespace": args.namespace, "serviceAccount": args.service_account, "ttlSeconds": 600}
    try:
        result = client_from(args).request("POST", "/v1/tokens", body=json.dumps(body).encode())
    except ApiError as err:
        fail(
            f"could not mint a join token: {err.message}",
            hint="pass --join-token, or an admin token with --token-file",
        )
    return str(result["token"])


def bootstrap_grpc(args: argparse.Namespace) -> int:
    from gossamer.errors import GossamerError
    from gossamer.xds.bootstrap import grpc_bootstrap, join

    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        files = join(f"{args.discovery[0]}:{args.discovery[1]}", _mint(args), out)
    except GossamerError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot join through {args.discovery[0]}:{args.discovery[1]}: {err}")
    interests = tuple(args.interest) if args.interest else None
    config = grpc_bootstrap(args.name, args.namespace, args.xds, files, interests)
    path = out / "bootstrap.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    result: dict[str, Any] = {
        "bootstrap": str(path),
        "certificateChain": str(files.chain),
        "privateKey": str(files.key),
        "trustBundle": str(files.bundle),
        "environment": {"GRPC_XDS_BOOTSTRAP": str(path)},
    }
    if not emit(args, result):
        print(f"wrote {path}")
        print(f"export GRPC_XDS_BOOTSTRAP={path}")
    return 0
