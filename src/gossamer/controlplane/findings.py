"""Findings: emergent behaviour between services, read from the golden metrics.

The rules are pure functions over `Frame`s — one per step of a window, each holding
the golden metrics of every service (as its own proxies saw them: every try) and of
every edge (as the callers saw them: one count per call, and the retries they sent).
`frames_from` cuts those frames out of what the telemetry keeps; nothing else here
reads a clock or the store. docs/traffic-control.md ("Findings") names each rule and
its thresholds, the constants below.

Every finding carries its evidence (the numbers, the steps they come from) and the
TrafficControls that would contain it, each checked with `gossamer.resources.validate`
so that `gossamer findings --apply ID` posts objects the API will take.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gossamer.errors import InvalidResource
from gossamer.resources import validate
from gossamer.telemetry.golden import Golden, Key
from gossamer.telemetry.window import RETRY_VIEW, Scrape, combine, golden_of, increase

__all__ = [
    "Finding",
    "Frame",
    "Stat",
    "detect",
    "frames_from",
    "groups_from",
]

# -- thresholds (docs/traffic-control.md, "Findings") ------------------------------------

MIN_CALLS: Final = 10
"""Calls (or tries) in one step before a rule judges an edge or a service by it."""
RETRY_RATIO: Final = 0.5
"""Retry storm: retries per original call on an edge at or above this..."""
DEGRADED_SUCCESS: Final = 0.9
"""...while the destination's success rate is below this (also: 'degraded', 'failing')."""
LATENCY_FACTOR: Final = 3.0
"""Degraded also when p95 latency is at least this many times its best earlier step..."""
LATENCY_MIN_MS: Final = 50.0
"""...and at least this many milliseconds above it (a 2 ms → 6 ms rise is no incident)."""
AMPLIFICATION: Final = 2.0
"""Retry amplification: along a path of two or more retrying edges, the product of
(1 + retries per call) — the tries the last service gets per entry call — at least this."""
HOP_RETRY_RATIO: Final = 0.1
"""An edge counts as a retrying hop of a path at this many retries per call or more."""
CASCADE_WITHIN: Final = 60.0
"""Cascade: a caller that degrades at most this many seconds after its callee did..."""
CASCADE_HOPS: Final = 2
"""...for at least this many hops up from the first service that degraded."""
SHARE_JUMP: Final = 0.3
"""Noisy neighbour: a source's share of a destination's calls rose by this much (0.3 =
30 points) over its mean in the earlier steps..."""
SHARE_MIN: Final = 0.5
"""...to at least this share, while another source's p95 latency to it rose (as for
'degraded') or its success fell below DEGRADED_SUCCESS."""
LOAD_DROP: Final = 0.5
"""Metastable: the callers' calls fell to at most this fraction of the step where the
destination began failing..."""
METASTABLE_STEPS: Final = 2
"""...and the destination kept failing for at least this many steps after that."""
MAX_PATH: Final = 8
"""Longest call path the amplification rule follows (calls graphs have cycles)..."""
MAX_PATHS: Final = 1000
"""...and the most paths it follows in one step (a storm everywhere is found anyway)."""

_ID_PREFIX: Final = {
    "RetryStorm": "storm",
    "RetryAmplification": "amp",
    "Cascade": "cascade",
    "NoisyNeighbour": "noisy",
    "Metastable": "meta",
}

ServiceRef = tuple[str, str]  # (namespace, name)
EdgeRef = tuple[ServiceRef, ServiceRef]  # (caller, callee)


