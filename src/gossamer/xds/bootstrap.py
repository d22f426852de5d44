"""An Envoy's way into the mesh: join (a certificate for the xDS connection), register
its Workload, and the bootstrap that points it at the control plane's xDS server.

Everything else Envoy gets over xDS. The bootstrap names the workload in
`node.metadata` (WORKLOAD, NAMESPACE, INBOUND, OUTBOUND, UPSTREAMS, INTERESTS), which
the xDS server reads to build its listeners (gossamer.xds.server.NodeSpec).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gossamer.errors import IdentityError
from gossamer.identity import tls as identity_tls
from gossamer.identity.bundle import pinned_root
from gossamer.identity.csr import generate_private_key, make_csr
from gossamer.identity.spiffe import SpiffeId
from gossamer.identity.tokens import decode_unverified

__all__ = [
    "EnvoyWorkload",
    "JoinedFiles",
    "deregister",
    "envoy_bootstrap",
    "grpc_bootstrap",
    "join",
    "register",
    "renew",
    "report_ready",
    "write_bundle",
    "write_client_secret",
]

CONTROL_PLANE_SAN_SUFFIX = "/ns/gossamer-system/sa/control-plane"


@dataclass(frozen=True)
class JoinedFiles:
    """Where the workload's certificate for the control plane lies."""

    chain: Path
    key: Path
    bundle: Path
    trust_domain: str


@dataclass(frozen=True)
class EnvoyWorkload:
    """What `gossamer proxy` takes as flags, for an Envoy."""

    name: str
    namespace: str
    service_account: str
    inbound: tuple[str, int]
    outbound: tuple[str, int] | None = None
    address: str = "127.0.0.1"
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[dict[str, Any], ...] = ()  # {"port", "appPort", "name", "appProtocol"}
    upstreams: tuple[dict[str, str], ...] = ()  # {"service": "db.ns:5432", "listen": "h:p"}
    interests: tuple[str, ...] | None = None
    admin_port: int | None = None  # where the control plane scrapes /metrics

    def workload_object(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "address": self.address,
            "inboundPort": self.inbound[1],
            "serviceAccount": self.service_account,
            "ports": list(self.ports),
        }
        if self.admin_port is not None:
            spec["adminPort"] = self.admin_port
        return {
            "apiVersion": "gossamer.dev/v1alpha1",
            "kind": "Workload",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels},
            "spec": spec,
        }


