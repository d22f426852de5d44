"""Kubernetes injection, contract-tested: `gossamer inject -f` against golden files, the
webhook over real HTTPS making the same change, every output valid against the
Kubernetes OpenAPI schemas (kubernetes-validate), and the commands it writes into pods
accepted by the real `gossamer capture` and `gossamer proxy`. No API server runs here,
so nothing is cluster-tested."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gossamer.cli.main import build_parser
from gossamer.inject.inject import TEMPLATE_PATHS, InjectConfig, InjectRefused, inject

GOSSAMER = [sys.executable, "-m", "gossamer.cli.main"]
MANIFESTS = sorted((Path(__file__).parent / "manifests").glob("*.yaml"))
KUBERNETES = "1.37.0"


def gossamer(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GOSSAMER, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def schema_valid(document: dict[str, Any]) -> None:
    for obj in document.get("items", [document]) if document["kind"] == "List" else [document]:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def pod_specs(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs of an object (or of a List's items), where TEMPLATE_PATHS says."""
    found = []
    for obj in document["items"] if document["kind"] == "List" else [document]:
        if obj["kind"] in TEMPLATE_PATHS:
            template = obj
            for key in TEMPLATE_PATHS[obj["kind"]]:
                template = template[key]
            found.append(template["spec"])
    return found


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.stem for m in MANIFESTS])
def test_inject_writes_the_golden_schema_valid_output(manifest: Path, golden: Any) -> None:
    r = gossamer("inject", "-f", str(manifest))
    assert r.returncode == 0, r.stderr
    golden(f"inject/{manifest.stem}.yaml", r.stdout)
    for document in yaml.safe_load_all(r.stdout):
        schema_valid(document)


def test_inject_says_what_it_did_with_each_object() -> None:
    r = gossamer("inject", "-f", str(Path(__file__).parent / "manifests" / "pod-and-service.yaml"))
    assert r.stderr.splitlines() == [
        "Pod shop/echo: injected (pod template at the pod)",
        "Service shop/echo: unchanged (a Service has no pods)",
        'Deployment shop/legacy: skipped (annotated gossamer.dev/inject: "false")',
    ]


def test_the_sidecar_is_native_and_starts_after_the_rules_before_the_pods_own_init() -> None:
    text = (Path(__file__).parent / "manifests" / "statefulset-with-init.yaml").read_text()
    injected, _ = inject(yaml.safe_load(text), InjectConfig())
    (spec,) = pod_specs(injected)
    init = spec["initContainers"]
    assert [c["name"] for c in init] == ["gossamer-init", "gossamer-proxy", "init-www"]
    assert init[1]["restartPolicy"] == "Always"
    assert "restartPolicy" not in init[0] and "restartPolicy" not in init[2]
    assert init[1]["securityContext"]["runAsUser"] == 1337
    assert "--proxy-uid" in init[0]["command"] and "1337" in init[0]["command"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.stem for m in MANIFESTS])
def test_injecting_twice_changes_nothing_more(manifest: Path) -> None:
    for document in yaml.safe_load_all(manifest.read_text()):
        once, _ = inject(document, InjectConfig())
        twice, _ = inject(once, InjectConfig())
        assert twice == once


def test_a_host_network_pod_is_refused_naming_the_field() -> None:
    deployment = yaml.safe_load(
        (Path(__file__).parent / "manifests" / "daemonset.yaml").read_text()
    )
    deployment["spec"]["template"]["spec"]["hostNetwork"] = True
    with pytest.raises(InjectRefused, match=r"spec\.template\.spec\.hostNetwork is true"):
        inject(deployment, InjectConfig())
    r = gossamer("inject", "-f", "-", stdin=yaml.safe_dump(deployment))
    assert r.returncode == 1
    assert (
        "DaemonSet kube-system/fluentd-elasticsearch: spec.template.spec.hostNetwork is true"
        in r.stderr
    )
    assert 'gossamer.dev/inject: "false"' in r.stderr


