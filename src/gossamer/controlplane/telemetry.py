"""Telemetry: the control plane scrapes every registered proxy and keeps golden metrics.

Every `interval` seconds it reads the Workloads that name an `adminPort`, fetches
`http://address:adminPort/metrics` from each (concurrently, each bounded by a
timeout), summarizes the text into per-service, per-edge and per-route totals, and
keeps `retention` seconds of them. A proxy that does not answer, or answers with
something that is not Prometheus text, is marked stale; its earlier scrapes stay.

It also writes the scrape targets as a Prometheus `file_sd` file, so a Prometheus
server can scrape the same proxies (and the control plane's own `/metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import aiohttp

from gossamer.errors import GossamerError
from gossamer.store import Store, make_dirs
from gossamer.store.aio import AsyncStore
from gossamer.telemetry.golden import Golden, Key, Sample, parse_prometheus_text
from gossamer.telemetry.window import (
    RETRY_VIEW,
    ROUTE_RETRY_VIEW,
    Health,
    Scrape,
    is_stale,
    prune,
    series,
    summarize,
    window_golden,
)
from gossamer.translate.build import MeshView, selects
from gossamer.translate.controls import governs

log = logging.getLogger("gossamer.controlplane.telemetry")

RETENTION: Final = 16 * 60.0  # a 15 minute window, and a scrape before it to count from
MAX_WINDOW: Final = 15 * 60.0
# What a scrape round reads from the store: targets, and what the stats calls name.
_LISTED_KINDS: Final = ("Service", "Workload", "TrafficControl")
DEFAULT_WINDOW: Final = 60.0
MAX_SCRAPE_BYTES: Final = 16 * 1024 * 1024
SD_DIR_MODE: Final = 0o750  # a directory the file_sd writer creates
SD_FILE_MODE: Final = 0o644  # the file_sd file (addresses of proxies, nothing secret)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class BadWindow(GossamerError):
    """A window or step that is not a duration, or longer than what is kept."""


def parse_duration(text: str, *, what: str = "window", most: float = MAX_WINDOW) -> float:
    """`30s`, `1m`, `15m`, `90` (seconds) → seconds, at most `most`."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise BadWindow(f"{what}: {text!r} is not a duration (e.g. 30s, 1m, 15m)")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not 0 < seconds <= most:
        raise BadWindow(f"{what}: must be more than 0 and at most {most / 60:g}m, not {text}")
    return seconds


@dataclass(frozen=True)
class Target:
    """A proxy to scrape: one registered workload with an admin port."""

    namespace: str
    workload: str
    address: str  # host:port of the admin listener
    services: tuple[str, ...]  # the Services in its namespace that select it


def targets_from(
    workloads: Iterable[Mapping[str, Any]], services: Iterable[Mapping[str, Any]]
) -> list[Target]:
    selectors = [
        (s["metadata"]["namespace"], s["metadata"]["name"], s.get("spec", {}).get("selector") or {})
        for s in services
    ]
    out = []
    for w in workloads:
        spec, meta = w.get("spec", {}), w["metadata"]
        port = spec.get("adminPort")
        if not port:
            continue
        host = spec["address"]
        host = f"[{host}]" if ":" in host else host
        labels = meta.get("labels") or {}
        owned = tuple(
            sorted(
                name
                for ns, name, selector in selectors
                if ns == meta["namespace"] and selects(selector, labels)
            )
        )
        out.append(Target(meta["namespace"], meta["name"], f"{host}:{port}", owned))
    return sorted(out, key=lambda t: (t.namespace, t.workload))