@dataclass(frozen=True)
class Stat:
    """One service's or edge's golden metrics over one step."""

    requests: float
    """Services: tries that reached it; edges: calls, one per call whatever its retries."""
    success_rate: float | None
    p95_ms: float | None = None
    retries: float = 0.0
    """Edges: the retries the caller sent on top of `requests`."""

    @property
    def retry_ratio(self) -> float:
        return self.retries / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Frame:
    at: float
    """The end of the step."""
    step: float
    services: Mapping[ServiceRef, Stat] = field(default_factory=dict)
    edges: Mapping[EdgeRef, Stat] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    kind: str
    summary: str
    services: tuple[ServiceRef, ...]
    edges: tuple[EdgeRef, ...]
    first_seen: float
    last_seen: float
    evidence: Mapping[str, Any]
    suggestions: tuple[Mapping[str, Any], ...]
    """TrafficControls (plain objects, as `gossamer apply` takes them), all valid."""
    unsuggested: str | None = None
    """Why there is no suggestion, when there is none."""
    named_by: int | None = None
    """How many of `services`, from the first, name the finding (a cascade's first
    service; a noisy source and its destination): the rest may grow as it spreads.
    None: all of them."""

    @property
    def id(self) -> str:
        """Stable while the same services misbehave the same way: `--apply` names it."""
        named = self.services[: self.named_by]
        subject = "|".join([self.kind, *(f"{ns}/{n}" for ns, n in named)])
        prefix = _ID_PREFIX.get(self.kind, self.kind.lower())
        return prefix + "-" + hashlib.sha256(subject.encode()).hexdigest()[:8]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "summary": self.summary,
            "services": [_name(s) for s in self.services],
            "edges": [f"{_name(a)} -> {_name(b)}" for a, b in self.edges],
            "firstSeen": round(self.first_seen, 3),
            "lastSeen": round(self.last_seen, 3),
            "evidence": dict(self.evidence),
            "suggestions": [dict(s) for s in self.suggestions],
            **({"unsuggested": self.unsuggested} if self.unsuggested else {}),
        }


def _name(ref: ServiceRef) -> str:
    return f"{ref[1]}.{ref[0]}"


def _r(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


# -- what every rule asks of a series ------------------------------------------------


def _judged(s: Stat | None) -> bool:
    return s is not None and s.requests >= MIN_CALLS


def _failing(s: Stat | None) -> bool:
    return _judged(s) and s is not None and (s.success_rate or 0.0) < DEGRADED_SUCCESS


def _best_p95(stats: Iterable[Stat | None]) -> float | None:
    known = [s.p95_ms for s in stats if s is not None and _judged(s) and s.p95_ms is not None]
    return min(known) if known else None


def _slower(s: Stat | None, earlier: Sequence[Stat | None]) -> bool:
    """p95 up LATENCY_FACTOR times, and LATENCY_MIN_MS, over the best earlier step."""
    if s is None or not _judged(s) or s.p95_ms is None:
        return False
    best = _best_p95(earlier)
    return (
        best is not None and s.p95_ms >= LATENCY_FACTOR * best and s.p95_ms - best >= LATENCY_MIN_MS
    )


def _degraded(series: Sequence[Stat | None], i: int) -> bool:
    return _failing(series[i]) or _slower(series[i], series[:i])


def _onset(series: Sequence[Stat | None], bad: Sequence[bool]) -> int | None:
    """The first step that is `bad` after a judged step that was not: a change seen
    in the window (a service broken since before the window began shows none)."""
    healthy_seen = False
    for i, s in enumerate(series):
        if bad[i]:
            if healthy_seen:
                return i
        elif _judged(s):
            healthy_seen = True
    return None


def _service_series(frames: Sequence[Frame], svc: ServiceRef) -> list[Stat | None]:
    return [f.services.get(svc) for f in frames]


def _edge_series(frames: Sequence[Frame], edge: EdgeRef) -> list[Stat | None]:
    return [f.edges.get(edge) for f in frames]


def _calls_into(frame: Frame, svc: ServiceRef) -> float:
    """The calls the callers made (each once, retries not counted) to `svc` in a step;
    with no caller in sight, the tries its own proxies counted."""
    calls = [s.requests for (_, dst), s in frame.edges.items() if dst == svc]
    if calls:
        return sum(calls)
    own = frame.services.get(svc)
    return own.requests if own is not None else 0.0


# -- suggestions -----------------------------------------------------------------------


def _group(ref: ServiceRef, groups: Mapping[ServiceRef, Mapping[str, str]]) -> dict[str, Any]:
    labels = groups.get(ref)
    out: dict[str, Any] = {"namespaces": [ref[0]]}
    if labels:
        out["selector"] = {"matchLabels": dict(labels)}
    return out


def _every_caller() -> dict[str, Any]:
    return {"namespaces": ["*"]}


_NOT_NAME = re.compile(r"[^a-z0-9-]+")


def _control_name(prefix: str, *parts: str) -> str:
    """A DNS-1123 name that says what the control is for, short enough for any store."""
    name = _NOT_NAME.sub("-", "-".join((prefix, *parts)).lower()).strip("-")
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name[:54].rstrip("-") + "-" + digest


def _control(
    name: str, namespace: str, source: dict[str, Any], dest: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "TrafficControl",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"gossamer.dev/suggested-by": "findings"},
        },
        "spec": {"from": source, "to": dest, **spec},
    }


