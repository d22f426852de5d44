"""One build per change: snapshots kept by what a proxy asked for, shared by every proxy
that asked for the same thing, and dropped only when a change can affect them.

What a snapshot depends on, besides the mesh, is the proxy's namespace, service account,
labels and ports (its own section, the policies that select it, the routes it sees) and
the services it asked about: the build key. Two proxies with the same key get the same
snapshot except for their workload's name, so one build serves both: the built message
is kept as text with a placeholder for the name and for the version, and a proxy's
message is that text with its own two values put in (no rebuild, no re-serializing).

A change to a Workload (the frequent change: joins, readiness, leases) can only change
snapshots that hold a service selecting it, old labels or new; any other change
(Services, routes, policies, the trust bundle) drops every snapshot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from gossamer.translate import MeshView, ProxyInfo, build_snapshot
from gossamer.translate.build import selects

__all__ = ["BuildKey", "Prepared", "SnapshotCache"]

BuildKey = tuple[str, str, tuple[tuple[str, str], ...], str, frozenset[str]]
"""(namespace, service account, labels, ports, interests)."""

# Placeholders no workload name or version can be: both are DNS-like or hex.
_NAME = "\x00workload\x00"
_VERSION = "\x00version\x00"
_NAME_JSON, _VERSION_JSON = json.dumps(_NAME), json.dumps(_VERSION)


@dataclass(frozen=True)
class _Built:
    content: str  # the snapshot as content_version hashes it, with the name placeholder
    text: str  # the whole "snapshot" message, with the two placeholders
    trust_bundle: str
    services: frozenset[str]  # "name.namespace" of every service the snapshot holds


@dataclass(frozen=True)
class Prepared:
    """One proxy's snapshot message, ready to send."""

    key: BuildKey
    version: str
    message: str
    trust_bundle: str


def _version(built: _Built, workload: str) -> str:
    """content_version of this proxy's snapshot (proxies check it), from the kept text."""
    content = built.content.replace(_NAME_JSON, json.dumps(workload))
    return hashlib.sha256(content.encode()).hexdigest()[:16]


class SnapshotCache:
    def __init__(self) -> None:
        self._built: dict[BuildKey, _Built] = {}
        self.builds = 0  # build_snapshot calls, for tests and the benchmark

    def __len__(self) -> int:
        return len(self._built)

    @staticmethod
    def key_for(mesh: MeshView, proxy: ProxyInfo) -> BuildKey | None:
        workload = mesh.workloads.get((proxy.namespace, proxy.workload))
        if workload is None:
            return None
        ports = json.dumps([[p.port, p.app_port, p.name, p.app_protocol] for p in workload.ports])
        return (
            workload.namespace,
            workload.service_account,
            tuple(sorted(workload.labels.items())),
            ports,
            proxy.interests,
        )

    def prepare(self, mesh: MeshView, proxy: ProxyInfo) -> Prepared:
        """`proxy`'s snapshot message, built only if no proxy with its key has one.

        Raises InconsistentSnapshot as build_snapshot does (an unregistered workload, a
        snapshot that fails its consistency check)."""
        key = self.key_for(mesh, proxy)
        built = self._built.get(key) if key is not None else None
        if built is None or key is None:
            self.builds += 1
            snapshot = build_snapshot(mesh, proxy)  # raises for an unregistered workload
            key = self.key_for(mesh, proxy)
            assert key is not None
            template = replace(snapshot, proxy=replace(snapshot.proxy, workload=_NAME))
            # Exactly as content_version serializes it, so the version matches.
            content = replace(template, version="").to_json()
            body = template.to_dict()
            body["version"] = _VERSION
            built = _Built(
                content=content,
                text=json.dumps({"type": "snapshot", "version": _VERSION, "snapshot": body}),
                trust_bundle=snapshot.trust_bundle,
                services=frozenset(s.key for s in snapshot.services),
            )
            self._built[key] = built
        version = _version(built, proxy.workload)
        message = built.text.replace(_VERSION_JSON, json.dumps(version)).replace(
            _NAME_JSON, json.dumps(proxy.workload)
        )
        return Prepared(key, version, message, built.trust_bundle)

    def latest_version(self, mesh: MeshView, proxy: ProxyInfo) -> str:
        """The version `proxy` would be sent now, or "" if nothing is built for its key
        (its send loop is about to build it). Never builds."""
        key = self.key_for(mesh, proxy)
        built = self._built.get(key) if key is not None else None
        if built is None:
            return ""
        return _version(built, proxy.workload)

    def clear(self) -> None:
        self._built.clear()

    def keep_only(self, keys: Iterable[BuildKey | None]) -> None:
        """Forget snapshots no proxy uses any more (a workload relabelled, gone)."""
        wanted = set(keys)
        for key in [k for k in self._built if k not in wanted]:
            del self._built[key]

    def drop_holding(self, services: Iterable[str]) -> set[BuildKey]:
        """Drop every snapshot holding one of `services`; return the keys dropped."""
        wanted = set(services)
        if not wanted:
            return set()
        dropped = {key for key, built in self._built.items() if built.services & wanted}
        for key in dropped:
            del self._built[key]
        return dropped


def services_selecting(
    mesh: MeshView, namespace: str, label_sets: Iterable[Mapping[str, str]]
) -> set[str]:
    """ "name.namespace" of the services in `namespace` that select any of `label_sets`."""
    sets = list(label_sets)
    return {
        f"{svc.name}.{svc.namespace}"
        for (ns, _), svc in mesh.services.items()
        if ns == namespace and any(selects(svc.selector, labels) for labels in sets)
    }