def _num(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def golden_fields(g: Golden | None) -> dict[str, Any]:
    """The metric fields of a stat row, with the names `gossamer stat -o json` promises."""
    if g is None:
        return {
            "requests": 0,
            "success_rate": None,
            "rps": 0.0,
            "p50_ms": None,
            "p95_ms": None,
            "p99_ms": None,
        }
    return {
        "requests": round(g.requests),
        "success_rate": None if g.success_rate is None else round(g.success_rate, 6),
        "rps": round(g.rps, 3),
        "p50_ms": _num(g.p50_ms),
        "p95_ms": _num(g.p95_ms),
        "p99_ms": _num(g.p99_ms),
    }


def retry_fields(
    effective: Golden | None, actual: Golden | None, retries: float | None
) -> dict[str, Any]:
    """Effective success (what callers got, one count per call), actual success (every
    try, retries included) and the retries between them (decision 0082).

    A service's actual success is what its own proxies saw; an edge's is derived: the
    calls that succeeded over the tries sent (calls + retries), since each succeeded
    call ended with one successful try and every retry followed a failed one.
    """
    actual_rate = actual.success_rate if actual is not None else None
    if actual is None and effective is not None and retries is not None and effective.requests:
        ok = (effective.success_rate or 0.0) * effective.requests
        actual_rate = ok / (effective.requests + retries)
    return {
        "effective_success_rate": (
            None
            if effective is None or effective.success_rate is None
            else round(effective.success_rate, 6)
        ),
        "effective_rps": None if effective is None else round(effective.rps, 3),
        "actual_success_rate": None if actual_rate is None else round(actual_rate, 6),
        "retries": None if retries is None else round(retries),
    }


class Telemetry:
    def __init__(
        self,
        store: Store,
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        retention: float = RETENTION,
        sd_file: Path | None = None,
        self_target: Callable[[], str | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        # Its own thread for the store: a stalled store stalls the scrape round only.
        self._astore = AsyncStore(store, workers=1)
        # The objects read at the last round (kind -> objects), for the stats calls,
        # which then never wait on the store; None until the first round.
        self._listed: dict[str, list[dict[str, Any]]] | None = None
        self.interval = interval
        self.timeout = min(timeout, interval)
        self.retention = retention
        self.sd_file = sd_file
        self.self_target = self_target
        self.clock = clock
        self.targets: list[Target] = []
        self.histories: dict[tuple[str, str], list[Scrape]] = {}
        self.health: dict[tuple[str, str], Health] = {}
        # Each proxy's TrafficControl series (gossamer_control_*) at its last scrape:
        # what `control_status` adds up.
        self.control_samples: dict[tuple[str, str], list[Sample]] = {}
        self.scrapes_total = {"ok": 0, "error": 0}
        self._sd_written: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- scraping ------------------------------------------------------------------

    async def start(self, scrape: bool = True) -> None:
        """Open the HTTP client and, unless `scrape` is false, scrape every interval."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False
        )
        if scrape:
            self._task = asyncio.create_task(self._loop(), name="telemetry-scrape")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
        self._astore.close()

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.scrape_once()
            except Exception:  # telemetry must never take the control plane down
                log.exception("telemetry scrape round failed")
            await asyncio.sleep(max(self.interval - (time.monotonic() - started), 0.05))

    def _read_objects(self) -> dict[str, list[dict[str, Any]]]:
        return {kind: self.store.list(kind) for kind in _LISTED_KINDS}

    def _objects(self, kind: str) -> list[dict[str, Any]]:
        if self._listed is None:
            return self.store.list(kind)
        return self._listed[kind]

    def refresh_targets(self) -> None:
        """Read the store (synchronously, as a test does) and refresh the targets."""
        self._refresh(self._read_objects())

    def _refresh(self, listed: dict[str, list[dict[str, Any]]]) -> None:
        self._listed = listed
        self.targets = targets_from(listed["Workload"], listed["Service"])
        current = {(t.namespace, t.workload) for t in self.targets}
        for key in list(self.health):
            if key not in current:
                del self.health[key]  # deregistered: its history stays until it ages out
        for key in list(self.control_samples):
            if key not in current:
                del self.control_samples[key]  # its controls' counts go with it
        self.write_sd_file()

    async def scrape_once(self) -> None:
        self._refresh(await self._astore.run(self._read_objects))
        await asyncio.gather(*(self._scrape(t) for t in self.targets))
        horizon = self.clock() - self.retention
        for key, history in list(self.histories.items()):
            prune(history, horizon)
            if history and history[-1].at < horizon:
                del self.histories[key]

    async def fetch(self, target: Target) -> str:
        assert self._session is not None, "start() first"
        async with self._session.get(f"http://{target.address}/metrics") as resp:
            if resp.status != 200:
                raise ValueError(f"/metrics answered {resp.status}")
            body = await resp.content.read(MAX_SCRAPE_BYTES + 1)
            if len(body) > MAX_SCRAPE_BYTES:
                raise ValueError(f"/metrics is larger than {MAX_SCRAPE_BYTES} bytes")
            return body.decode("utf-8", errors="replace")

    async def _scrape(self, target: Target) -> None:
        key = (target.namespace, target.workload)
        at = self.clock()
        health = self.health.get(key, Health())
        try:
            text = await self.fetch(target)
            samples = parse_prometheus_text(text)
            scrape = summarize(samples, at)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            reason = str(err) or type(err).__name__
            if health.error != reason:
                log.warning("proxy %s/%s at %s is stale: %s", *key, target.address, reason)
            self.health[key] = replace(health, last_attempt=at, error=reason)
            self.scrapes_total["error"] += 1
            return
        if health.error is not None:
            log.info("proxy %s/%s answers its scrapes again", *key)
        self.health[key] = Health(last_attempt=at, last_success=at, error=None)
        self.scrapes_total["ok"] += 1
        self.histories.setdefault(key, []).append(scrape)
        controls = [s for s in samples if s.name.startswith("gossamer_control_")]
        if controls:
            self.control_samples[key] = controls
        else:
            self.control_samples.pop(key, None)

    def write_sd_file(self) -> None:
        """Prometheus `file_sd`: the proxies' admin listeners, and the control plane."""
        if self.sd_file is None:
            return
        groups: list[dict[str, Any]] = []
        own = self.self_target()
        if own:
            groups.append({"targets": [own], "labels": {"component": "control-plane"}})
        groups += [
            {
                "targets": [t.address],
                "labels": {
                    "component": "proxy",
                    "namespace": t.namespace,
                    "workload": t.workload,
                },
            }
            for t in self.targets
        ]
        text = json.dumps(groups, indent=2) + "\n"
        if text == self._sd_written:
            return
        # Modes set whatever the umask: Prometheus, often another user in this one's
        # group, reads the file; nobody else needs to, and nobody but us writes it.
        make_dirs(self.sd_file.parent, SD_DIR_MODE)
        tmp = self.sd_file.with_name(self.sd_file.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SD_FILE_MODE)
        try:
            os.fchmod(fd, SD_FILE_MODE)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.sd_file)  # Prometheus never reads half a file
        self._sd_written = text

    # -- answers ---------------------------------------------------------------------

    def stale(self, key: tuple[str, str]) -> bool:
        health = self.health.get(key)
        return health is not None and is_stale(health, self.clock(), self.interval)

    def _stale_keys(self, view: str) -> set[Key]:
        """Groups a stale proxy reported in its last scrape: their numbers may be short."""
        out: set[Key] = set()
        for key in self.health:
            if self.stale(key):
                history = self.histories.get(key)
                if history:
                    out.update(history[-1].views.get(view, {}))
        return out

    def _stale_services(self) -> set[tuple[str, str]]:
        return {
            (t.namespace, s)
            for t in self.targets
            if self.stale((t.namespace, t.workload))
            for s in (t.services or (t.workload,))
        }

    def _golden(self, view: str, window: float) -> dict[Key, Golden]:
        now = self.clock()
        return window_golden(self.histories.values(), view, now - window, now)

    def services(
        self, window: float, namespace: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """Every Service (and any other group that was called), with its golden metrics."""
        golden = self._golden("service", window)
        effective = self._golden("service_out", window)
        retries: dict[tuple[str, str], float] = {}
        for key, g in self._golden(RETRY_VIEW, window).items():
            retries[(key[2], key[3])] = retries.get((key[2], key[3]), 0.0) + g.requests
        keys = {
            (s["metadata"]["namespace"], s["metadata"]["name"]) for s in self._objects("Service")
        }
        keys |= {(k[0], k[1]) for k in golden}
        stale = self._stale_services() | {(k[0], k[1]) for k in self._stale_keys("service")}
        rows = []
        for ns, svc in sorted(keys):
            if (namespace and ns != namespace) or (name and svc != name):
                continue
            rows.append(
                {
                    "name": svc,
                    "namespace": ns,
                    **golden_fields(golden.get((ns, svc))),
                    **retry_fields(
                        effective.get((ns, svc)),
                        golden.get((ns, svc)),
                        retries.get((ns, svc), 0.0) if (ns, svc) in effective else None,
                    ),
                    "stale": (ns, svc) in stale,
                }
            )
        return rows

    def edges(
        self, window: float, namespace: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """Caller → callee pairs seen in the window; `name`/`namespace` are the callee."""
        golden = self._golden("edge", window)
        retries = self._golden(RETRY_VIEW, window)
        stale_services = self._stale_services()
        stale_keys = self._stale_keys("edge")
        rows = []
        for key in sorted(golden):
            src_ns, src, dst_ns, dst = key
            if namespace and namespace not in (src_ns, dst_ns):
                continue
            if name and name not in (src, dst):
                continue
            rows.append(
                {
                    "src_name": src,
                    "src_namespace": src_ns,
                    "name": dst,
                    "namespace": dst_ns,
                    **golden_fields(golden[key]),
                    **retry_fields(
                        golden[key], None, retries[key].requests if key in retries else 0.0
                    ),
                    "stale": key in stale_keys or (src_ns, src) in stale_services,
                }
            )
        return rows

    def routes(
        self, window: float, namespace: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """Per route, as callers count them (proxies that label requests with a route)."""
        golden = self._golden("route", window)
        retries = self._golden(ROUTE_RETRY_VIEW, window)
        stale_keys = self._stale_keys("route")
        rows = []
        for key in sorted(golden):
            svc_ns, svc, route_ns, route = key
            if not route:
                continue
            if (namespace and route_ns != namespace) or (name and route != name):
                continue
            rows.append(
                {
                    "name": route,
                    "namespace": route_ns,
                    "service": svc,
                    "service_namespace": svc_ns,
                    **golden_fields(golden[key]),
                    **retry_fields(
                        golden[key], None, retries[key].requests if key in retries else 0.0
                    ),
                    "stale": key in stale_keys,
                }
            )
        return rows

    def series(self, view: str, key: Key, window: float, step: float) -> list[dict[str, Any]]:
        points = series(list(self.histories.values()), view, key, self.clock(), window, step)
        return [
            {
                "at": round(p.at, 3),
                **golden_fields(p.golden),
                # Before the group's proxies were scraped: no data, not zero.
                **({} if p.covered else {"rps": None, "requests": None}),
            }
            for p in points
        ]

    def target_status(self) -> list[dict[str, Any]]:
        rows = []
        for t in self.targets:
            key = (t.namespace, t.workload)
            health = self.health.get(key, Health())
            rows.append(
                {
                    "namespace": t.namespace,
                    "workload": t.workload,
                    "address": t.address,
                    "services": list(t.services),
                    "stale": self.stale(key),
                    "lastScrape": health.last_success,
                    "error": health.error,
                }
            )
        return rows

    def control_status(self) -> dict[str, dict[str, Any]]:
        """Each TrafficControl as its source proxies report it at their last scrape,
        by "namespace/name": the edges it governs (source workload, destination
        service, the rate and concurrency limit in force there, calls in flight and
        waiting, refusals by reason) and its refusals in all, or in DryRun the calls it
        would have refused. Stale proxies are left out."""
        out: dict[str, dict[str, Any]] = {}
        if not self.control_samples:
            return out
        # A proxy's /metrics is its own word: only the edges a control really governs
        # for that proxy's workload count (gossamer.translate.controls.governs).
        mesh = MeshView.from_objects(
            [o for kind in ("TrafficControl", "Workload", "Service") for o in self._objects(kind)],
            trust_domain="",
            trust_bundle="",
        )
        controls = {(c.metadata.namespace, c.metadata.name): c for c in mesh.controls}
        for (ns, workload), samples in sorted(self.control_samples.items()):
            if self.stale((ns, workload)):
                continue
            source = mesh.workloads.get((ns, workload))
            if source is None:
                continue  # gone from the mesh
            edges: dict[tuple[str, str], dict[str, Any]] = {}
            for s in samples:
                lb = s.labels
                ckey = (lb.get("control_namespace", ""), lb.get("control_name", ""))
                svc = mesh.services.get((lb.get("dst_namespace", ""), lb.get("dst_service", "")))
                found = controls.get(ckey)
                if found is None or svc is None or not governs(mesh, found, source, svc):
                    continue
                control = f"{ckey[0]}/{ckey[1]}"
                service = f"{lb.get('dst_service', '')}.{lb.get('dst_namespace', '')}"
                entry = out.setdefault(control, {"edges": [], "refused": 0.0, "wouldRefuse": 0.0})
                edge = edges.get((control, service))
                if edge is None:
                    edge = edges[(control, service)] = {
                        "source": f"{workload}.{ns}",
                        "service": service,
                        "refused": {},
                        "wouldRefuse": {},
                    }
                    entry["edges"].append(edge)
                if not math.isfinite(s.value):
                    continue  # a proxy's word: NaN or an infinity would not be JSON
                if s.name == "gossamer_control_refused_total":
                    dry = lb.get("mode") == "DryRun"
                    edge["wouldRefuse" if dry else "refused"][lb.get("reason", "")] = s.value
                    entry["wouldRefuse" if dry else "refused"] += s.value
                elif s.name == "gossamer_control_limit":
                    value = lb.get("value", "")
                    key = {"in_flight": "inFlight"}.get(value, value)
                    edge[key] = s.value
        return out

    def render_metrics(self, extra: Mapping[str, float] | None = None) -> str:
        """The control plane's own metrics, in Prometheus text format."""
        stale = sum(1 for t in self.targets if self.stale((t.namespace, t.workload)))
        lines = [
            "# HELP gossamer_controlplane_scrapes_total Scrapes of proxies' /metrics, by result.",
            "# TYPE gossamer_controlplane_scrapes_total counter",
            *(
                f'gossamer_controlplane_scrapes_total{{result="{r}"}} {n}'
                for r, n in sorted(self.scrapes_total.items())
            ),
            "# HELP gossamer_controlplane_scrape_targets Proxies the control plane scrapes.",
            "# TYPE gossamer_controlplane_scrape_targets gauge",
            f"gossamer_controlplane_scrape_targets {len(self.targets)}",
            "# HELP gossamer_controlplane_stale_targets Proxies whose last scrape failed.",
            "# TYPE gossamer_controlplane_stale_targets gauge",
            f"gossamer_controlplane_stale_targets {stale}",
        ]
        for name, value in sorted((extra or {}).items()):
            lines += [f"# TYPE {name} gauge", f"{name} {value:.15g}"]
        return "\n".join(lines) + "\n"