def _write_private(path: Path, data: str) -> None:
    """Written whole and renamed into place: Envoy watches the directory and reloads
    the certificate on a rename, and must never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def _call(url: str, ctx: ssl.SSLContext, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:500]
        raise IdentityError(f"{method} {url}: {err.code} {detail}") from None
    ctype = resp.headers.get("content-type", "")
    return json.loads(raw) if "json" in ctype else raw.decode()


def join(discovery: str, token: str, directory: Path) -> JoinedFiles:
    """Join token → the pinned root → CSR → a certificate, written under `directory`."""
    claims = decode_unverified(token)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only to read the bundle, checked by the pin
    bundle = _call(f"https://{discovery}/v1/identity/bundle", insecure)
    root = pinned_root(bundle, claims.ca_fingerprint)
    identity = SpiffeId(claims.trust_domain, claims.namespace, claims.service_account)
    key = generate_private_key()
    ctx = identity_tls.client_context(None, None, root)
    ctx.check_hostname = True
    data = _call(
        f"https://{discovery}/v1/identity/certificates",
        ctx,
        "POST",
        {"token": token, "csr": make_csr(key, identity).decode()},
    )
    files = JoinedFiles(
        directory / "cert-chain.pem", directory / "key.pem", directory / "root-cert.pem",
        claims.trust_domain,
    )  # fmt: skip
    _write_private(files.key, key.decode())
    _write_private(files.chain, data["certificateChain"])
    _write_private(files.bundle, data["trustBundle"])
    write_client_secret(files)
    return files


def certificate_times(files: JoinedFiles) -> tuple[datetime, datetime]:
    """(notBefore, notAfter) of the certificate in `files`."""
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(files.chain.read_bytes())
    return leaf.not_valid_before_utc, leaf.not_valid_after_utc


def renew(discovery: str, files: JoinedFiles) -> None:
    """The current certificate buys a new one for the same identity (as the Gossamer
    proxy's agent renews); the files are replaced by rename, key first, so Envoy's
    watch reloads a matching pair."""
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(files.chain.read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    [uri] = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    identity = SpiffeId.parse(uri)
    key = generate_private_key()
    data = _call(
        f"https://{discovery}/v1/identity/renew",
        _mtls(files),
        "POST",
        {"csr": make_csr(key, identity).decode()},
    )
    _write_private(files.bundle, data["trustBundle"])
    _write_private(files.key, key.decode())
    _write_private(files.chain, data["certificateChain"])


def register(discovery: str, files: JoinedFiles, workload: EnvoyWorkload) -> None:
    """Register (or replace) the Workload; its xDS stream then holds its lease."""
    _call(
        f"https://{discovery}/v1/workloads/{workload.namespace}/{workload.name}",
        _mtls(files),
        "PUT",
        workload.workload_object(),
    )


def deregister(discovery: str, files: JoinedFiles, workload: EnvoyWorkload) -> None:
    """Leave the mesh: the Workload goes, and with it every endpoint of this Envoy."""
    _call(
        f"https://{discovery}/v1/workloads/{workload.namespace}/{workload.name}",
        _mtls(files),
        "DELETE",
    )


def _mtls(files: JoinedFiles) -> ssl.SSLContext:
    # The name dialled is checked, as the proxy's agent does: only the control plane's
    # certificate carries DNS and IP names (the CA refuses them in workload CSRs).
    ctx = identity_tls.client_context(
        files.chain.read_bytes(), files.key.read_bytes(), files.bundle.read_bytes()
    )
    ctx.check_hostname = True
    return ctx


def report_ready(discovery: str, files: JoinedFiles, workload: EnvoyWorkload, ready: bool) -> None:
    """Whether the app listens: only a ready workload is an endpoint."""
    _call(
        f"https://{discovery}/v1/workloads/{workload.namespace}/{workload.name}/status",
        _mtls(files),
        "PUT",
        {"ready": ready, "message": "" if ready else "app not listening"},
    )


XDS_CLIENT_SECRET = "xds-client"
XDS_TRUST_SECRET = "xds-trust"
_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def _client_secret_file(files: JoinedFiles) -> Path:
    return files.chain.parent / "xds-client-secret.json"


def _trust_secret_file(files: JoinedFiles) -> Path:
    return files.chain.parent / "xds-trust-secret.json"


def write_client_secret(files: JoinedFiles) -> None:
    """The SDS files (one secret each, as file-based SDS wants) the bootstrap's xDS
    cluster reads its client certificate and trust bundle from, by file name: Envoy
    reloads them when a file is renamed into their directory."""
    watched = {"path": str(files.chain.parent)}
    secrets = {
        _client_secret_file(files): {
            "name": XDS_CLIENT_SECRET,
            "tls_certificate": {
                "certificate_chain": {"filename": str(files.chain)},
                "private_key": {"filename": str(files.key)},
                "watched_directory": watched,
            },
        },
        _trust_secret_file(files): {
            "name": XDS_TRUST_SECRET,
            "validation_context": {
                "trusted_ca": {"filename": str(files.bundle)},
                "watched_directory": watched,
            },
        },
    }
    for path, secret in secrets.items():
        _write_private(path, json.dumps({"resources": [{"@type": _SECRET_TYPE, **secret}]}))


def write_bundle(files: JoinedFiles, bundle: str) -> bool:
    """Replace the trust bundle (Envoy reloads it) if `bundle` differs; whether it did."""
    if bundle == files.bundle.read_text():
        return False
    _write_private(files.bundle, bundle)
    return True


def _admin_address(admin: tuple[str, int] | Path) -> dict[str, Any]:
    """A TCP address, or a Unix socket only its owner may use (mode 0600)."""
    if isinstance(admin, Path):
        return {"pipe": {"path": str(admin), "mode": 0o600}}
    return {"socket_address": {"address": admin[0], "port_value": admin[1]}}


def envoy_bootstrap(
    workload: EnvoyWorkload,
    xds: tuple[str, int],
    files: JoinedFiles,
    admin: tuple[str, int] | Path,
) -> dict[str, Any]:
    """Envoy's bootstrap: who it is, the xDS server (mTLS, the control plane's SPIFFE ID
    checked), ADS for every resource type, and the admin listener (readiness, stats):
    a TCP address, or a Unix socket path."""
    metadata: dict[str, Any] = {
        "WORKLOAD": workload.name,
        "NAMESPACE": workload.namespace,
        "INBOUND": f"{workload.inbound[0]}:{workload.inbound[1]}",
    }
    if workload.outbound is not None:
        metadata["OUTBOUND"] = f"{workload.outbound[0]}:{workload.outbound[1]}"
    if workload.upstreams:
        metadata["UPSTREAMS"] = [dict(u) for u in workload.upstreams]
    if workload.interests is not None:
        metadata["INTERESTS"] = list(workload.interests)
    ads = {"ads": {}, "resource_api_version": "V3"}
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                # From a file Envoy watches: the supervisor renews the certificate
                # and Envoy's next connection to the control plane uses the new one.
                "tls_certificate_sds_secret_configs": [
                    {
                        "name": XDS_CLIENT_SECRET,
                        "sds_config": {
                            "path_config_source": {"path": str(_client_secret_file(files))},
                            "resource_api_version": "V3",
                        },
                    }
                ],
                # The trust bundle too: after a root rotation the supervisor rewrites it.
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [
                            {
                                "san_type": "URI",
                                "matcher": {
                                    "exact": (
                                        f"spiffe://{files.trust_domain}{CONTROL_PLANE_SAN_SUFFIX}"
                                    )
                                },
                            }
                        ],
                    },
                    "validation_context_sds_secret_config": {
                        "name": XDS_TRUST_SECRET,
                        "sds_config": {
                            "path_config_source": {"path": str(_trust_secret_file(files))},
                            "resource_api_version": "V3",
                        },
                    },
                },
            },
        },
    }
    return {
        "node": {
            "id": f"{workload.namespace}/{workload.name}",
            "cluster": workload.namespace,
            "metadata": metadata,
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds[0],
                                                    "port_value": xds[1],
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                            "HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "transport_socket": tls,
                }
            ]
        },
        "admin": {"address": _admin_address(admin)},
    }


def grpc_bootstrap(
    name: str,
    namespace: str,
    xds: tuple[str, int],
    files: JoinedFiles,
    interests: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """A gRPC xDS bootstrap (`GRPC_XDS_BOOTSTRAP`): the control plane's xDS server over
    mTLS with the join certificate (gRFC A65 `tls` channel credentials), and a node
    that says it is a proxyless client (decision 0074)."""
    metadata: dict[str, Any] = {"WORKLOAD": name, "NAMESPACE": namespace, "PROXYLESS": True}
    if interests is not None:
        metadata["INTERESTS"] = list(interests)
    return {
        "xds_servers": [
            {
                "server_uri": f"{xds[0]}:{xds[1]}",
                "channel_creds": [
                    {
                        "type": "tls",
                        "config": {
                            "ca_certificate_file": str(files.bundle),
                            "certificate_file": str(files.chain),
                            "private_key_file": str(files.key),
                        },
                    }
                ],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": f"{namespace}/{name}", "cluster": namespace, "metadata": metadata},
    }
