"""`gossamer inject`, `gossamer webhook` and `gossamer install kubernetes`: Gossamer on
Kubernetes. The three are contract-tested against the Kubernetes OpenAPI schemas, not
run against a cluster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gossamer.cli.common import fail, host_port
from gossamer.inject.inject import describe


def _config_flags(p: argparse.ArgumentParser) -> None:
    from gossamer.inject.inject import InjectConfig

    d = InjectConfig()
    p.add_argument("--image", default=d.image, help=f"the proxy's image (default: {d.image})")
    p.add_argument(
        "--discovery",
        default=d.discovery,
        help=f"the control plane's discovery address, HOST:PORT (default: {d.discovery})",
    )
    p.add_argument(
        "--join-token-secret",
        default=d.join_token_secret,
        help="the Secret (key `token`) holding the join token proxies use "
        f"(default: {d.join_token_secret})",
    )


def _config(args: argparse.Namespace) -> Any:
    from gossamer.inject.inject import InjectConfig

    host_port(args.discovery)  # a usage error if it is not HOST:PORT
    return InjectConfig(
        image=args.image, discovery=args.discovery, join_token_secret=args.join_token_secret
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    i = sub.add_parser(
        "inject",
        help="add the proxy to Kubernetes workloads in a manifest",
        description="Read Kubernetes manifests and write them back with the proxy added to "
        "every pod template (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, "
        "CronJobs): a native sidecar (an init container with restartPolicy: Always) and an "
        "init container that installs the capture rules (`gossamer capture install`). Pods "
        'annotated gossamer.dev/inject: "false" are skipped; a hostNetwork pod is refused. '
        "What was done goes to standard error. The webhook (`gossamer webhook`) makes the "
        "same change.",
    )
    i.add_argument("-f", "--filename", required=True, help="manifest file, or - for stdin")
    _config_flags(i)
    i.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="yaml",
        help="output format: the manifests as yaml (the default) or json, or a table of "
        "what is in them",
    )
    i.set_defaults(func=inject_command)

    w = sub.add_parser(
        "webhook",
        help="serve the mutating admission webhook that injects the proxy",
        description="Serve AdmissionReview v1 over HTTPS at /inject (and /healthz): the API "
        "server sends each new pod, the answer is a JSON Patch that adds the proxy, made by "
        "the same code as `gossamer inject`. A pod that cannot be injected is admitted "
        "unchanged, with a warning.",
    )
    w.add_argument(
        "--listen",
        type=host_port,
        default=("0.0.0.0", 9443),
        help="HOST:PORT to serve on (default: 0.0.0.0:9443)",
    )
    w.add_argument("--tls-cert", type=Path, required=True, help="serving certificate (PEM)")
    w.add_argument("--tls-key", type=Path, required=True, help="its private key (PEM)")
    _config_flags(w)
    w.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    w.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    w.set_defaults(func=webhook_command)

    install = sub.add_parser(
        "install",
        help="print manifests that install Gossamer",
        description="Print the manifests that install the control plane and the injection "
        "webhook; apply them with kubectl apply -f -.",
    )
    targets = install.add_subparsers(dest="target", required=True, metavar="TARGET")
    k = targets.add_parser(
        "kubernetes",
        help="the control plane and the webhook on Kubernetes",
        description="Print a Namespace, a StatefulSet running the control plane and the "
        "webhook, their Services and the MutatingWebhookConfiguration (namespaces opt in "
        "with the label gossamer.dev/inject=enabled). Create the Secret "
        "gossamer-webhook-tls (tls.crt, tls.key) first and pass its CA with --webhook-ca.",
    )
    k.add_argument(
        "-n",
        "--namespace",
        default="gossamer-system",
        help="where the control plane runs (default: gossamer-system)",
    )
    k.add_argument("--image", help="Gossamer's image (default: the release's)")
    k.add_argument(
        "--webhook-ca",
        type=Path,
        help="PEM of the CA that signed the webhook's certificate: the webhook's caBundle",
    )
    k.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="yaml",
        help="output format: the manifests as yaml (the default) or json, or a table of "
        "what is in them",
    )
    k.set_defaults(func=install_kubernetes_command)


def _write(documents: list[Any], fmt: str, rows: list[list[str]] | None = None) -> None:
    """The manifests as YAML or JSON; for `-o table`, `rows` (KIND NAME RESULT), or
    each document's kind and name."""
    if fmt == "table":
        from gossamer.cli.output import table

        if rows is None:
            table(["KIND", "NAME"], [describe(d) for d in documents])
        else:
            table(["KIND", "NAME", "RESULT"], rows)
        return
    if fmt == "json":
        print(
            json.dumps(
                documents[0]
                if len(documents) == 1
                else {"apiVersion": "v1", "kind": "List", "items": documents},
                indent=2,
            )
        )
        return
    import yaml

    sys.stdout.write(yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False))


def inject_command(args: argparse.Namespace) -> int:
    import yaml

    from gossamer.inject.inject import InjectRefused, inject

    config = _config(args)
    source = "standard input" if args.filename == "-" else args.filename
    try:
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except OSError as err:
        fail(f"cannot read {source}: {err.strerror}")
    except yaml.YAMLError as err:
        fail(f"{source}: invalid YAML: {err}")
    out: list[Any] = []
    rows: list[list[str]] = []
    for number, document in enumerate(documents, start=1):
        if not isinstance(document, dict):
            fail(f"{source}: document {number}: must be a mapping with apiVersion and kind")
        try:
            injected, outcomes = inject(document, config)
        except InjectRefused as err:
            fail(f"{source}: document {number}: {err}")
        out.append(injected)
        for o in outcomes:
            rows.append([o.kind, o.name, o.result + (f" ({o.reason})" if o.reason else "")])
            if args.output == "table":
                continue
            print(
                f"{o.kind} {o.name}: {o.result}" + (f" ({o.reason})" if o.reason else ""),
                file=sys.stderr,
            )
    _write(out, args.output, rows)
    return 0


def webhook_command(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gossamer.inject.webhook import serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(args.listen, args.tls_cert, args.tls_key, _config(args), args.ready_file))
    except OSError as err:
        fail(
            f"cannot serve the webhook: {err}",
            hint="check --tls-cert and --tls-key, and that --listen is free",
        )
    except ValueError as err:  # ssl: a key that does not match its certificate
        fail(f"cannot serve the webhook: {err}")
    return 0


def install_kubernetes_command(args: argparse.Namespace) -> int:
    from gossamer.inject.manifests import InstallConfig, manifests

    ca = None
    if args.webhook_ca:
        try:
            ca = args.webhook_ca.read_bytes()
        except OSError as err:
            fail(f"--webhook-ca: cannot read {args.webhook_ca}: {err.strerror}")
        if b"-----BEGIN CERTIFICATE-----" not in ca:
            fail(f"--webhook-ca: {args.webhook_ca} holds no PEM certificate")
    config = InstallConfig(namespace=args.namespace, webhook_ca_pem=ca)
    if args.image:
        config = InstallConfig(namespace=args.namespace, image=args.image, webhook_ca_pem=ca)
    _write(manifests(config), args.output)
    return 0