def _checked(controls: Iterable[dict[str, Any]]) -> tuple[tuple[dict[str, Any], ...], str | None]:
    """The controls, if every one is a valid TrafficControl; else none, and why."""
    out = tuple(controls)
    for c in out:
        try:
            validate(c)
        except InvalidResource as err:
            return (), f"no control suggested: {err}"
    return out, None


def _retry_budget_on(
    edge: EdgeRef, groups: Mapping[ServiceRef, Mapping[str, str]]
) -> dict[str, Any]:
    src, dst = edge
    return _control(
        _control_name("retry-budget", src[1], "to", dst[1]),
        dst[0],
        _group(src, groups),
        _group(dst, groups),
        retryBudget={"percent": 10, "minRetriesPerSecond": 1},
    )


# -- the rules -------------------------------------------------------------------------


def _steps(frames: Sequence[Frame], hits: Sequence[int]) -> dict[str, Any]:
    return {
        "from": round(frames[hits[0]].at - frames[hits[0]].step, 3),
        "to": round(frames[hits[-1]].at, 3),
        "stepSeconds": frames[hits[0]].step,
        "steps": len(hits),
    }


def retry_storms(
    frames: Sequence[Frame], groups: Mapping[ServiceRef, Mapping[str, str]]
) -> list[Finding]:
    """An edge that sends RETRY_RATIO retries per call or more while its destination is
    degraded (its own success below DEGRADED_SUCCESS, or its p95 up LATENCY_FACTOR)."""
    out = []
    for edge in sorted({e for f in frames for e in f.edges}):
        src, dst = edge
        calls = _edge_series(frames, edge)
        served = _service_series(frames, dst)
        storming = [
            (i, s)
            for i, s in enumerate(calls)
            if s is not None
            and _judged(s)
            and s.retry_ratio >= RETRY_RATIO
            and (_degraded(served, i) if served[i] is not None else _failing(s))
        ]
        if not storming:
            continue
        hits = [i for i, _ in storming]
        worst, w = max(storming, key=lambda h: h[1].retry_ratio)
        d = served[worst]
        suggestions, why = _checked([_retry_budget_on(edge, groups)])
        out.append(
            Finding(
                kind="RetryStorm",
                summary=f"{_name(src)} sends {w.retry_ratio:.2f} retries per call to "
                f"{_name(dst)}, which is degraded",
                services=(src, dst),
                edges=(edge,),
                first_seen=frames[hits[0]].at,
                last_seen=frames[hits[-1]].at,
                evidence={
                    "window": _steps(frames, hits),
                    "worstStep": round(frames[worst].at, 3),
                    "callsPerSecond": round(w.requests / frames[worst].step, 3),
                    "retriesPerCall": round(w.retry_ratio, 3),
                    "destinationSuccessRate": _r((d or w).success_rate, 4),
                    "destinationP95Ms": _r((d or w).p95_ms),
                    "thresholds": {
                        "retriesPerCall": RETRY_RATIO,
                        "successRate": DEGRADED_SUCCESS,
                        "latencyFactor": LATENCY_FACTOR,
                    },
                },
                suggestions=suggestions,
                unsuggested=why,
            )
        )
    return out


