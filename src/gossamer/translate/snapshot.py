"""The snapshot: everything one proxy needs, as an immutable value.

A snapshot is built by `build_snapshot` (pure), checked by `check_consistent`, and
serialised to JSON for the discovery stream and the proxy's on-disk cache. The proxy
reads it on its hot path, so it is made of plain frozen dataclasses and tuples.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gossamer.translate.authz import SecurityView
from gossamer.translate.controltypes import ControlView
from gossamer.translate.routetypes import ServicePolicy, ServiceRoutes, load
from gossamer.translate.telemetry import TelemetryView


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One workload behind a service port, as a peer proxy reaches it."""

    workload: str
    namespace: str
    address: str  # where the workload's proxy listens for mesh traffic
    inbound_port: int  # that proxy's mTLS inbound listener
    target_port: int  # the workload's container port the service port maps to
    identity: str  # the SPIFFE ID the peer must present


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    name: str | None = None
    app_protocol: str | None = None
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceView:
    name: str
    namespace: str
    ports: tuple[ServicePort, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.name}.{self.namespace}"


@dataclass(frozen=True, slots=True)
class LocalPort:
    """A port the proxy's own workload serves: mesh traffic for `port` goes to `app_port`."""

    port: int
    app_port: int
    name: str | None = None
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class ProxySelf:
    workload: str
    namespace: str
    service_account: str
    identity: str
    ports: tuple[LocalPort, ...] = ()
    # Services whose selector picks this workload: the `dst_service` of inbound
    # metrics and the `src_service` of outbound ones.
    services: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    proxy: ProxySelf
    trust_domain: str
    trust_bundle: str
    services: tuple[ServiceView, ...] = ()
    # The services the proxy asked about ("name.namespace"). One listed here but
    # absent from `services` does not exist: the proxy can answer at once instead
    # of waiting for a later snapshot.
    interests: tuple[str, ...] = ()
    version: str = field(default="")
    # Traffic management (gossamer.translate.routes): the HTTPRoutes that apply to the
    # services above, per service port; the policies for calls to them; and the
    # services present only because a route sends traffic to them.
    routes: tuple[ServiceRoutes, ...] = ()
    policies: tuple[ServicePolicy, ...] = ()
    route_services: tuple[str, ...] = ()
    # Security (gossamer.translate.authz): the mTLS mode, the authorization default and
    # the AuthorizationPolicies that apply to this proxy's own workload.
    security: SecurityView = field(default_factory=SecurityView)
    # Telemetry (gossamer.translate.telemetry): MeshPolicy tracing and access log
    # settings for this proxy's own workload.
    telemetry: TelemetryView = field(default_factory=TelemetryView)
    # TrafficControls (gossamer.translate.controls) whose source group holds this
    # proxy's workload, over the services above that they govern.
    controls: tuple[ControlView, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def service(self, name: str, namespace: str) -> ServiceView | None:
        for svc in self.services:
            if svc.name == name and svc.namespace == namespace:
                return svc
        return None

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Snapshot:
        proxy = data["proxy"]
        return Snapshot(
            proxy=ProxySelf(
                workload=proxy["workload"],
                namespace=proxy["namespace"],
                service_account=proxy["service_account"],
                identity=proxy["identity"],
                ports=tuple(LocalPort(**p) for p in proxy.get("ports", ())),
                services=tuple(proxy.get("services", ())),
            ),
            trust_domain=data["trust_domain"],
            trust_bundle=data["trust_bundle"],
            services=tuple(
                ServiceView(
                    name=s["name"],
                    namespace=s["namespace"],
                    ports=tuple(
                        ServicePort(
                            port=p["port"],
                            name=p.get("name"),
                            app_protocol=p.get("app_protocol"),
                            endpoints=tuple(Endpoint(**e) for e in p.get("endpoints", ())),
                        )
                        for p in s.get("ports", ())
                    ),
                )
                for s in data.get("services", ())
            ),
            interests=tuple(data.get("interests", ())),
            version=data.get("version", ""),
            routes=tuple(load(ServiceRoutes, r) for r in data.get("routes", ())),
            policies=tuple(load(ServicePolicy, p) for p in data.get("policies", ())),
            route_services=tuple(data.get("route_services", ())),
            security=SecurityView.from_dict(data.get("security")),
            telemetry=TelemetryView.from_dict(data.get("telemetry")),
            controls=tuple(load(ControlView, c) for c in data.get("controls", ())),
        )

    @staticmethod
    def from_json(text: str) -> Snapshot:
        return Snapshot.from_dict(json.loads(text))


def content_version(snapshot: Snapshot) -> str:
    """A version that changes exactly when the content does, so a rebuild that
    changes nothing is not pushed again."""
    body = replace(snapshot, version="").to_json()
    return hashlib.sha256(body.encode()).hexdigest()[:16]
