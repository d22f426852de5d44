"""`gossamer.dev/v1alpha1 Host`: an operator's record of what may run on one host.

    apiVersion: gossamer.dev/v1alpha1
    kind: Host
    metadata: {name: node-1, namespace: gossamer-hosts}   # Hosts live in gossamer-hosts
    spec:
      workloads:                      # the identities node-1's host proxy may hold
      - {namespace: shop, serviceAccount: web}
      - {namespace: shop, serviceAccount: cart}

A host proxy (`gossamer host`) authenticates as `spiffe://<td>/ns/gossamer-hosts/sa/<name>`
and the CA issues it a workload's certificate only while that workload's identity is
listed here (node authorization, docs/decisions/0064-node-authorization.md). Removing an
entry stops the host from obtaining or renewing that identity.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from gossamer.errors import FieldError, InvalidResource
from gossamer.host import HOSTS_NAMESPACE
from gossamer.resources._base import (
    Between,
    DNS1123Label,
    DNS1123Subdomain,
    LabelMap,
    Loc,
    Model,
    each,
    first_seen,
    invalid,
    raise_problems,
)
from gossamer.resources._documents import decode_text, parse_documents
from gossamer.resources._errors import field_errors
from gossamer.resources._limits import MAX_PORTS, limit_errors
from gossamer.resources.meta import ObjectMeta
from gossamer.resources.workload import WorkloadPort, _check_address, _port_problems

__all__ = [
    "HOSTS_NAMESPACE",
    "ConfiguredWorkload",
    "Host",
    "HostConfiguration",
    "HostSpec",
    "HostWorkload",
    "load_host_configuration",
]

MAX_HOST_WORKLOADS = 1000


class HostWorkload(Model):
    namespace: DNS1123Label
    service_account: DNS1123Subdomain = "default"

    @model_validator(mode="after")
    def _not_a_host(self) -> HostWorkload:
        if self.namespace == HOSTS_NAMESPACE:
            raise_problems(
                [(("namespace",), f"\"{HOSTS_NAMESPACE}\" holds hosts' identities, no workload's")]
            )
        return self


def _duplicates(items: list[HostWorkload]) -> list[tuple[Loc, str]]:
    keys = [(w.namespace, w.service_account) for w in items]
    return [((i,), f"duplicate of workloads[{j}]") for i, j in first_seen(keys)]


class HostSpec(Model):
    workloads: Annotated[list[HostWorkload], each(_duplicates)] = Field(
        default_factory=list, max_length=MAX_HOST_WORKLOADS
    )
    """The workload identities this host's proxy may hold."""


class Host(Model):
    api_version: Literal["gossamer.dev/v1alpha1"] = "gossamer.dev/v1alpha1"
    kind: Literal["Host"] = "Host"
    metadata: ObjectMeta
    spec: HostSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _in_hosts_namespace(self) -> Host:
        if self.metadata.namespace != HOSTS_NAMESPACE:
            raise_problems(
                [(("metadata", "namespace"), f'must be "{HOSTS_NAMESPACE}": Hosts live there')]
            )
        return self


# ---- the host config file: the workloads `gossamer host --config FILE` serves ---------

MAX_CONFIG_BYTES = 1 << 20
# setuid(2) takes uids up to 2**32 - 2 ((uid_t) -1 means "unchanged").
MAX_UID = 2**32 - 2


