"""The host's own identity, and its workloads' certificates obtained through it.

`HostSession` is an `Agent` for the host identity (`ns/gossamer-hosts/sa/<host>`): it
joins with the operator's host join token and renews, and does nothing else (a host is
no Workload: it registers nothing and follows no discovery).

`HostedAgent` is a workload's `Agent` in the host proxy: registration, discovery,
readiness and the cache are the sidecar's, but its certificate comes from the host route
(POST /v1/hosts/certificates) with the host's certificate, both at first and at every
renewal, so the control plane's node authorization decides each time.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path

from gossamer.errors import IdentityError
from gossamer.host import CERTIFICATES_PATH, HOSTS_NAMESPACE
from gossamer.identity.keygen import new_key_and_csr
from gossamer.identity.spiffe import SpiffeId
from gossamer.proxy.agent.session import (
    Agent,
    AgentConfig,
    CannotJoin,
    DataPlaneSink,
)
from gossamer.proxy.wire.tls import Credentials
from gossamer.translate.snapshot import Snapshot

log = logging.getLogger("gossamer.host")


class NotOnHost(CannotJoin):
    """The control plane refused a workload's identity to this host (node authorization)."""


class _HostCredentials:
    """Where the host session's certificate goes: nowhere but here (no data plane)."""

    def __init__(self) -> None:
        self.creds: Credentials | None = None

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        pass

    def set_credentials(self, creds: Credentials) -> None:
        self.creds = creds

    def control_demand(self) -> dict[str, int]:
        return {}

    def set_control_shares(self, shares: Mapping[str, float]) -> None:
        pass


class HostSession(Agent):
    def __init__(
        self,
        host: str,
        discovery: tuple[str, int],
        state_dir: Path,
        join_token: str | None,
        replicas: tuple[tuple[str, int], ...] = (),
    ) -> None:
        self.host_credentials = _HostCredentials()
        super().__init__(
            AgentConfig(
                discovery=discovery,
                workload=host,
                namespace=HOSTS_NAMESPACE,
                service_account=host,
                address="127.0.0.1",
                inbound_port=1,
                state_dir=state_dir,
                join_token=join_token,
                replicas=replicas,
            ),
            self.host_credentials,
        )

    async def start(self) -> None:
        """The host's certificate (cache, else join), then keep it renewed."""
        if not self.load_cache():
            await self._retry("host join", self.join)
        self._tasks.append(asyncio.create_task(self._renew_loop(), name="host-renew"))

    def context(self) -> ssl.SSLContext:
        """mTLS to the control plane as the host."""
        return self._ctx()

    async def workload_certificate(
        self, namespace: str, service_account: str, *, first: bool
    ) -> tuple[dict[str, object], bytes]:
        """A new key and the control plane's answer for identity (namespace, account)."""
        if self.trust_domain is None or self.creds is None:
            raise IdentityError("the host has no certificate yet")
        identity = SpiffeId(self.trust_domain, namespace, service_account)
        key, csr = await new_key_and_csr(identity)
        status, data = await self._client.request(
            "POST",
            CERTIFICATES_PATH,
            self.context(),
            {"namespace": namespace, "serviceAccount": service_account, "csr": csr.decode()},
        )
        if status >= 400:
            message = _message(data)
            if status == 403 and first:
                raise NotOnHost(f"the control plane refused {identity} to this host: {message}")
            raise IdentityError(f"{CERTIFICATES_PATH}: {status} {message}")
        if not isinstance(data, dict):
            raise IdentityError(f"{CERTIFICATES_PATH}: the answer is not a JSON object")
        return data, key

    async def stop(self, deregister: bool = False) -> None:
        await super().stop(deregister=False)


class HostedAgent(Agent):
    """A workload's session with the control plane, its certificate through the host."""

    def __init__(self, config: AgentConfig, dataplane: DataPlaneSink, host: HostSession) -> None:
        super().__init__(config, dataplane)
        self.host = host

    async def join(self) -> None:
        self.trust_domain = self.host.trust_domain
        data, key = await self.host.workload_certificate(
            self.config.namespace, self.config.service_account, first=True
        )
        self._adopt(data, key)
        log.info(
            "workload %s/%s has its certificate (as %s, through host %s)",
            self.config.namespace,
            self.config.workload,
            data.get("spiffeId"),
            self.host.config.workload,
        )

    async def renew(self) -> None:
        data, key = await self.host.workload_certificate(
            self.config.namespace, self.config.service_account, first=False
        )
        self._adopt(data, key)
        log.info("renewed %s (through the host)", data.get("spiffeId"))
        await self._send_status()


def _message(data: object) -> object:
    error = data.get("error") if isinstance(data, dict) else None
    return error.get("message") if isinstance(error, dict) else data