def _paths(edges: Mapping[EdgeRef, Stat]) -> list[tuple[ServiceRef, ...]]:
    """Maximal simple paths (two hops or more) of edges that retry."""
    retrying = {e for e, s in edges.items() if _judged(s) and s.retry_ratio >= HOP_RETRY_RATIO}
    onward: dict[ServiceRef, list[ServiceRef]] = {}
    for src, dst in sorted(retrying):
        onward.setdefault(src, []).append(dst)
    called = {dst for _, dst in retrying}
    found: list[tuple[ServiceRef, ...]] = []

    def walk(path: tuple[ServiceRef, ...]) -> None:
        nexts = [n for n in onward.get(path[-1], []) if n not in path]
        if not nexts or len(path) > MAX_PATH:
            if len(path) >= 3:
                found.append(path)
            return
        for n in nexts:
            if len(found) < MAX_PATHS:
                walk((*path, n))

    # Start where no retrying edge comes in (or anywhere, for a cycle's members).
    starts = [s for s in sorted(onward) if s not in called] or sorted(onward)
    for s in starts:
        walk((s,))
    return found


def retry_amplification(
    frames: Sequence[Frame], groups: Mapping[ServiceRef, Mapping[str, str]]
) -> list[Finding]:
    """A path A → B → C … whose every hop retries (HOP_RETRY_RATIO) and along which the
    tries multiply to AMPLIFICATION per entry call or more."""
    seen: dict[tuple[ServiceRef, ...], list[tuple[int, float]]] = {}
    for i, f in enumerate(frames):
        for path in _paths(f.edges):
            factor = math.prod(1 + f.edges[(a, b)].retry_ratio for a, b in itertools.pairwise(path))
            if factor >= AMPLIFICATION:
                seen.setdefault(path, []).append((i, factor))
    out = []
    for path, hits in sorted(seen.items()):
        worst, factor = max(hits, key=lambda h: h[1])
        edges = tuple(itertools.pairwise(path))
        suggestions, why = _checked(_retry_budget_on(e, groups) for e in edges)
        out.append(
            Finding(
                kind="RetryAmplification",
                summary=f"retries multiply {factor:.1f}x along "
                + " -> ".join(_name(s) for s in path),
                services=path,
                edges=edges,
                first_seen=frames[hits[0][0]].at,
                last_seen=frames[hits[-1][0]].at,
                evidence={
                    "window": _steps(frames, [h[0] for h in hits]),
                    "worstStep": round(frames[worst].at, 3),
                    "triesPerEntryCall": round(factor, 3),
                    "retriesPerCall": {
                        f"{_name(a)} -> {_name(b)}": round(
                            frames[worst].edges[(a, b)].retry_ratio, 3
                        )
                        for a, b in edges
                    },
                    "thresholds": {
                        "amplification": AMPLIFICATION,
                        "hopRetriesPerCall": HOP_RETRY_RATIO,
                    },
                },
                suggestions=suggestions,
                unsuggested=why,
            )
        )
    return out


def _onsets(frames: Sequence[Frame]) -> dict[ServiceRef, int]:
    """The step each service became degraded in."""
    out = {}
    for svc in sorted({s for f in frames for s in f.services}):
        series = _service_series(frames, svc)
        first = _onset(series, [_degraded(series, i) for i in range(len(series))])
        if first is not None:
            out[svc] = first
    return out


