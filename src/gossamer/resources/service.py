"""`v1 Service`: a name, a label selector and ports — the Kubernetes core type as written."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator

from gossamer.resources._base import (
    AppProtocol,
    DNS1123Label,
    LabelMap,
    Loc,
    Model,
    PortNumber,
    each,
    first_seen,
    invalid,
)
from gossamer.resources._limits import MAX_PORTS
from gossamer.resources._names import IANA_SVC_NAME_RULES, is_iana_svc_name
from gossamer.resources.meta import ServiceMeta

__all__ = ["Service", "ServicePort", "ServiceSpec"]


def _check_target_port(value: object) -> int | str:
    # bool is an int to Python, not to Kubernetes.
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 65535:
            raise invalid("must be 1-65535")
        return value
    if isinstance(value, str):
        if not is_iana_svc_name(value):
            raise invalid(f"must be a port number 1-65535 or a port name ({IANA_SVC_NAME_RULES})")
        return value
    raise invalid("must be a port number or a port name")


# Kubernetes' IntOrString: a number, or the name of a workload port.
TargetPort = Annotated[
    int | str, PlainValidator(_check_target_port, json_schema_input_type=int | str)
]


def _same_as_port(data: dict[str, Any]) -> Any:
    # Only called when `port` validated, so the fallback is never seen.
    return data.get("port", 0)


class ServicePort(Model):
    name: DNS1123Label | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: AppProtocol | None = None
    port: PortNumber
    target_port: TargetPort = Field(default_factory=_same_as_port)
    """The workload port (number or name) traffic goes to; defaults to `port`."""
    node_port: PortNumber | None = None
    """Informational: accepted so Kubernetes YAML applies; the mesh does not use it."""


def _port_problems(ports: list[ServicePort]) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    if len(ports) > 1:
        found += [
            ((i, "name"), "required when there is more than one port")
            for i, p in enumerate(ports)
            if p.name is None
        ]
    names = [p.name for p in ports]
    found += [
        ((i, "name"), f'duplicate name "{names[i]}" (ports[{j}])')
        for i, j in first_seen(names)
        if names[i] is not None
    ]
    found += [
        ((i, "port"), f"duplicate port {ports[i].port}/{ports[i].protocol} (ports[{j}])")
        for i, j in first_seen([(p.port, p.protocol) for p in ports])
    ]
    return found


class ServiceSpec(Model):
    """What the mesh uses is `selector` and `ports`; the rest is accepted, kept and ignored,
    so that Service YAML written for (or read back from) Kubernetes applies unchanged."""

    selector: LabelMap = Field(default_factory=dict)
    """Workloads whose labels include all of these; empty selects none (endpoints are
    then managed by hand, as in Kubernetes)."""
    ports: Annotated[list[ServicePort], each(_port_problems)] = Field(
        min_length=1, max_length=MAX_PORTS
    )
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    cluster_ips: list[str] = Field(default_factory=list, alias="clusterIPs")
    external_name: str | None = None
    external_ips: list[str] = Field(default_factory=list, alias="externalIPs")
    session_affinity: Literal["None", "ClientIP"] | None = None
    session_affinity_config: dict[str, Any] | None = None
    external_traffic_policy: Literal["Cluster", "Local"] | None = None
    internal_traffic_policy: Literal["Cluster", "Local"] | None = None
    ip_families: list[Literal["IPv4", "IPv6"]] = Field(default_factory=list)
    ip_family_policy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] | None = None
    publish_not_ready_addresses: bool | None = None
    load_balancer_ip: str | None = Field(default=None, alias="loadBalancerIP")
    load_balancer_source_ranges: list[str] = Field(default_factory=list)
    load_balancer_class: str | None = None
    allocate_load_balancer_node_ports: bool | None = None
    health_check_node_port: PortNumber | None = None
    traffic_distribution: str | None = None


class Service(Model):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Service"] = "Service"
    metadata: ServiceMeta
    spec: ServiceSpec
    status: dict[str, Any] | None = None
