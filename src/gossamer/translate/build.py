"""Pure translation: the store's contents → one proxy's snapshot.

No I/O, no clock, no globals: `build_snapshot(mesh, proxy)` is tested by calling it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from gossamer.resources.httproute import HTTPRoute
from gossamer.resources.trafficcontrol import TrafficControl
from gossamer.translate.authz import SecurityIndex, security_for
from gossamer.translate.consistency import InconsistentSnapshot, check_consistent
from gossamer.translate.controls import controls_for, validate_control
from gossamer.translate.labels import selects as selects  # re-exported: translate.build.selects
from gossamer.translate.routes import Policy, build_policies, build_routes, traffic_objects
from gossamer.translate.snapshot import (
    Endpoint,
    LocalPort,
    ProxySelf,
    ServicePort,
    ServiceView,
    Snapshot,
    content_version,
)
from gossamer.translate.telemetry import telemetry_for


@dataclass(frozen=True, slots=True)
class WorkloadPort:
    port: int
    app_port: int
    name: str | None = None
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class WorkloadRecord:
    name: str
    namespace: str
    labels: Mapping[str, str]
    address: str
    inbound_port: int
    service_account: str
    ports: tuple[WorkloadPort, ...] = ()
    ready: bool = True


def _is_ready(status: Mapping[str, Any] | None) -> bool:
    """A `Ready` condition that is not "True", or `ProxyConnected: False`, keeps a
    workload out of endpoints.

    A Workload with no such condition (one an operator applied by hand) is ready; a
    proxy reports `Ready` as it finds its app listening or not, and the control plane
    sets `ProxyConnected` from the proxy's discovery stream (its lease).
    """
    for cond in (status or {}).get("conditions") or ():
        if not isinstance(cond, Mapping):
            continue
        if cond.get("type") == "Ready" and cond.get("status") != "True":
            return False
        if cond.get("type") == "ProxyConnected" and cond.get("status") == "False":
            return False
    return True


@dataclass(frozen=True, slots=True)
class ServicePortRecord:
    port: int
    target_port: int | str
    name: str | None = None
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    name: str
    namespace: str
    selector: Mapping[str, str]
    ports: tuple[ServicePortRecord, ...] = ()


@dataclass(frozen=True)
class MeshView:
    """What translation reads: the store's objects, typed and indexed once per change."""

    trust_domain: str
    trust_bundle: str
    services: Mapping[tuple[str, str], ServiceRecord] = field(default_factory=dict)
    workloads: Mapping[tuple[str, str], WorkloadRecord] = field(default_factory=dict)
    # AuthorizationPolicy and MeshPolicy (gossamer.translate.authz).
    security: SecurityIndex = field(default_factory=SecurityIndex)
    # HTTPRoutes and the traffic policies (gossamer.translate.routes), typed.
    routes: tuple[HTTPRoute, ...] = ()
    policies: tuple[Policy, ...] = ()
    # TrafficControls (gossamer.translate.controls), typed.
    controls: tuple[TrafficControl, ...] = ()

    @cached_property
    def selected(self) -> Mapping[tuple[str, str], tuple[WorkloadRecord, ...]]:
        """The workloads each Service selects, by (namespace, name): made once per mesh,
        so matching TrafficControl groups costs a Service's own workloads, not every
        workload of the mesh for each control and service."""
        by_namespace: dict[str, list[WorkloadRecord]] = {}
        for (ns, _), wl in self.workloads.items():
            by_namespace.setdefault(ns, []).append(wl)
        return {
            key: tuple(
                wl for wl in by_namespace.get(svc.namespace, ()) if selects(svc.selector, wl.labels)
            )
            for key, svc in self.services.items()
        }

    @cached_property
    def memo(self) -> dict[tuple[object, ...], bool]:
        """Answers about this mesh that are asked again and again (a control's group
        and a Service, gossamer.translate.controls), kept as long as the mesh is."""
        return {}

    @staticmethod
    def from_objects(
        objects: Iterable[Mapping[str, Any]], *, trust_domain: str, trust_bundle: str
    ) -> MeshView:
        """Index validated, defaulted objects (as the store holds them)."""
        objects = list(objects)
        services: dict[tuple[str, str], ServiceRecord] = {}
        workloads: dict[tuple[str, str], WorkloadRecord] = {}
        for obj in objects:
            meta, spec = obj["metadata"], obj.get("spec") or {}
            key = (meta.get("namespace", "default"), meta["name"])
            if obj["kind"] == "Service":
                services[key] = ServiceRecord(
                    name=key[1],
                    namespace=key[0],
                    selector=dict(spec.get("selector") or {}),
                    ports=tuple(
                        ServicePortRecord(
                            port=p["port"],
                            target_port=p.get("targetPort", p["port"]),
                            name=p.get("name"),
                            app_protocol=p.get("appProtocol"),
                        )
                        for p in spec.get("ports") or ()
                    ),
                )
            elif obj["kind"] == "Workload":
                workloads[key] = WorkloadRecord(
                    name=key[1],
                    namespace=key[0],
                    labels=dict(meta.get("labels") or {}),
                    address=spec["address"],
                    inbound_port=spec["inboundPort"],
                    service_account=spec.get("serviceAccount", "default"),
                    ports=tuple(
                        WorkloadPort(
                            port=p["port"],
                            app_port=p.get("appPort", p["port"]),
                            name=p.get("name"),
                            app_protocol=p.get("appProtocol"),
                        )
                        for p in spec.get("ports") or ()
                    ),
                    ready=_is_ready(obj.get("status")),
                )
        return MeshView(
            trust_domain,
            trust_bundle,
            services,
            workloads,
            security=SecurityIndex.from_objects(objects),
            controls=tuple(
                validate_control(obj) for obj in objects if obj["kind"] == "TrafficControl"
            ),
            **traffic_objects(objects),
        )