def _check_listener(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise invalid("must be HOST:PORT (e.g. 127.0.0.1:4140; port 0 picks a free one)")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise invalid(f"{host!r} is not an IP address") from None
    return value


def _check_cidr(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except ValueError:
        raise invalid("must be an IPv4 network (e.g. 198.19.0.0/16)") from None


def _check_netns(value: str) -> str:
    if not value.startswith("/"):
        raise invalid(
            "must be an absolute path to a network namespace (/run/netns/NAME or /proc/PID/ns/net)"
        )
    return value


Listener = Annotated[str, AfterValidator(_check_listener)]


def _port_of(listener: str) -> int:
    return int(listener.rpartition(":")[2])


class ConfiguredWorkload(Model):
    """One workload the host serves: what `gossamer run --host-proxy` would register,
    and how its connections are told apart (docs/decisions/0065, 0106, 0107)."""

    name: DNS1123Subdomain
    namespace: DNS1123Label = "default"
    service_account: DNS1123Subdomain = "default"
    labels: LabelMap = Field(default_factory=dict)
    """Services select the workload by these, as everywhere (`app: web`)."""
    ports: Annotated[list[WorkloadPort], each(_port_problems)] = Field(
        default_factory=list, max_length=MAX_PORTS
    )
    inbound: Listener
    outbound: Listener
    admin: Listener
    address: Annotated[str, AfterValidator(_check_address)] | None = None
    """Where peers reach the inbound listener; defaults to its host."""
    app_host: Annotated[str, AfterValidator(_check_address)] = "127.0.0.1"
    dns: Listener | None = None
    service_cidr: Annotated[str, AfterValidator(_check_cidr)] | None = None
    netns: Annotated[str, AfterValidator(_check_netns)] | None = None
    """A network namespace of the workload's own: its data plane runs inside it."""
    uid: Annotated[int, Between(1, MAX_UID)] | None = None
    """On a plain host: this uid's outbound TCP (and DNS) is captured to this
    workload's outbound listener, and only this uid may connect to it."""

    @model_validator(mode="after")
    def _attribution(self) -> ConfiguredWorkload:
        found: list[tuple[Loc, str]] = []
        if self.uid is not None:
            if self.netns is not None:
                found.append(
                    (("uid",), "a workload is told apart by its network namespace or by its "
                     "uid, not both: drop netns (uid capture is for a shared namespace)")
                )  # fmt: skip
            host = self.outbound.rpartition(":")[0]
            if host != "127.0.0.1" or _port_of(self.outbound) == 0:
                found.append(
                    (("outbound",), "a uid workload's outbound listener must be "
                     "127.0.0.1:PORT with a fixed port: its uid's connections are "
                     "redirected there, and only there")
                )  # fmt: skip
            if _port_of(self.inbound) == 0:
                found.append((("inbound",), "a uid workload needs a fixed inbound port"))
            if self.dns is not None and (
                _port_of(self.dns) == 0
                or self.dns.rpartition(":")[0] not in ("127.0.0.1", "0.0.0.0")
            ):
                found.append(
                    (("dns",), "a uid workload's DNS listener must be on 127.0.0.1 with a "
                     "fixed port: its uid's DNS is redirected there")
                )  # fmt: skip
        raise_problems(found)
        return self

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def registration(self) -> dict[str, Any]:
        """The registration `gossamer run --host-proxy` would send for this workload
        (gossamer.host.proxy.Registration reads both)."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "serviceAccount": self.service_account,
            "labels": dict(self.labels),
            "ports": [
                {
                    "port": p.port,
                    "appPort": p.app_port,
                    "name": p.name,
                    "appProtocol": p.app_protocol,
                }
                for p in self.ports
            ],
            "inbound": self.inbound,
            "outbound": self.outbound,
            "admin": self.admin,
            "address": self.address or self.inbound.rpartition(":")[0].strip("[]"),
            "appHost": self.app_host,
            "dns": self.dns,
            "serviceCidr": self.service_cidr,
            "netns": self.netns,
            "uid": self.uid,
        }


def _workload_problems(items: list[ConfiguredWorkload]) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = [
        ((i, "name"), f"duplicate of workloads[{j}] ({items[i].namespace}/{items[i].name})")
        for i, j in first_seen([w.key for w in items])
    ]
    uids = [w.uid for w in items]
    found += [
        ((i, "uid"), f"uid {uids[i]} is workloads[{j}]'s: a uid names one workload")
        for i, j in first_seen(uids)
        if uids[i] is not None
    ]
    return found


class HostConfiguration(Model):
    """`gossamer host --config FILE`: the workloads this host serves, registered at
    start and on every reload (SIGHUP, or the file changing)."""

    api_version: Literal["gossamer.dev/v1alpha1"] = "gossamer.dev/v1alpha1"
    kind: Literal["HostConfiguration"] = "HostConfiguration"
    workloads: Annotated[list[ConfiguredWorkload], each(_workload_problems)] = Field(
        default_factory=list, max_length=MAX_HOST_WORKLOADS
    )


def load_host_configuration(data: bytes, source: str) -> HostConfiguration:
    """The host config file `data` (YAML or JSON), validated whole.

    Raises InvalidResource (subject `source`) carrying every error, each with its field
    path (`workloads[1].uid: must be 1-4294967294`); nothing of a bad file is used."""
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidResource(
            [FieldError("", f"larger than {MAX_CONFIG_BYTES} bytes")], subject=source
        )
    documents = parse_documents(decode_text(data, source), source)
    if len(documents) != 1:
        raise InvalidResource(
            [FieldError("", f"must hold one HostConfiguration document, not {len(documents)}")],
            subject=source,
        )
    if too_large := limit_errors(documents[0]):
        raise InvalidResource(too_large, subject=source)
    try:
        return HostConfiguration.model_validate(documents[0])
    except ValidationError as exc:
        raise InvalidResource(field_errors(exc, HostConfiguration), subject=source) from None
