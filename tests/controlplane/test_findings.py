"""The findings rules on recorded metric series: each rule finds its behaviour with
the evidence and a valid suggested TrafficControl, and a healthy landscape (jittery
latency, a rare failure, a rare retry) gives none."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from gossamer.controlplane.findings import (
    LATENCY_FACTOR,
    Finding,
    Frame,
    ServiceRef,
    Stat,
    detect,
    frames_from,
    groups_from,
)
from gossamer.resources import validate
from gossamer.resources.trafficcontrol import TrafficControl
from gossamer.telemetry.golden import parse_prometheus_text
from gossamer.telemetry.window import summarize

STEP = 15.0
WEB, API, DB, BATCH = ("shop", "web"), ("shop", "api"), ("data", "db"), ("data", "batch")
GROUPS: dict[ServiceRef, dict[str, str]] = {
    WEB: {"app": "web"},
    API: {"app": "api"},
    DB: {"app": "db"},
    BATCH: {"app": "batch"},
}
CALLS = (WEB, API), (API, DB), (BATCH, DB)

Overrides = Mapping[object, Stat]


def landscape(steps: int, changes: Mapping[int, Overrides] | None = None) -> list[Frame]:
    """web → api → db and batch → db, 100 calls a step each, healthy unless `changes`
    replaces a service's (key: ServiceRef) or an edge's (key: (src, dst)) numbers."""
    rng = random.Random(16)
    frames = []
    for n in range(steps):
        services: dict[object, Stat] = {
            s: Stat(200 if s == DB else 100, 1.0 - rng.choice((0, 0, 0.01)), rng.uniform(15, 30))
            for s in (WEB, API, DB)
        }
        edges: dict[object, Stat] = {
            e: Stat(100, 1.0, rng.uniform(15, 30), retries=rng.choice((0, 1, 2))) for e in CALLS
        }
        for key, stat in (changes or {}).get(n, {}).items():
            (services if key in services else edges)[key] = stat
        frames.append(Frame(1000 + n * STEP, STEP, services, edges))  # type: ignore[arg-type]
    return frames


def during(steps: range, **change: Stat) -> dict[int, Overrides]:
    keys = {"web": WEB, "api": API, "db": DB, "web_api": (WEB, API), "api_db": (API, DB)}
    keys |= {"batch_db": (BATCH, DB)}
    return {n: {keys[k]: v for k, v in change.items()} for n in steps}


def only(findings: list[Finding], kind: str) -> Finding:
    [found] = [f for f in findings if f.kind == kind]
    return found


def assert_valid_controls(finding: Finding) -> list[TrafficControl]:
    assert finding.suggestions, finding.unsuggested
    controls = []
    for s in finding.suggestions:
        control = validate(s)
        assert isinstance(control, TrafficControl)
        controls.append(control)
    return controls


def test_a_healthy_landscape_has_no_findings() -> None:
    assert detect(landscape(40), GROUPS) == []


def test_a_quiet_landscape_has_no_findings() -> None:
    """Few calls judge nothing: one failing call of three is no incident."""
    frames = landscape(12, during(range(4, 12), api=Stat(3, 0.33, 900.0)))
    assert detect(frames, GROUPS) == []


def test_retries_to_a_healthy_destination_are_no_storm() -> None:
    frames = landscape(12, during(range(6, 12), web_api=Stat(100, 1.0, 20.0, retries=80)))
    assert detect(frames, GROUPS) == []


def test_a_retry_storm_is_found_with_a_retry_budget_on_the_edge() -> None:
    frames = landscape(
        12,
        during(
            range(6, 10),
            web_api=Stat(100, 0.6, 40.0, retries=150),
            api=Stat(250, 0.4, 35.0),
        ),
    )
    storm = only(detect(frames, GROUPS), "RetryStorm")
    assert storm.edges == ((WEB, API),)
    assert storm.first_seen == frames[6].at and storm.last_seen == frames[9].at
    assert storm.evidence["retriesPerCall"] == 1.5
    assert storm.evidence["destinationSuccessRate"] == 0.4
    assert storm.evidence["window"]["steps"] == 4
    [control] = assert_valid_controls(storm)
    assert control.spec.retry_budget is not None
    assert control.spec.from_.labels() == {"app": "web"}
    assert control.spec.to.labels() == {"app": "api"}
    assert control.spec.to.namespaces == ["shop"]
    assert storm.id.startswith("storm-")
    assert storm.to_json()["edges"] == ["web.shop -> api.shop"]


def test_retries_that_multiply_along_a_path_are_an_amplification() -> None:
    frames = landscape(
        10,
        during(
            range(5, 8),
            web_api=Stat(100, 0.9, 40.0, retries=100),
            api_db=Stat(200, 0.5, 40.0, retries=150),
        ),
    )
    amp = only(detect(frames, GROUPS), "RetryAmplification")
    assert amp.services == (WEB, API, DB)
    assert amp.evidence["triesPerEntryCall"] == pytest.approx(2 * 1.75)
    controls = assert_valid_controls(amp)
    assert [(c.spec.from_.labels(), c.spec.to.labels()) for c in controls] == [
        ({"app": "web"}, {"app": "api"}),
        ({"app": "api"}, {"app": "db"}),
    ]


def test_a_slow_destination_whose_callers_follow_within_a_minute_is_a_cascade() -> None:
    slow = 20.0 * LATENCY_FACTOR * 5
    changes = during(range(6, 14), db=Stat(200, 1.0, slow))
    for n, step in during(range(8, 14), api=Stat(100, 0.7, slow)).items():
        changes[n] = {**changes[n], **step}
    for n, step in during(range(10, 14), web=Stat(100, 0.6, slow)).items():
        changes[n] = {**changes[n], **step}
    cascade = only(detect(landscape(14, changes), GROUPS), "Cascade")
    assert cascade.services == (DB, API, WEB)
    assert cascade.evidence["hops"] == {"db.data": 0, "api.shop": 1, "web.shop": 2}
    assert cascade.edges == ((API, DB), (WEB, API))
    [control] = assert_valid_controls(cascade)
    assert control.spec.concurrency is not None and control.spec.concurrency.adaptive
    assert control.spec.to.labels() == {"app": "db"} and control.spec.from_.namespaces == ["*"]


@pytest.mark.parametrize(
    "web_from",
    [None, 14],
    ids=["one hop up is not yet a cascade", "a caller that degrades minutes later is not"],
)
def test_what_is_not_a_cascade(web_from: int | None) -> None:
    changes = during(range(6, 20), db=Stat(200, 0.5, 30.0))
    for n, step in during(range(8, 20), api=Stat(100, 0.5, 30.0)).items():
        changes[n] = {**changes[n], **step}
    if web_from is not None:  # 6 steps (90 s) after api
        for n, step in during(range(web_from, 20), web=Stat(100, 0.5, 30.0)).items():
            changes[n] = {**changes[n], **step}
    assert [f.kind for f in detect(landscape(20, changes), GROUPS)] == []


def test_a_source_that_takes_over_a_destination_while_others_slow_is_noisy() -> None:
    frames = landscape(
        12,
        {
            **during(range(0, 6), batch_db=Stat(20, 1.0, 20.0)),
            **during(range(6, 9), batch_db=Stat(400, 1.0, 300.0), api_db=Stat(100, 1.0, 250.0)),
        },
    )
    noisy = only(detect(frames, GROUPS), "NoisyNeighbour")
    assert noisy.services == (BATCH, DB, API)
    assert noisy.evidence["shareBefore"] == pytest.approx(20 / 120, abs=1e-3)
    assert noisy.evidence["share"] == pytest.approx(0.8)
    assert noisy.evidence["others"]["api.shop"]["p95Ms"] == 250.0
    [control] = assert_valid_controls(noisy)
    assert control.spec.rate is not None
    assert control.spec.rate.limit == "3/s"  # twice the 20 calls per 15 s it sent before
    assert control.spec.from_.labels() == {"app": "batch"}


def test_a_noisy_neighbour_keeps_its_id_as_more_callers_suffer() -> None:
    changes: dict[int, Overrides] = {
        n: {(WEB, DB): Stat(50, 1.0, 20.0 if n < 9 else 250.0)} for n in range(12)
    }
    for n, step in during(range(0, 6), batch_db=Stat(20, 1.0, 20.0)).items():
        changes[n] = {**changes[n], **step}
    for n, step in during(
        range(6, 12), batch_db=Stat(600, 1.0), api_db=Stat(100, 1.0, 250.0)
    ).items():
        changes[n] = {**changes[n], **step}
    frames = landscape(12, changes)
    early = only(detect(frames[:9], GROUPS), "NoisyNeighbour")
    later = only(detect(frames, GROUPS), "NoisyNeighbour")
    assert (early.services, later.services) == ((BATCH, DB, API), (BATCH, DB, API, WEB))
    assert early.id == later.id


def test_a_source_that_grows_while_nobody_suffers_is_not_noisy() -> None:
    frames = landscape(12, during(range(6, 12), batch_db=Stat(400, 1.0, 20.0)))
    assert detect(frames, GROUPS) == []


def test_a_destination_that_stays_failing_after_its_load_dropped_is_metastable() -> None:
    frames = landscape(
        12,
        {
            **during(range(4, 6), api_db=Stat(300, 0.3, 500.0), db=Stat(600, 0.3, 500.0)),
            **during(range(6, 10), api_db=Stat(40, 0.3, 500.0), db=Stat(400, 0.3, 500.0)),
        },
    )
    meta = only(detect(frames, GROUPS), "Metastable")
    assert meta.services == (DB,)
    assert meta.first_seen == frames[6].at and meta.last_seen == frames[9].at
    assert meta.evidence["callsPerSecondAtOnset"] == pytest.approx(400 / STEP, abs=1e-3)
    [control] = assert_valid_controls(meta)
    assert control.spec.circuit_breaker is not None and control.spec.retry_budget is not None


def test_a_destination_that_recovers_when_its_load_drops_is_not_metastable() -> None:
    frames = landscape(
        12,
        during(range(4, 6), api_db=Stat(300, 0.3, 500.0), db=Stat(600, 0.3, 500.0)),
    )
    assert "Metastable" not in [f.kind for f in detect(frames, GROUPS)]


def test_services_broken_since_before_the_window_show_no_change_to_report() -> None:
    """Failing from the first step on, with the load halving later: neither a cascade
    (no service was seen to degrade) nor metastable (it was never seen to begin)."""
    broken = during(range(0, 6), db=Stat(200, 0.5), api=Stat(100, 0.5), web=Stat(100, 0.5))
    calm = during(range(6, 12), api_db=Stat(30, 0.5), batch_db=Stat(20, 1.0), db=Stat(60, 0.5))
    for n, step in calm.items():
        broken[n] = {**during(range(n, n + 1), api=Stat(100, 0.5), web=Stat(100, 0.5))[n], **step}
    assert detect(landscape(12, broken), GROUPS) == []


def test_without_labels_on_either_side_a_finding_says_why_it_suggests_nothing() -> None:
    frames = landscape(
        12,
        during(range(6, 10), web_api=Stat(100, 0.6, 40.0, retries=150), api=Stat(250, 0.4, 35.0)),
    )
    storm = only(detect(frames, {}), "RetryStorm")
    assert storm.suggestions == ()
    assert storm.unsuggested is not None and "spec.from.selector" in storm.unsuggested


def test_the_same_incident_keeps_its_id() -> None:
    change = during(range(6, 10), web_api=Stat(100, 0.6, 40.0, retries=150), api=Stat(250, 0.4))
    first = only(detect(landscape(12, change), GROUPS), "RetryStorm")
    later = only(detect(landscape(14, change), GROUPS), "RetryStorm")
    assert first.id == later.id


def _metrics(calls: int, failed: int, retries: int) -> str:
    out = 'src_namespace="shop",src_service="web",dst_namespace="shop",dst_service="api"'
    return "\n".join(
        [
            "process_start_time_seconds 1",
            f'gossamer_requests_total{{direction="outbound",{out},code="200"}} {calls - failed}',
            f'gossamer_requests_total{{direction="outbound",{out},code="503"}} {failed}',
            f'gossamer_retries_total{{dst_namespace="shop",dst_service="api"}} {retries}',
        ]
    )


def test_frames_are_cut_from_the_scrapes_with_the_retries_per_edge() -> None:
    scrapes = {10.0: (0, 0, 0), 25.0: (50, 5, 10), 40.0: (150, 45, 90)}
    history = [
        summarize(parse_prometheus_text(_metrics(*counts)), at) for at, counts in scrapes.items()
    ]
    frames = frames_from([history], end=40.0, window=30.0, step=15.0)
    assert [f.at for f in frames] == [25.0, 40.0]
    first, second = (f.edges[(WEB, API)] for f in frames)
    assert (first.requests, first.retries, first.success_rate) == (50, 10, 0.9)
    assert (second.requests, second.retries, second.success_rate) == (100, 80, 0.6)


def test_groups_are_services_selectors_and_unselected_workloads_labels() -> None:
    groups = groups_from(
        [{"metadata": {"namespace": "shop", "name": "api"}, "spec": {"selector": {"app": "api"}}}],
        [
            {"metadata": {"namespace": "shop", "name": "api-1", "labels": {"app": "api"}}},
            {"metadata": {"namespace": "shop", "name": "loadgen", "labels": {"job": "lg"}}},
        ],
    )
    assert groups[API] == {"app": "api"}
    assert groups[("shop", "loadgen")] == {"job": "lg"}


def test_amplification_in_a_dense_storm_is_found_within_bounds() -> None:
    """Twelve services that all retry to each other: paths are many, the search is not."""
    ring = [("mesh", f"s{i}") for i in range(12)]
    edges = {(a, b): Stat(100, 0.5, 20.0, retries=60) for a in ring for b in ring if a != b}
    frame = Frame(1000.0, STEP, {s: Stat(300, 0.5, 20.0) for s in ring}, edges)
    found = detect([frame], {s: {"app": s[1]} for s in ring})
    amplified = [f for f in found if f.kind == "RetryAmplification"]
    assert 0 < len(amplified) <= 1000
    assert all(len(f.services) >= 3 for f in amplified)
