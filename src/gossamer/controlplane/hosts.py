"""Node authorization: a host proxy obtains only the identities of its own workloads.

A host proxy (`gossamer host`, docs/per-host.md) joins as the host: its certificate is
`spiffe://<td>/ns/gossamer-hosts/sa/<host>`, bought with a join token an operator mints
for that identity. It then asks here, over mTLS with that certificate, for each of its
workloads' certificates:

    POST /v1/hosts/certificates   {"namespace": "shop", "serviceAccount": "web", "csr": PEM}

and the CA signs only while the operator's `Host` object for that host lists the
identity (gossamer.resources.host). Every issue and every refusal is audited.

A certificate issued this way renews only here, so removing the identity from the Host
stops its renewal: the CA marks it with the host's name (`HOST_ISSUED_OID`, a private
extension in the certificate itself, so no lookup and no state can forget it), and both
other ways to a new certificate refuse a marked one: `POST /v1/identity/renew` (the
sidecar's path, which renews any identity it is shown) and an xDS stream's SDS secret,
whether or not the Host still exists. Issues are audited as `certificate.issue.host`.
Kubernetes' Node authorizer and NodeRestriction admission do the same for kubelets;
Istio's ztunnel asks istiod for its pods' certificates the same way.
See docs/decisions/0064-node-authorization.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn

from aiohttp import web

from gossamer.controlplane.api import error_response, read_json
from gossamer.controlplane.discovery import peer_host, require_identity
from gossamer.errors import IdentityError, NotFound
from gossamer.host import CERTIFICATES_PATH, HOSTS_NAMESPACE, renews_only_through
from gossamer.identity.spiffe import SpiffeId

if TYPE_CHECKING:
    from gossamer.controlplane.server import ControlPlane

log = logging.getLogger("gossamer.controlplane.hosts")

RENEW_PATH: Final = "/v1/identity/renew"
ISSUE_ACTION: Final = "certificate.issue.host"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_identity(trust_domain: str, host: str) -> SpiffeId:
    """The identity a host proxy authenticates with."""
    return SpiffeId(trust_domain, HOSTS_NAMESPACE, host)


def allowed(host_object: dict[str, Any], namespace: str, service_account: str) -> bool:
    """Whether the Host object lists the workload identity (namespace, service account)."""
    for entry in (host_object.get("spec") or {}).get("workloads") or ():
        if entry.get("namespace") == namespace and (
            entry.get("serviceAccount", "default") == service_account
        ):
            return True
    return False


class HostAuthority:
    """The control plane's side of node authorization (routes on the discovery listener)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def attach(self, app: web.Application) -> None:
        """Add the host certificate route, and the guard on sidecar renewal, to `app`."""
        app.router.add_post(CERTIFICATES_PATH, self.certificates)
        app.middlewares.append(self._renew_guard)

    # -- the host route ---------------------------------------------------------------

    def _refuse(self, who: str, wanted: str, namespace: str, reason: str) -> NoReturn:
        """Audit and log the refusal, and answer 403 with `reason`."""
        log.warning("host certificate refused: %s asked for %s: %s", who, wanted, reason)
        self.cp.discovery.refused("host-certificate", who, reason)
        self.cp.audit.record(
            who,
            "certificate.refuse",
            kind="Certificate",
            namespace=namespace,
            name=wanted,
            detail={"reason": reason},
        )
        raise IdentityError(reason)

    async def certificates(self, request: web.Request) -> web.Response:
        caller = require_identity(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            return _bad("request body: must be a JSON object")
        namespace, account, csr = (
            body.get("namespace"),
            body.get("serviceAccount", "default"),
            body.get("csr"),
        )
        if not isinstance(namespace, str) or not isinstance(account, str):
            return _bad("namespace: required (a string); serviceAccount: a string")
        if not isinstance(csr, str):
            return _bad("csr: required (PEM text)")
        try:
            wanted = SpiffeId(caller.trust_domain, namespace, account)
        except ValueError as err:
            return _bad(f"namespace/serviceAccount: {err}")
        who = str(caller)
        if namespace == HOSTS_NAMESPACE:
            self._refuse(
                who,
                str(wanted),
                namespace,
                f"{wanted} is a host identity: a host proxy holds only its own, and asks "
                "for its workloads' identities here",
            )
        if caller.namespace != HOSTS_NAMESPACE:
            self._refuse(
                who,
                str(wanted),
                namespace,
                f"{caller} is not a host identity (spiffe://.../ns/{HOSTS_NAMESPACE}/sa/HOST): "
                "only a host proxy asks for its workloads' certificates",
            )
        host = caller.service_account
        try:
            host_object = self.cp.store.get("Host", HOSTS_NAMESPACE, host)
        except NotFound:
            self._refuse(
                who,
                str(wanted),
                namespace,
                f"no Host {host!r} in namespace {HOSTS_NAMESPACE}: an operator applies one "
                "listing the workload identities this host may hold",
            )
        if not allowed(host_object, namespace, account):
            self._refuse(
                who,
                str(wanted),
                namespace,
                f"{wanted} is not registered on host {host!r}: its Host object does not "
                f"list namespace {namespace!r}, service account {account!r}",
            )
        # The CA reads the CSR as ASCII itself: PEM is, and anything else is refused.
        issued = self.cp.ca.sign_csr(
            csr, wanted, ttl=self.cp.config.certificate_ttl, through_host=host
        )
        # Its own action (found by `gossamer audit --action certificate.issue` too): the
        # sidecar renewal path looks certificates issued through a host up by it.
        self.cp.audit.record(
            who,
            ISSUE_ACTION,
            kind="Certificate",
            namespace=namespace,
            name=str(wanted),
            detail={
                "serial": str(issued.serial),
                "notAfter": issued.not_after.isoformat(),
                "host": host,
            },
        )
        log.info("issued certificate serial=%s to %s on host %s", issued.serial, wanted, host)
        return web.json_response(
            {
                "certificateChain": issued.chain_pem,
                "trustBundle": issued.trust_bundle_pem,
                "spiffeId": str(wanted),
                "notAfter": issued.not_after.isoformat(),
            }
        )

    @web.middleware
    async def _renew_guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == RENEW_PATH:
            host = peer_host(request)
            if host is not None:
                identity = str(require_identity(request))
                self._refuse(identity, identity, "", renews_only_through(host))
        return await handler(request)


def _bad(message: str) -> web.Response:
    return error_response(400, "BadRequest", message)