def cascades(
    frames: Sequence[Frame], groups: Mapping[ServiceRef, Mapping[str, str]]
) -> list[Finding]:
    """A service degrades, then a caller of it within CASCADE_WITHIN seconds, then a
    caller of that one within as long again, for CASCADE_HOPS hops or more."""
    onset = _onsets(frames)
    callers: dict[ServiceRef, set[ServiceRef]] = {}
    for f in frames:
        for src, dst in f.edges:
            if src != dst:
                callers.setdefault(dst, set()).add(src)

    def follows(callee: ServiceRef, caller: ServiceRef) -> bool:
        if callee not in onset or caller not in onset:
            return False
        lag = frames[onset[caller]].at - frames[onset[callee]].at
        return 0 <= lag <= CASCADE_WITHIN

    out = []
    for root in sorted(onset, key=lambda s: (onset[s], s)):
        # A root is where it began: none of its callees degraded just before it.
        if any(follows(callee, root) for callee, cs in callers.items() if root in cs):
            continue
        hops: dict[ServiceRef, int] = {root: 0}
        frontier = [root]
        while frontier:
            nxt = []
            for callee in frontier:
                for caller in sorted(callers.get(callee, ())):
                    if caller not in hops and follows(callee, caller):
                        hops[caller] = hops[callee] + 1
                        nxt.append(caller)
            frontier = nxt
        depth = max(hops.values())
        if depth < CASCADE_HOPS:
            continue
        chain = tuple(sorted(hops, key=lambda s: (hops[s], s)))
        edges = tuple(
            (caller, callee)
            for callee in chain
            for caller in sorted(callers.get(callee, ()))
            if caller in hops and hops[caller] == hops[callee] + 1
        )
        root_stat = frames[onset[root]].services[root]
        suggestions, why = _checked(
            [
                _control(
                    _control_name("bulkhead", root[1]),
                    root[0],
                    _every_caller(),
                    _group(root, groups),
                    concurrency={
                        "adaptive": {"algorithm": "Gradient2", "minLimit": 1, "maxLimit": 200},
                        "maxPending": 20,
                        "queueTimeout": "200ms",
                    },
                )
            ]
        )
        out.append(
            Finding(
                kind="Cascade",
                summary=f"{_name(root)} degraded first; {depth} hops of callers followed "
                "within " + f"{CASCADE_WITHIN:g}s each",
                services=chain,
                edges=edges,
                first_seen=frames[onset[root]].at,
                last_seen=max(frames[onset[s]].at for s in chain),
                evidence={
                    "degradedAt": {_name(s): round(frames[onset[s]].at, 3) for s in chain},
                    "hops": {_name(s): hops[s] for s in chain},
                    "rootSuccessRate": _r(root_stat.success_rate, 4),
                    "rootP95Ms": _r(root_stat.p95_ms),
                    "stepSeconds": frames[0].step,
                    "thresholds": {
                        "within": CASCADE_WITHIN,
                        "hops": CASCADE_HOPS,
                        "successRate": DEGRADED_SUCCESS,
                        "latencyFactor": LATENCY_FACTOR,
                        "latencyMinMs": LATENCY_MIN_MS,
                    },
                },
                named_by=1,
                suggestions=suggestions,
                unsuggested=why,
            )
        )
    return out


