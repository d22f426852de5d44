"""`gossamer control-plane`: run the control plane."""

from __future__ import annotations

import argparse
import asyncio
import logging
from datetime import timedelta
from pathlib import Path

from gossamer.cli.common import fail, host_port, parse_duration
from gossamer.errors import GossamerError


def _ttl(text: str) -> timedelta:
    seconds = parse_duration(text)
    if not 10 <= seconds <= 90 * 86400:
        raise argparse.ArgumentTypeError("must be between 10s and 90d")
    return timedelta(seconds=seconds)


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= seconds <= 300:
        raise argparse.ArgumentTypeError("must be between 0.1 and 300 seconds")
    return seconds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "control-plane",
        help="run the control plane",
        description="Run the control plane: the REST API and dashboard, the CA, and the "
        "discovery stream proxies follow. On first start it creates DATA_DIR with the "
        "store, the CA and the admin token (DATA_DIR/admin.token).",
    )
    p.add_argument("--data-dir", required=True, type=Path, help="where state lives")
    p.add_argument(
        "--api",
        type=host_port,
        default=("127.0.0.1", 15000),
        help="REST API listen address (default: 127.0.0.1:15000)",
    )
    p.add_argument(
        "--discovery",
        type=host_port,
        default=("127.0.0.1", 15012),
        help="discovery (mTLS) listen address (default: 127.0.0.1:15012)",
    )
    p.add_argument(
        "--xds",
        type=host_port,
        help="also serve Envoy over xDS (ADS and SDS, mTLS) at this address, e.g. "
        "127.0.0.1:15010; needs pip install 'gossamer[envoy]' (default: off)",
    )
    p.add_argument(
        "--trust-domain",
        default="cluster.local",
        help="SPIFFE trust domain (default: cluster.local)",
    )
    p.add_argument("--store", help="store URL (default: sqlite file in DATA_DIR)")
    p.add_argument(
        "--certificate-ttl",
        type=_ttl,
        default=timedelta(hours=24),
        help="lifetime of workload certificates, e.g. 24h, 1h, 90s (default: 24h); "
        "proxies renew at two thirds of it",
    )
    p.add_argument(
        "--scrape-interval",
        type=_interval,
        default=5.0,
        help="seconds between scrapes of every proxy's /metrics (default: 5)",
    )
    p.add_argument(
        "--prometheus-sd-file",
        type=Path,
        help="where to write the Prometheus file_sd targets (default: "
        "DATA_DIR/prometheus/targets.json)",
    )
    p.add_argument(
        "--auth-reads",
        action="store_true",
        help="reads need an API token too (scope read or admin); by default only changes "
        "need one (an admin token), and the dashboard reads without",
    )
    ca = p.add_argument_group("bring your own CA (all three together)")
    ca.add_argument("--ca-root-cert", type=Path, help="root certificate (PEM)")
    ca.add_argument("--ca-intermediate-cert", type=Path, help="intermediate certificate (PEM)")
    ca.add_argument("--ca-intermediate-key", type=Path, help="intermediate private key (PEM)")
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gossamer.controlplane.server import ControlPlaneConfig, serve
    from gossamer.identity.ca import OperatorCA

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    operator = None
    given = [args.ca_root_cert, args.ca_intermediate_cert, args.ca_intermediate_key]
    if any(given):
        if not all(given):
            fail("--ca-root-cert, --ca-intermediate-cert and --ca-intermediate-key go together")
        operator = OperatorCA(*given)
    config = ControlPlaneConfig(
        data_dir=args.data_dir,
        api=args.api,
        discovery=args.discovery,
        xds=args.xds,
        trust_domain=args.trust_domain,
        store_url=args.store,
        operator_ca=operator,
        certificate_ttl=args.certificate_ttl,
        scrape_interval=args.scrape_interval,
        prometheus_sd_file=args.prometheus_sd_file,
        auth_reads=args.auth_reads,
    )
    try:
        asyncio.run(serve(config, ready_file=args.ready_file))
    except GossamerError as err:
        fail(str(err))
    except OSError as err:
        fail(
            f"cannot start: {err}",
            hint="is another control plane using these ports? "
            "Use --api and --discovery to pick others",
        )
    return 0
