"""Kubernetes injection: one pure function that adds the proxy to a workload's pod
template. `gossamer inject -f` and the admission webhook (`gossamer webhook`) both
call it, as Istio's kube-inject and its webhook share theirs.

What a pod gains (docs/decisions/0062-kubernetes-injection.md):
- `gossamer-init`, an init container that runs `gossamer capture install` with the
  same flags `gossamer run --capture` would use (the rules come from capture.rules);
- `gossamer-proxy`, a native sidecar (an init container with `restartPolicy: Always`,
  Kubernetes 1.29+): it starts before the app and stops after it;
- an emptyDir for the proxy's state, and the annotation `gossamer.dev/injected`.

Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and `List`s
of them are injected; other kinds pass through unchanged. A pod annotated
`gossamer.dev/inject: "false"` (on the object or its template) is skipped; a pod on
the host's network is refused, since capture there would rewrite the node's own rules.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gossamer import __version__
from gossamer.capture.rules import CaptureSpec, command_flags
from gossamer.errors import GossamerError

INJECT_ANNOTATION = "gossamer.dev/inject"
INJECTED_ANNOTATION = "gossamer.dev/injected"
EXCLUDE_OUTBOUND_PORTS_ANNOTATION = "gossamer.dev/exclude-outbound-ports"
PROXY_CONTAINER = "gossamer-proxy"
INIT_CONTAINER = "gossamer-init"
STATE_VOLUME = "gossamer-state"
STATE_DIR = "/var/run/gossamer"

# Where each kind keeps its pod template (a path of keys from the object).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class InjectRefused(GossamerError):
    """A pod that must not be injected; the message names the object and the field."""


@dataclass(frozen=True)
class InjectConfig:
    image: str = f"ghcr.io/gossamer-mesh/gossamer:{__version__}"
    discovery: str = "gossamer-discovery.gossamer-system.svc:15012"
    join_token_secret: str = "gossamer-join-token"
    proxy_uid: int = 1337
    outbound_port: int = 4140
    inbound_port: int = 4143
    admin_port: int = 4191
    # Where the proxy answers DNS; the pod's DNS is captured to it (decision 0061), so
    # service names resolve to the mesh's virtual IPs rather than ClusterIPs the mesh
    # would pass through.
    dns_port: int | None = 15053
    exclude_outbound_cidrs: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What injection did to one object: `injected`, `skipped` (and why) or `unchanged`
    (a kind without pods)."""

    kind: str
    name: str
    result: str
    reason: str = ""
    refused: list[str] = field(default_factory=list)


def describe(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or meta.get("generateName") or "<unnamed>")
    if meta.get("namespace"):
        name = f"{meta['namespace']}/{name}"
    return str(obj.get("kind", "<no kind>")), name


def inject(obj: Mapping[str, Any], config: InjectConfig) -> tuple[dict[str, Any], list[Outcome]]:
    """The object with the proxy added to every pod template it holds (a deep copy;
    `obj` is left as it is), and what was done to each. Raises InjectRefused for a pod
    that cannot be injected (hostNetwork)."""
    out = copy.deepcopy(dict(obj))
    if out.get("kind") == "List":
        outcomes: list[Outcome] = []
        items = out.get("items") or []
        for i, item in enumerate(items):
            if isinstance(item, Mapping):
                items[i], done = inject(item, config)
                outcomes += done
        return out, outcomes
    kind, name = describe(out)
    path = TEMPLATE_PATHS.get(kind)
    if path is None:
        return out, [Outcome(kind, name, "unchanged", f"a {kind} has no pods")]
    template: dict[str, Any] = out
    for key in path:
        template = template.setdefault(key, {})
    where = ".".join(path) or "the pod"
    for holder in (out, template):
        annotations = (holder.get("metadata") or {}).get("annotations") or {}
        if str(annotations.get(INJECT_ANNOTATION, "")).lower() in ("false", "disabled"):
            return out, [Outcome(kind, name, "skipped", f'annotated {INJECT_ANNOTATION}: "false"')]
    spec = template.setdefault("spec", {})
    if any(c.get("name") == PROXY_CONTAINER for c in spec.get("initContainers") or []):
        return out, [Outcome(kind, name, "skipped", "already injected")]
    if spec.get("hostNetwork"):
        field_path = ".".join([*path, "spec", "hostNetwork"])
        raise InjectRefused(
            f"{kind} {name}: {field_path} is true: a pod on the node's network cannot be "
            "injected (capture would rewrite the node's own iptables rules); annotate it "
            f'{INJECT_ANNOTATION}: "false", or run it with `gossamer run` on the node'
        )
    _inject_pod(template, config)
    return out, [Outcome(kind, name, "injected", f"pod template at {where}")]


