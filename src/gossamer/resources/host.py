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

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gossamer.host import HOSTS_NAMESPACE
from gossamer.resources._base import (
    DNS1123Label,
    DNS1123Subdomain,
    Loc,
    Model,
    each,
    first_seen,
    raise_problems,
)
from gossamer.resources.meta import ObjectMeta

__all__ = ["HOSTS_NAMESPACE", "Host", "HostSpec", "HostWorkload"]

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
