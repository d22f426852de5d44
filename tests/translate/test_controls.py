"""TrafficControls in the translation: which source proxies get a control, over which
of their services, with what settings; and the resource's refusals (issue 16)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.translate.test_build import OBJECTS, mesh

from gossamer.errors import InvalidResource
from gossamer.resources import to_dict, validate
from gossamer.resources.trafficcontrol import TrafficControl
from gossamer.translate import ProxyInfo, Snapshot, build_snapshot
from gossamer.translate.controls import controls_between, refuses_a_whole_side, tightest
from gossamer.translate.controltypes import ConcurrencyView, RateView


def control(spec: dict[str, Any], name: str = "shield", ns: str = "shop") -> dict[str, Any]:
    obj = {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "TrafficControl",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": spec,
    }
    return to_dict(validate(obj))


WEB = {"selector": {"matchLabels": {"app": "web"}}}
WEB_TO_API = {
    "from": {"selector": {"matchLabels": {"app": "web"}}},
    "to": {"selector": {"matchLabels": {"app": "api"}}},
}


def snapshot_of(*controls: dict[str, Any], interests: set[str] | None = None) -> Snapshot:
    asked = frozenset(interests or {"api.shop", "ledger.bank"})
    return build_snapshot(mesh([*OBJECTS, *controls]), ProxyInfo("web-1", "shop", asked))


def test_a_control_reaches_its_source_proxy_with_the_services_it_governs() -> None:
    snap = snapshot_of(
        control({**WEB_TO_API, "rate": {"limit": "600/m", "burst": 5}, "mode": "DryRun"})
    )

    [view] = snap.controls
    assert (view.name, view.namespace, view.services) == ("shield", "shop", ("api.shop",))
    assert view.rate == RateView(per_second=10.0, burst=5)
    assert view.mode == "DryRun"
    # It travels in the snapshot's JSON like the rest.
    assert Snapshot.from_json(snap.to_json()).controls == snap.controls


def test_a_control_reaches_no_proxy_outside_its_source_group() -> None:
    batch_to_api = {**WEB_TO_API, "from": {"selector": {"matchLabels": {"app": "batch"}}}}
    assert snapshot_of(control({**batch_to_api, "quarantine": {}})).controls == ()


def test_the_destination_group_counts_only_services_the_proxy_holds() -> None:
    spec = {**WEB_TO_API, "quarantine": {}}
    assert snapshot_of(control(spec), interests={"ledger.bank"}).controls == ()


def test_namespaces_star_reaches_services_of_every_namespace() -> None:
    spec = {
        "from": {"selector": {"matchLabels": {"app": "web"}}},
        "to": {"namespaces": ["*"]},
        "concurrency": {"adaptive": {"algorithm": "AIMD", "maxLimit": 50}, "maxPending": 3},
    }
    [view] = snapshot_of(control(spec)).controls

    assert view.services == ("ledger.bank", "api.shop")  # by namespace, then name
    assert view.concurrency == ConcurrencyView(
        None, "AIMD", initial_limit=20, min_limit=1, max_limit=50, max_pending=3, queue_timeout=1.0
    )


def test_without_namespaces_a_group_is_the_controls_own_namespace() -> None:
    spec = {
        "from": {"selector": {"matchLabels": {"app": "web"}}},
        "to": {},  # shop only: ledger (bank) is not governed
        "rate": {"limit": "5/s"},
    }
    [view] = snapshot_of(control(spec)).controls
    assert view.services == ("api.shop",)
    assert view.rate == RateView(5.0, 5)  # the burst defaults to a second's worth


def test_an_allowed_source_is_not_quarantined_and_gets_nothing_from_a_quarantine_only_control() -> (
    None
):
    allowed = {
        **WEB_TO_API,
        "quarantine": {"allow": [{"selector": {"matchLabels": {"app": "web"}}}]},
    }
    assert snapshot_of(control(allowed)).controls == ()
    [view] = snapshot_of(control({**WEB_TO_API, "quarantine": {}})).controls
    assert view.quarantined


def test_a_ttl_becomes_an_expiry_time_from_the_creation_timestamp() -> None:
    [view] = snapshot_of(control({**WEB_TO_API, "quarantine": {}, "ttl": "30m"})).controls
    assert view.expires_at == 1796083200.0 + 1800  # 2026-12-01T00:00:00Z + 30 min


def test_controls_come_in_name_order() -> None:
    spec = {**WEB_TO_API, "quarantine": {}}
    snap = snapshot_of(control(spec, name="b"), control(spec, name="a"))
    assert [v.name for v in snap.controls] == ["a", "b"]


# ---- refusals, with field paths --------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "errors"),
    [
        (
            {"from": {}, "to": {}, "quarantine": {}},
            "spec.from.selector: from and to both take every workload",
        ),
        ({**WEB_TO_API}, "spec: set at least one of rate, concurrency"),
        ({**WEB_TO_API, "rate": {"limit": "100"}}, "spec.rate.limit: must be a count per unit"),
        ({**WEB_TO_API, "rate": {"limit": "0/s"}}, "spec.rate.limit: must be a count per unit"),
        ({**WEB_TO_API, "rate": {"limit": "5/s", "burst": 0}}, "spec.rate.burst: must be 1-"),
        ({**WEB_TO_API, "concurrency": {"maxInFlight": -1}}, "spec.concurrency.maxInFlight"),
        (
            {**WEB_TO_API, "concurrency": {"maxInFlight": 5, "adaptive": {}}},
            "spec.concurrency: set exactly one of maxInFlight",
        ),
        (
            {**WEB_TO_API, "concurrency": {"adaptive": {"minLimit": 10, "initialLimit": 5}}},
            "spec.concurrency.adaptive.initialLimit: must lie between",
        ),
        ({**WEB_TO_API, "circuitBreaker": {}}, "spec.circuitBreaker: set consecutiveFailures"),
        ({**WEB_TO_API, "quarantine": {}, "ttl": "0s"}, "spec.ttl: must be longer than 0s"),
        (
            {**WEB_TO_API, "quarantine": {}, "to": {"namespaces": ["Not A Namespace"]}},
            "spec.to.namespaces[0]: must be a namespace name",
        ),
    ],
)
def test_a_meaningless_or_malformed_control_is_refused_with_the_field_path(
    spec: dict[str, Any], errors: str
) -> None:
    with pytest.raises(InvalidResource) as err:
        control(spec)
    assert errors in str(err.value)


def test_explain_lists_every_control_on_a_call_and_names_the_tightest() -> None:

    view = mesh(
        [
            *OBJECTS,
            control({**WEB_TO_API, "rate": {"limit": "10/s"}}, name="a"),
            control({**WEB_TO_API, "rate": {"limit": "2/s"}, "mode": "DryRun"}, name="b"),
            control(
                {
                    **WEB_TO_API,
                    "quarantine": {"allow": [{"selector": {"matchLabels": {"app": "web"}}}]},
                },
                name="c",
            ),
        ]
    )
    web, api = view.workloads[("shop", "web-1")], view.services[("shop", "api")]

    found = controls_between(view, web, api)

    assert [(a.control.metadata.name, a.acts) for a in found] == [
        ("a", True),
        ("b", True),
        ("c", False),
    ]
    assert tightest(found) == {"rate": "shop/b"}


EVERY_CALLER = {"namespaces": ["*"]}
SRE = {"namespaces": ["ops"], "selector": {"matchLabels": {"team": "sre"}}}


Workloads = list[tuple[str, dict[str, str]]]


def _refusal(spec: dict[str, Any], workloads: Workloads | None) -> str | None:
    typed = validate(control(spec))
    assert isinstance(typed, TrafficControl)
    return refuses_a_whole_side(typed, workloads)


@pytest.mark.parametrize("side", ["from", "to"])
def test_a_quarantine_of_a_whole_side_with_no_allow_list_is_refused(side: str) -> None:
    spec = {**WEB_TO_API, side: EVERY_CALLER, "quarantine": {}}
    why = _refusal(spec, [("ops", {"team": "sre"})])
    assert why is not None and f"every call {side} every workload" in why


def test_a_quarantine_whose_allow_list_holds_no_workload_is_refused() -> None:
    spec = {**WEB_TO_API, "from": EVERY_CALLER, "quarantine": {"allow": [SRE]}}
    # Workloads of the mesh, none in ops with team=sre (one in ops, one with the label).
    why = _refusal(spec, [("ops", {"team": "dev"}), ("shop", {"team": "sre"})])
    assert why is not None and "allow list lets none of the 2 workloads in `from`" in why
    # An empty mesh: the allow list lets nobody through either.
    assert _refusal(spec, []) is not None


def test_a_quarantine_whose_allow_list_holds_a_workload_is_not_refused() -> None:
    spec = {**WEB_TO_API, "from": EVERY_CALLER, "quarantine": {"allow": [SRE]}}
    assert _refusal(spec, [("shop", {"app": "web"}), ("ops", {"team": "sre", "x": "y"})]) is None
    # Without the mesh's workloads only the missing allow list is asked.
    assert _refusal(spec, None) is None


@pytest.mark.parametrize(
    "spec",
    [
        {**WEB_TO_API, "quarantine": {"allow": [SRE]}},  # neither side is the whole mesh
        {**WEB_TO_API, "from": EVERY_CALLER, "quarantine": {}, "mode": "DryRun"},
        {**WEB_TO_API, "from": EVERY_CALLER, "rate": {"limit": "1/s"}},  # no quarantine
    ],
    ids=["groups", "dry-run", "no-quarantine"],
)
def test_other_controls_are_not_refused_whatever_the_workloads(spec: dict[str, Any]) -> None:
    assert _refusal(spec, []) is None
