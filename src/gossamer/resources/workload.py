"""`gossamer.dev/v1alpha1 Workload`: one running instance in universal mode.

Its proxy registers it; Services select it by its labels, as they select pods on
Kubernetes. Peers reach it at `address:inboundPort` (the proxy's mTLS listener); the
proxy hands each connection to the app on `appPort`. The control plane scrapes the
proxy's metrics at `address:adminPort`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from gossamer.resources._base import (
    AppProtocol,
    DNS1123Subdomain,
    Loc,
    Model,
    PortNumber,
    each,
    first_seen,
    invalid,
    rule,
)
from gossamer.resources._limits import MAX_PORTS
from gossamer.resources._names import IANA_SVC_NAME_REASON, is_dns1123_subdomain, is_iana_svc_name
from gossamer.resources.meta import ObjectMeta

__all__ = ["Workload", "WorkloadPort", "WorkloadSpec"]

_ADDRESS_REASON = "must be an IPv4 or IPv6 address, or a DNS name (e.g. vm-1.example.com)"


def _check_address(value: str) -> str:
    try:
        # Normalized, so that two spellings of one address compare equal.
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    host = value.lower()
    # A name whose last label is all digits reads as a (malformed) IPv4 address.
    if not is_dns1123_subdomain(host) or host.rsplit(".", 1)[-1].isdigit():
        raise invalid(_ADDRESS_REASON)
    return host


# Workload ports are what a Service's named targetPort refers to, so they follow the
# Kubernetes container port name rule (IANA_SVC_NAME), not the looser DNS label one.
PortName = Annotated[
    str, rule(is_iana_svc_name, IANA_SVC_NAME_REASON, pattern="^[-a-z0-9]+$", maxLength=15)
]


def _same_as_port(data: dict[str, Any]) -> Any:
    # Only called when `port` validated, so the fallback is never seen.
    return data.get("port", 0)


class WorkloadPort(Model):
    name: PortName | None = None
    port: PortNumber
    """The port Services target (`targetPort`), like a container port."""
    app_port: PortNumber = Field(default_factory=_same_as_port)
    """Where the app listens, behind the proxy; defaults to `port`."""
    app_protocol: AppProtocol | None = None


def _port_problems(ports: list[WorkloadPort]) -> list[tuple[Loc, str]]:
    names = [p.name for p in ports]
    found: list[tuple[Loc, str]] = [
        ((i, "name"), f'duplicate name "{names[i]}" (ports[{j}])')
        for i, j in first_seen(names)
        if names[i] is not None
    ]
    found += [
        ((i, "port"), f"duplicate port {ports[i].port} (ports[{j}])")
        for i, j in first_seen([p.port for p in ports])
    ]
    return found


class WorkloadSpec(Model):
    address: Annotated[str, AfterValidator(_check_address)]
    inbound_port: PortNumber
    service_account: DNS1123Subdomain = "default"
    ports: Annotated[list[WorkloadPort], each(_port_problems)] = Field(
        default_factory=list, max_length=MAX_PORTS
    )
    admin_port: PortNumber | None = None
    """The proxy's admin listener (`/metrics`, `/ready`) at `address`, for the control
    plane's scrapes and Prometheus; absent when it is not reachable there."""


class Workload(Model):
    api_version: Literal["gossamer.dev/v1alpha1"] = "gossamer.dev/v1alpha1"
    kind: Literal["Workload"] = "Workload"
    metadata: ObjectMeta
    spec: WorkloadSpec
    status: dict[str, Any] | None = None
