"""Envoy as the peer data plane: certificates from Gossamer's CA and static bootstraps.

Two Envoys mirror Gossamer's two proxies: a client Envoy with a plain HTTP/1.1
listener routing ``echo.bench`` to a cluster that speaks TLS 1.3 with a client
certificate to the server Envoy, which requires and verifies client certificates and
forwards to the backend. Both run one worker (``--concurrency 1``) and log no access.

With ``http2`` (the gRPC workload) every hop is HTTP/2 instead: h2c with prior
knowledge into the client Envoy, h2 over the same TLS 1.3 (ALPN ``h2``) between the
two, and h2c to the backend; Envoy's own HTTP/2 defaults otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from gossamer.identity import CertificateAuthority, SpiffeId, generate_private_key, make_csr

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "bench"

_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class TlsFiles:
    """One workload's identity on disk: chain (leaf + intermediate), key, trust bundle."""

    chain: Path
    key: Path
    trust_bundle: Path
    spiffe_id: str


def issue_identities(directory: Path, service_accounts: list[str]) -> dict[str, TlsFiles]:
    """A fresh Gossamer CA in ``directory`` and one ECDSA P-256 leaf per service account."""
    ca = CertificateAuthority.load_or_create(directory / "ca", TRUST_DOMAIN)
    out: dict[str, TlsFiles] = {}
    for sa in service_accounts:
        identity = SpiffeId(TRUST_DOMAIN, NAMESPACE, sa)
        key = generate_private_key()
        issued = ca.sign_csr(make_csr(key, identity), identity)
        files = TlsFiles(
            chain=directory / f"{sa}.chain.pem",
            key=directory / f"{sa}.key.pem",
            trust_bundle=directory / "trust-bundle.pem",
            spiffe_id=str(identity),
        )
        files.chain.write_text(issued.chain_pem)
        files.key.write_bytes(key)
        files.key.chmod(0o600)
        files.trust_bundle.write_text(issued.trust_bundle_pem)
        out[sa] = files
    return out


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _tls_params() -> dict[str, str]:
    return {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}


def _certificates(tls: TlsFiles) -> list[dict[str, Any]]:
    return [
        {
            "certificate_chain": {"filename": str(tls.chain)},
            "private_key": {"filename": str(tls.key)},
        }
    ]


# Envoy resets an HTTP/2 connection on which more than max_outbound_frames (default
# 10,000) frames wait to be written: flood protection against a peer that does not
# read. The gRPC streaming workload (64 server streams of 1,000 one-message DATA frames)
# queues more than that on a loaded machine, and Envoy's connections were reset (36
# calls/s, errors) rather than slowed; raised so that both proxies are measured carrying
# the load. Gossamer bounds the same by flow control and the transport's write buffer.
_HTTP2_OPTIONS: Final = {"max_outbound_frames": 1_000_000}


def _http_listener(
    name: str, port: int, cluster: str, domains: list[str], http2: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "address": _address(port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _HCM,
                            "stat_prefix": name,
                            "codec_type": "HTTP2" if http2 else "HTTP1",
                            **({"http2_protocol_options": _HTTP2_OPTIONS} if http2 else {}),
                            # No access_log: none is configured, so none is written.
                            "route_config": {
                                "name": name,
                                "virtual_hosts": [
                                    {
                                        "name": cluster,
                                        "domains": domains,
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "route": {"cluster": cluster},
                                            }
                                        ],
                                    }
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": _ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def _cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": _HTTP2_OPTIONS},
            }
        }
    return cluster


def _alpn(http2: bool) -> dict[str, list[str]]:
    return {"alpn_protocols": ["h2"]} if http2 else {}


def server_bootstrap(
    inbound_port: int, backend_port: int, tls: TlsFiles, http2: bool = False
) -> dict[str, Any]:
    """The server side: mTLS listener (client certificate required) → backend."""
    listener = _http_listener("inbound", inbound_port, "backend", ["*"], http2)
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _DOWNSTREAM_TLS,
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_params": _tls_params(),
                "tls_certificates": _certificates(tls),
                "validation_context": {"trusted_ca": {"filename": str(tls.trust_bundle)}},
                **_alpn(http2),
            },
        },
    }
    return {
        "admin": {"address": _address(0)},
        "static_resources": {
            "listeners": [listener],
            "clusters": [_cluster("backend", backend_port, http2)],
        },
    }


def client_bootstrap(
    outbound_port: int,
    server_port: int,
    tls: TlsFiles,
    server_id: str,
    host: str,
    http2: bool = False,
) -> dict[str, Any]:
    """The client side: plain HTTP listener for ``host`` → mTLS to the server Envoy.

    Like Gossamer's outbound, it checks the server's SPIFFE ID, not just its chain.
    """
    cluster = _cluster("echo", server_port, http2)
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _UPSTREAM_TLS,
            "common_tls_context": {
                "tls_params": _tls_params(),
                "tls_certificates": _certificates(tls),
                "validation_context": {
                    "trusted_ca": {"filename": str(tls.trust_bundle)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": server_id}}
                    ],
                },
                **_alpn(http2),
            },
        },
    }
    return {
        "admin": {"address": _address(0)},
        "static_resources": {
            "listeners": [
                _http_listener("outbound", outbound_port, "echo", [host, f"{host}:*"], http2)
            ],
            "clusters": [cluster],
        },
    }


def write_bootstrap(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def envoy_argv(envoy_bin: str, config: Path, admin_path: Path, log_level: str) -> list[str]:
    return [
        envoy_bin,
        "-c",
        str(config),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--admin-address-path",
        str(admin_path),
        "--log-level",
        log_level,
    ]