@dataclass(frozen=True)
class ProxyInfo:
    """Who is asking: the proxy's workload and the services it has asked about."""

    workload: str
    namespace: str
    interests: frozenset[str] = frozenset()  # "name.namespace"


def identity_of(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def _target_port(port: ServicePortRecord, workload: WorkloadRecord) -> int | None:
    """Kubernetes semantics: a number is used as is, a name is looked up per workload."""
    if isinstance(port.target_port, int):
        return port.target_port
    for wp in workload.ports:
        if wp.name == port.target_port:
            return wp.port
    return None


def _declared_protocol(mesh: MeshView, workload: WorkloadRecord, port: int) -> str | None:
    """A workload port's appProtocol as its Services declare it: Kubernetes puts it on
    the Service port, and a proxy registers its ports without one. The first Service
    (by name) selecting the workload whose port targets this one and names a protocol."""
    for (ns, _), svc in sorted(mesh.services.items()):
        if ns != workload.namespace or not selects(svc.selector, workload.labels):
            continue
        for sp in svc.ports:
            if sp.app_protocol and _target_port(sp, workload) == port:
                return sp.app_protocol
    return None


def _service_view(mesh: MeshView, svc: ServiceRecord) -> ServiceView:
    members = sorted(
        (
            wl
            for (ns, _), wl in mesh.workloads.items()
            if ns == svc.namespace and wl.ready and selects(svc.selector, wl.labels)
        ),
        key=lambda wl: wl.name,
    )
    ports = []
    for sp in svc.ports:
        endpoints = []
        for wl in members:
            target = _target_port(sp, wl)
            if target is None:
                continue
            endpoints.append(
                Endpoint(
                    workload=wl.name,
                    namespace=wl.namespace,
                    address=wl.address,
                    inbound_port=wl.inbound_port,
                    target_port=target,
                    identity=identity_of(mesh.trust_domain, wl.namespace, wl.service_account),
                )
            )
        ports.append(
            ServicePort(
                port=sp.port,
                name=sp.name,
                app_protocol=sp.app_protocol,
                endpoints=tuple(endpoints),
            )
        )
    return ServiceView(name=svc.name, namespace=svc.namespace, ports=tuple(ports))


def build_snapshot(mesh: MeshView, proxy: ProxyInfo) -> Snapshot:
    """The snapshot for one proxy: itself, and only the services it asked about."""
    workload = mesh.workloads.get((proxy.namespace, proxy.workload))
    if workload is None:
        raise InconsistentSnapshot(f"workload {proxy.namespace}/{proxy.workload} is not registered")
    own_services = sorted(
        svc.name
        for (ns, _), svc in mesh.services.items()
        if ns == workload.namespace and selects(svc.selector, workload.labels)
    )
    services = []
    asked: list[ServiceRecord] = []
    for interest in sorted(proxy.interests):
        name, _, namespace = interest.partition(".")
        svc = mesh.services.get((namespace, name))
        if svc is not None:
            services.append(_service_view(mesh, svc))
            asked.append(svc)
    # Routes of the services asked about bring the services they send traffic to.
    routes, route_services = build_routes(mesh, workload.namespace, asked)
    for key in route_services:
        name, _, namespace = key.partition(".")
        asked.append(mesh.services[(namespace, name)])
        services.append(_service_view(mesh, mesh.services[(namespace, name)]))
    snapshot = Snapshot(
        proxy=ProxySelf(
            workload=workload.name,
            namespace=workload.namespace,
            service_account=workload.service_account,
            identity=identity_of(mesh.trust_domain, workload.namespace, workload.service_account),
            ports=tuple(
                LocalPort(
                    port=p.port,
                    app_port=p.app_port,
                    name=p.name,
                    app_protocol=p.app_protocol or _declared_protocol(mesh, workload, p.port),
                )
                for p in workload.ports
            ),
            services=tuple(own_services),
        ),
        trust_domain=mesh.trust_domain,
        trust_bundle=mesh.trust_bundle,
        services=tuple(services),
        interests=tuple(sorted(proxy.interests)),
        routes=tuple(routes),
        policies=tuple(build_policies(mesh, asked)),
        route_services=tuple(route_services),
        controls=controls_for(mesh, workload, asked),
        security=security_for(mesh.security, workload.namespace, workload.labels),
        telemetry=telemetry_for(mesh.security, workload.namespace, workload.labels),
    )
    snapshot = replace(snapshot, version=content_version(snapshot))
    check_consistent(snapshot)
    return snapshot