def noisy_neighbours(
    frames: Sequence[Frame], groups: Mapping[ServiceRef, Mapping[str, str]]
) -> list[Finding]:
    """One source's share of a destination's calls jumps by SHARE_JUMP to SHARE_MIN or
    more while another source's calls to it get slower or fail."""
    found: dict[EdgeRef, list[tuple[int, float, float, tuple[ServiceRef, ...]]]] = {}
    for dst in sorted({d for f in frames for _, d in f.edges}):
        sources = sorted({s for f in frames for s, d in f.edges if d == dst and s != dst})
        if len(sources) < 2:
            continue
        shares: list[dict[ServiceRef, float]] = []
        for f in frames:
            total = sum(f.edges[(s, dst)].requests for s in sources if (s, dst) in f.edges)
            shares.append(
                {s: f.edges[(s, dst)].requests / total for s in sources if (s, dst) in f.edges}
                if total
                else {}
            )
        for i in range(1, len(frames)):
            for src in sources:
                stat = frames[i].edges.get((src, dst))
                earlier = [sh.get(src, 0.0) for sh in shares[:i] if sh]
                if stat is None or not _judged(stat) or not earlier:
                    continue
                before = sum(earlier) / len(earlier)
                now = shares[i].get(src, 0.0)
                if now < SHARE_MIN or now - before < SHARE_JUMP:
                    continue
                victims = tuple(
                    o for o in sources if o != src and _degraded(_edge_series(frames, (o, dst)), i)
                )
                if victims:
                    found.setdefault((src, dst), []).append((i, before, now, victims))
    out = []
    for (src, dst), hits in sorted(found.items()):
        i, before, now, victims = max(hits, key=lambda h: h[2])
        all_victims = tuple(sorted({v for h in hits for v in h[3]}))
        earlier_rate = [
            f.edges[(src, dst)].requests / f.step
            for f in frames[: hits[0][0]]
            if (src, dst) in f.edges
        ]
        # What the source sent before it grew, with room: twice that, at least 1/s.
        limit = max(
            math.ceil(2 * (sum(earlier_rate) / len(earlier_rate) if earlier_rate else 1)), 1
        )
        suggestions, why = _checked(
            [
                _control(
                    _control_name("rate", src[1], "to", dst[1]),
                    dst[0],
                    _group(src, groups),
                    _group(dst, groups),
                    rate={"limit": f"{limit}/s", "burst": limit},
                )
            ]
        )
        victim_stats = {
            _name(v): {
                "p95Ms": _r(frames[i].edges[(v, dst)].p95_ms),
                "bestEarlierP95Ms": _r(_best_p95(_edge_series(frames, (v, dst))[:i])),
                "successRate": _r(frames[i].edges[(v, dst)].success_rate, 4),
            }
            for v in victims
            if (v, dst) in frames[i].edges
        }
        out.append(
            Finding(
                kind="NoisyNeighbour",
                summary=f"{_name(src)} went from {before:.0%} to {now:.0%} of the calls to "
                f"{_name(dst)}; " + ", ".join(_name(v) for v in all_victims) + " got slower",
                services=(src, dst, *all_victims),
                edges=((src, dst), *((v, dst) for v in all_victims)),
                first_seen=frames[hits[0][0]].at,
                last_seen=frames[hits[-1][0]].at,
                evidence={
                    "window": _steps(frames, [h[0] for h in hits]),
                    "worstStep": round(frames[i].at, 3),
                    "shareBefore": round(before, 3),
                    "share": round(now, 3),
                    "callsPerSecond": round(
                        frames[i].edges[(src, dst)].requests / frames[i].step, 3
                    ),
                    "others": victim_stats,
                    "thresholds": {
                        "shareJump": SHARE_JUMP,
                        "shareMin": SHARE_MIN,
                        "latencyFactor": LATENCY_FACTOR,
                        "latencyMinMs": LATENCY_MIN_MS,
                    },
                },
                named_by=2,
                suggestions=suggestions,
                unsuggested=why,
            )
        )
    return out


