"""`gossamer install kubernetes`: the manifests that run the control plane and the
injection webhook in a cluster. Contract-tested (validated against the Kubernetes
OpenAPI schemas), not cluster-tested: no API server runs where Gossamer is tested.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from gossamer.inject.inject import INJECT_ANNOTATION, InjectConfig
from gossamer.inject.webhook import PATH

LABELS = {"app.kubernetes.io/name": "gossamer", "app.kubernetes.io/component": "control-plane"}
WEBHOOK_PORT = 9443


@dataclass(frozen=True)
class InstallConfig:
    namespace: str = "gossamer-system"
    image: str = InjectConfig.image
    storage: str = "1Gi"
    # PEM of the CA that signed the webhook's serving certificate (the Secret
    # gossamer-webhook-tls); without it the API server cannot call the webhook, and
    # the caBundle is left for the operator (or cert-manager's CA injector) to fill.
    webhook_ca_pem: bytes | None = None


def manifests(config: InstallConfig) -> list[dict[str, Any]]:
    ns = config.namespace

    def meta(name: str) -> dict[str, Any]:
        return {"name": name, "namespace": ns, "labels": dict(LABELS)}

    def service(name: str, port: int, target: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(name),
            "spec": {
                "selector": dict(LABELS),
                "ports": [{"name": "tcp", "port": port, "targetPort": target, "protocol": "TCP"}],
            },
        }

    image = config.image
    control_plane = {
        "name": "control-plane",
        "image": image,
        "args": [
            "control-plane",
            "--data-dir",
            "/var/lib/gossamer",
            "--api",
            "0.0.0.0:15000",
            "--discovery",
            "0.0.0.0:15012",
        ],
        "ports": [
            {"name": "api", "containerPort": 15000, "protocol": "TCP"},
            {"name": "discovery", "containerPort": 15012, "protocol": "TCP"},
        ],
        "readinessProbe": {"tcpSocket": {"port": 15000}},
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/gossamer"}],
        "securityContext": _restricted(),
    }
    webhook = {
        "name": "webhook",
        "image": image,
        "args": [
            "webhook",
            "--listen",
            f"0.0.0.0:{WEBHOOK_PORT}",
            "--tls-cert",
            "/etc/gossamer/webhook/tls.crt",
            "--tls-key",
            "/etc/gossamer/webhook/tls.key",
        ],
        "ports": [{"name": "webhook", "containerPort": WEBHOOK_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": WEBHOOK_PORT, "scheme": "HTTPS"}
        },
        "volumeMounts": [
            {"name": "webhook-tls", "mountPath": "/etc/gossamer/webhook", "readOnly": True}
        ],
        "securityContext": _restricted(),
    }
    client_config: dict[str, Any] = {
        "service": {"name": "gossamer-webhook", "namespace": ns, "path": PATH, "port": 443}
    }
    if config.webhook_ca_pem:
        client_config["caBundle"] = base64.b64encode(config.webhook_ca_pem).decode()
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": dict(LABELS)}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("gossamer-control-plane")},
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta("gossamer-control-plane"),
            "spec": {
                "serviceName": "gossamer-api",
                "replicas": 1,
                "selector": {"matchLabels": dict(LABELS)},
                "template": {
                    "metadata": {
                        "labels": dict(LABELS),
                        # The control plane is not in the mesh it runs.
                        "annotations": {INJECT_ANNOTATION: "false"},
                    },
                    "spec": {
                        "serviceAccountName": "gossamer-control-plane",
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "fsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [control_plane, webhook],
                        "volumes": [
                            {
                                "name": "webhook-tls",
                                "secret": {"secretName": "gossamer-webhook-tls"},
                            }
                        ],
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": config.storage}},
                        },
                    }
                ],
            },
        },
        service("gossamer-api", 15000, 15000),
        service("gossamer-discovery", 15012, 15012),
        service("gossamer-webhook", 443, WEBHOOK_PORT),
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "gossamer-injector", "labels": dict(LABELS)},
            "webhooks": [
                {
                    "name": "inject.gossamer.dev",
                    "clientConfig": client_config,
                    "rules": [
                        {
                            "operations": ["CREATE"],
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "resources": ["pods"],
                            "scope": "Namespaced",
                        }
                    ],
                    # Namespaces opt in with the label gossamer.dev/inject=enabled.
                    "namespaceSelector": {"matchLabels": {INJECT_ANNOTATION: "enabled"}},
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "reinvocationPolicy": "Never",
                    "timeoutSeconds": 10,
                }
            ],
        },
    ]


def _restricted() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