def test_the_init_container_and_the_sidecar_run_commands_gossamer_accepts() -> None:
    text = (Path(__file__).parent / "manifests" / "deployment-two-containers.yaml").read_text()
    injected, _ = inject(yaml.safe_load(text), InjectConfig())
    (spec,) = pod_specs(injected)
    init, sidecar = spec["initContainers"][:2]
    # The capture rules of the init container, through the real CLI (printed, not installed).
    assert init["command"][0] == "gossamer"
    r = gossamer(*init["command"][1:], "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "-A GOSSAMER_INBOUND -p tcp --dport 80 -j REDIRECT --to-ports 4143" in r.stdout
    assert "-A GOSSAMER_INBOUND -p tcp --dport 2020 -j REDIRECT --to-ports 4143" in r.stdout
    assert "-A GOSSAMER_OUTPUT -m owner --uid-owner 1337 -j RETURN" in r.stdout
    assert "-A GOSSAMER_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053" in r.stdout
    # The sidecar's arguments, as the kubelet expands them, parse as `gossamer proxy`.
    env = {"$(POD_NAME)": "web-1", "$(POD_NAMESPACE)": "shop", "$(POD_IP)": "10.0.0.7"}
    args = build_parser(("proxy",)).parse_args([env.get(a, a) for a in sidecar["args"]])
    assert (args.name, args.namespace, args.service_account) == ("web-1", "shop", "web")
    assert args.address == "10.0.0.7"
    assert args.dns == ("127.0.0.1", 15053)
    assert dict(args.label) == {"app": "web", "version": "v2"}
    assert [(c, a, n) for c, a, n, _ in args.port] == [(80, 80, "http"), (2020, 2020, "metrics")]


def test_install_kubernetes_writes_the_golden_schema_valid_manifests(
    golden: Any, tmp_path: Path
) -> None:
    r = gossamer("install", "kubernetes")
    assert r.returncode == 0, r.stderr
    golden("inject/install-kubernetes.yaml", r.stdout)
    documents = list(yaml.safe_load_all(r.stdout))
    for document in documents:
        schema_valid(document)
    kinds = [d["kind"] for d in documents]
    assert kinds == ["Namespace", "ServiceAccount", "StatefulSet", "Service", "Service",
                     "Service", "MutatingWebhookConfiguration"]  # fmt: skip
    # With the webhook's CA, its caBundle.
    ca = tmp_path / "ca.pem"
    ca.write_bytes(_certificate("gossamer-webhook-ca")[0])
    r = gossamer("install", "kubernetes", "--webhook-ca", str(ca), "-o", "json")
    webhook = json.loads(r.stdout)["items"][-1]["webhooks"][0]
    assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == ca.read_bytes()


# ---- the webhook -----------------------------------------------------------------------


def _certificate(name: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1 and its key, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Webhook:
    def __init__(self, url: str, ca: Path) -> None:
        self.url = url
        self.tls = ssl.create_default_context(cafile=str(ca))

    def review(self, obj: dict[str, Any], uid: str = "7f0b2b8e") -> dict[str, Any]:
        body = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": uid, "operation": "CREATE", "object": obj},
        }
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, context=self.tls, timeout=10) as r:
            answer: dict[str, Any] = json.loads(r.read())
        return answer


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    tmp = tmp_path_factory.mktemp("webhook")
    cert, key = _certificate("gossamer-webhook")
    (tmp / "tls.crt").write_bytes(cert)
    (tmp / "tls.key").write_bytes(key)
    ready, log = tmp / "ready", tmp / "webhook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*GOSSAMER, "webhook", "--listen", "127.0.0.1:0", "--tls-cert", str(tmp / "tls.crt"),
             "--tls-key", str(tmp / "tls.key"), "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the webhook never started:\n{log.read_text()}"
            time.sleep(0.05)
        yield Webhook(ready.read_text().strip(), tmp / "tls.crt")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.stem for m in MANIFESTS])
def test_the_webhook_over_https_makes_the_same_change_as_inject(
    manifest: Path, webhook: Webhook
) -> None:
    injected = list(yaml.safe_load_all(gossamer("inject", "-f", str(manifest)).stdout))
    for original, expected in zip(yaml.safe_load_all(manifest.read_text()), injected, strict=True):
        answer = webhook.review(original)
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        response = answer["response"]
        assert (response["uid"], response["allowed"]) == ("7f0b2b8e", True)
        if expected == original:
            assert "patch" not in response
            continue
        assert response["patchType"] == "JSONPatch"
        patch = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"])))
        assert patch.apply(original) == expected


def test_the_webhook_admits_a_host_network_pod_unchanged_with_a_warning(webhook: Webhook) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent", "namespace": "ops"},
        "spec": {"hostNetwork": True, "containers": [{"name": "a", "image": "busybox"}]},
    }
    response = webhook.review(pod)["response"]
    assert response["allowed"] is True and "patch" not in response
    (warning,) = response["warnings"]
    assert "Pod ops/agent: spec.hostNetwork is true" in warning


def test_the_webhook_refuses_what_is_not_an_admission_review(webhook: Webhook) -> None:
    request = urllib.request.Request(webhook.url, data=b'{"kind": "Pod"}')
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, context=webhook.tls, timeout=10)
    assert err.value.code == 400
    assert "apiVersion: want admission.k8s.io/v1" in err.value.read().decode()