def _inject_pod(template: dict[str, Any], config: InjectConfig) -> None:
    meta = template.setdefault("metadata", {})
    spec = template["spec"]
    annotations = meta.get("annotations") or {}
    ports = _app_ports(spec)
    excluded = [
        int(p) for p in str(annotations.get(EXCLUDE_OUTBOUND_PORTS_ANNOTATION, "")).split(",")
        if p.strip().isdigit()
    ]  # fmt: skip
    capture = CaptureSpec(
        outbound_port=config.outbound_port,
        inbound_port=config.inbound_port,
        inbound_ports=tuple(port for _, port in ports),
        proxy_uid=config.proxy_uid,
        exclude_outbound_ports=tuple(excluded),
        exclude_outbound_cidrs=config.exclude_outbound_cidrs,
        dns_port=config.dns_port,
    )
    init = {
        "name": INIT_CONTAINER,
        "image": config.image,
        "command": ["gossamer", "capture", "install", *command_flags(capture)],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }
    sidecar = {
        "name": PROXY_CONTAINER,
        "image": config.image,
        "restartPolicy": "Always",
        "args": _proxy_args(meta.get("labels") or {}, spec, ports, config),
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("POD_IP", "status.podIP"),
            {
                "name": "GOSSAMER_JOIN_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": config.join_token_secret, "key": "token"}},
            },
        ],
        "ports": [
            {"name": "gossamer-mtls", "containerPort": config.inbound_port, "protocol": "TCP"},
            {"name": "gossamer-admin", "containerPort": config.admin_port, "protocol": "TCP"},
        ],
        "startupProbe": {
            "httpGet": {"path": "/ready", "port": config.admin_port},
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        "readinessProbe": {"httpGet": {"path": "/ready", "port": config.admin_port}},
        "livenessProbe": {"httpGet": {"path": "/live", "port": config.admin_port}},
        "securityContext": {
            "runAsUser": config.proxy_uid,
            "runAsGroup": config.proxy_uid,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": STATE_VOLUME, "mountPath": STATE_DIR}],
    }
    # The rules first, then the proxy: the app's first connection is captured and
    # served. Init containers the pod already has run after both, so their traffic is
    # carried too.
    spec["initContainers"] = [init, sidecar, *(spec.get("initContainers") or [])]
    spec["volumes"] = [*(spec.get("volumes") or []), {"name": STATE_VOLUME, "emptyDir": {}}]
    meta["annotations"] = {**annotations, INJECTED_ANNOTATION: "true"}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _app_ports(spec: Mapping[str, Any]) -> list[tuple[str | None, int]]:
    """The TCP ports the app's containers declare: (name, port), in order, once each."""
    seen: dict[int, str | None] = {}
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            number = port.get("containerPort")
            if isinstance(number, int) and port.get("protocol", "TCP") == "TCP":
                seen.setdefault(number, port.get("name"))
    return [(name, number) for number, name in seen.items()]


def _proxy_args(
    labels: Mapping[str, Any],
    spec: Mapping[str, Any],
    ports: list[tuple[str | None, int]],
    config: InjectConfig,
) -> list[str]:
    args = [
        "proxy",
        "--name", "$(POD_NAME)",
        "-n", "$(POD_NAMESPACE)",
        "--service-account", str(spec.get("serviceAccountName") or "default"),
        "--address", "$(POD_IP)",
        "--inbound", f"0.0.0.0:{config.inbound_port}",
        "--outbound", f"127.0.0.1:{config.outbound_port}",
        "--admin", f"0.0.0.0:{config.admin_port}",
        "--discovery", config.discovery,
        "--state-dir", STATE_DIR,
    ]  # fmt: skip
    if config.dns_port is not None:
        args += ["--dns", f"127.0.0.1:{config.dns_port}"]
    for key, value in sorted(labels.items()):
        args += ["-l", f"{key}={value}"]
    for name, port in ports:
        args += ["--port", f"{name}={port}" if name else str(port)]
    return args
