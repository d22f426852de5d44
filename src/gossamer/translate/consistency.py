"""The last check before a snapshot leaves the control plane (and when it arrives).

Kept apart from `build` so the proxy can run it without loading the resource models.
"""

from __future__ import annotations

from gossamer.translate.snapshot import Snapshot, content_version


class InconsistentSnapshot(Exception):
    """A snapshot that would mislead a proxy; it is never published."""


def check_consistent(snapshot: Snapshot) -> None:
    """Refuse a snapshot that a proxy could not serve correctly.

    Every service listed was asked for; service and port keys are unique; every
    endpoint carries an identity in this trust domain; the version matches the
    content (so a proxy's ack means what it says).
    """
    problems: list[str] = []
    if not snapshot.trust_bundle.strip():
        problems.append("trust bundle is empty")
    interests = set(snapshot.interests) | set(snapshot.route_services)
    seen: set[str] = set()
    prefix = f"spiffe://{snapshot.trust_domain}/"
    for svc in snapshot.services:
        if svc.key in seen:
            problems.append(f"service {svc.key} listed twice")
        seen.add(svc.key)
        if svc.key not in interests:
            problems.append(f"service {svc.key} was not asked for")
        ports = [p.port for p in svc.ports]
        if len(ports) != len(set(ports)):
            problems.append(f"service {svc.key} has duplicate ports")
        for p in svc.ports:
            for ep in p.endpoints:
                if not ep.identity.startswith(prefix):
                    problems.append(
                        f"endpoint {ep.namespace}/{ep.workload} of {svc.key}:{p.port} "
                        f"has identity {ep.identity!r} outside {snapshot.trust_domain}"
                    )
                if not 0 < ep.inbound_port < 65536 or not 0 < ep.target_port < 65536:
                    problems.append(f"endpoint {ep.namespace}/{ep.workload} has a bad port")
    problems += _route_problems(snapshot)
    if snapshot.version != content_version(snapshot):
        problems.append("version does not match content")
    if problems:
        raise InconsistentSnapshot("; ".join(problems))


def _route_problems(snapshot: Snapshot) -> list[str]:
    """Every route is for a service port the snapshot has, and every backend and mirror
    it sends to (other than one marked as failing) is a service port the snapshot has."""
    ports = {(svc.key, p.port) for svc in snapshot.services for p in svc.ports}
    problems = []
    for sr in snapshot.routes:
        if (sr.service, sr.port) not in ports:
            problems.append(f"routes for {sr.service}:{sr.port}, which is not in the snapshot")
        for m in sr.matches:
            if not 0 <= m.rule < len(sr.rules):
                problems.append(f"a match of {sr.service}:{sr.port} names no rule")
        for rule in sr.rules:
            targets = [(b.service, b.port) for b in rule.backends if b.error is None]
            targets += [(m.service, m.port) for m in rule.mirrors]
            for service, port in targets:
                if (service, port) not in ports:
                    problems.append(
                        f"{rule.label} sends to {service}:{port}, which is not in the snapshot"
                    )
    return problems