def metastable(
    frames: Sequence[Frame], groups: Mapping[ServiceRef, Mapping[str, str]]
) -> list[Finding]:
    """A destination that began failing (after a healthy step) under load and kept
    failing for METASTABLE_STEPS steps after its callers' calls fell to LOAD_DROP of
    that load or less."""
    out = []
    for svc in sorted({s for f in frames for s in f.services}):
        series = _service_series(frames, svc)
        load = [_calls_into(f, svc) for f in frames]
        onset = _onset(series, [_failing(s) for s in series])
        if onset is None:
            continue
        peak = max(load[: onset + 1])
        run: list[int] = []
        for i in range(onset + 1, len(frames)):
            if peak > 0 and load[i] <= LOAD_DROP * peak and _failing(series[i]):
                run.append(i)
            elif len(run) >= METASTABLE_STEPS:
                break
            else:
                run = []
        if len(run) < METASTABLE_STEPS:
            continue
        last = series[run[-1]]
        assert last is not None
        suggestions, why = _checked(
            [
                _control(
                    _control_name("shed", svc[1]),
                    svc[0],
                    _every_caller(),
                    _group(svc, groups),
                    circuitBreaker={
                        "failurePercent": 50,
                        "minRequests": 20,
                        "interval": "10s",
                        "ejectionTime": "30s",
                    },
                    retryBudget={"percent": 10, "minRetriesPerSecond": 1},
                )
            ]
        )
        out.append(
            Finding(
                kind="Metastable",
                summary=f"{_name(svc)} still fails ({last.success_rate or 0:.0%} success) "
                f"after the calls to it fell from {peak / frames[onset].step:.1f}/s to "
                f"{load[run[-1]] / frames[run[-1]].step:.1f}/s",
                services=(svc,),
                edges=tuple(sorted(e for e in frames[run[-1]].edges if e[1] == svc)),
                first_seen=frames[run[0]].at,
                last_seen=frames[run[-1]].at,
                evidence={
                    "window": _steps(frames, run),
                    "failingSince": round(frames[onset].at, 3),
                    "callsPerSecondAtOnset": round(peak / frames[onset].step, 3),
                    "callsPerSecondSince": [round(load[i] / frames[i].step, 3) for i in run],
                    "successRateSince": [_r(s.success_rate, 4) for i in run if (s := series[i])],
                    "thresholds": {
                        "loadDrop": LOAD_DROP,
                        "steps": METASTABLE_STEPS,
                        "successRate": DEGRADED_SUCCESS,
                    },
                },
                suggestions=suggestions,
                unsuggested=why,
            )
        )
    return out


RULES: Final = (retry_storms, retry_amplification, cascades, noisy_neighbours, metastable)


def detect(
    frames: Sequence[Frame], groups: Mapping[ServiceRef, Mapping[str, str]] | None = None
) -> list[Finding]:
    """Every rule over the frames (oldest first); `groups`: each service's workload
    labels (a Service's selector), for the suggested controls' `from` and `to`."""
    frames = sorted(frames, key=lambda f: f.at)
    found = [f for rule in RULES for f in rule(frames, groups or {})]
    return sorted(found, key=lambda f: (f.first_seen, f.kind, f.services))


# -- from what the telemetry keeps -----------------------------------------------------


def _stat(g: Golden, retries: float = 0.0) -> Stat:
    return Stat(g.requests, g.success_rate, g.p95_ms, retries)


def frames_from(
    histories: Iterable[Sequence[Scrape]], end: float, window: float, step: float
) -> list[Frame]:
    """One frame per `step` of the `window` before `end`, from the proxies' scrapes."""
    # Each history's scrape times once, not once per step and view.
    timed = [(h, [s.at for s in h]) for h in histories]

    def golden(view: str, start: float, at: float) -> dict[Key, Golden]:
        combined = combine(increase(h, view, start, at, times) for h, times in timed)
        return {k: golden_of(k, c) for k, c in combined.items() if c.totals.requests > 0}

    count = max(int(window // step), 1)
    frames = []
    for n in range(count):
        at = end - (count - 1 - n) * step
        start = at - step
        services = golden("service", start, at)
        edges = golden("edge", start, at)
        retries = golden(RETRY_VIEW, start, at)
        frames.append(
            Frame(
                at=at,
                step=step,
                services={(k[0], k[1]): _stat(g) for k, g in services.items() if k[1]},
                edges={
                    ((k[0], k[1]), (k[2], k[3])): _stat(
                        g, retries[k].requests if k in retries else 0.0
                    )
                    for k, g in edges.items()
                    if k[1] and k[3]
                },
            )
        )
    return frames


def groups_from(
    services: Iterable[Mapping[str, Any]], workloads: Iterable[Mapping[str, Any]]
) -> dict[ServiceRef, dict[str, str]]:
    """Each Service's selector; for a caller no Service selects (its proxy reports its
    workload's name), that workload's labels."""
    out: dict[ServiceRef, dict[str, str]] = {}
    for w in workloads:
        meta = w["metadata"]
        out[(meta["namespace"], meta["name"])] = dict(meta.get("labels") or {})
    for s in services:
        meta = s["metadata"]
        out[(meta["namespace"], meta["name"])] = dict(s.get("spec", {}).get("selector") or {})
    return out
