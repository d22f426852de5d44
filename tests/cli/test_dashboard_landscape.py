"""The dashboard's landscape page in headless Chromium (issue 16): groups of services by a
workload label and the calls between them, a DryRun TrafficControl on the edge it
governs with its would-refuse count, and a retry storm's finding with the command that
applies its control and, given an admin token, the button that applies it. A real
control plane and real proxies; DOM and layout are asserted, not screenshots."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.cli.test_dashboard import LABEL_OVERLAPS, NO_SIDEWAYS_SCROLL, Browser, with_browser
from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    echo_app,
    free_port,
    run_workload,
    sleeper,
    start_control_plane,
    stop_all,
    stop_process,
)

pytestmark = pytest.mark.e2e

OBJECTS = """\
apiVersion: v1
kind: Service
metadata: {name: meter, namespace: shop}
spec:
  selector: {app: meter}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: gossamer.dev/v1alpha1
kind: RetryPolicy
metadata: {name: meter, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: meter}]
  attempts: 3
  retryOn: [5xx]
  budget: {percent: 100, minRetriesPerSecond: 100}
---
apiVersion: gossamer.dev/v1alpha1
kind: TrafficControl
metadata: {name: watch, namespace: shop}
spec:
  from: {selector: {matchLabels: {tier: web}}}
  to: {selector: {matchLabels: {app: meter}}}
  rate: {limit: 1/m, burst: 1}
  mode: DryRun
"""
CALLS = 15
STORM = 30


@dataclass
class Landscape:
    cp: ControlPlaneProcess
    mobile: Workload  # a caller in tier web, to send more calls while the page is open
    storm: dict[str, Any]  # the RetryStorm finding, as GET /v1/findings gives it


def _get(cp: ControlPlaneProcess, path: str) -> Any:
    with urllib.request.urlopen(cp.api + path, timeout=10) as resp:
        return json.load(resp)


def _would_refuse(cp: ControlPlaneProcess) -> int:
    """What shop/watch's proxies counted at their last scrape (gossamer control status)."""
    status = _get(cp, "/v1/controls/status")["items"]
    return int(status.get("shop/watch", {}).get("wouldRefuse", 0))


def _send(w: Workload, path: str, count: int) -> None:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://{w.outbound}"})
    )
    for _ in range(count):
        with contextlib.suppress(OSError):  # a 503 is traffic too
            opener.open(f"http://meter.shop{path}", timeout=10).read()


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    """Two callers in tier web (web-1, mobile-1) calling meter in tier backend: healthy
    calls, then a retry storm from web-1; a DryRun rate of 1/m counts the rest."""
    tmp = tmp_path_factory.mktemp("landscape")
    cp = start_control_plane(tmp / "cp", "--scrape-interval", "0.5")
    workloads: list[Workload] = []
    try:
        cp.cli("apply", "-f", "-", stdin=OBJECTS, check=True)
        port = free_port()
        meter = run_workload(cp, tmp, "meter-1", service_account="meter",
                             labels={"app": "meter", "tier": "backend"},
                             app=echo_app("meter-1", port), port=f"http=8080:{port}")  # fmt: skip
        web = run_workload(cp, tmp, "web-1", service_account="web",
                           labels={"app": "web", "tier": "web"}, app=sleeper())  # fmt: skip
        mobile = run_workload(cp, tmp, "mobile-1", service_account="mobile",
                              labels={"app": "mobile", "tier": "web"}, app=sleeper())  # fmt: skip
        workloads += [meter, web, mobile]
        for w in workloads:
            w.wait_ready()
        cp.cli("check", "--wait", "30s", "--workload", "shop/meter-1", check=True)
        _send(mobile, "/", CALLS)
        _send(web, "/", CALLS)
        _send(web, "/status/503", STORM)

        deadline = time.monotonic() + 60
        storm: list[dict[str, Any]] = []
        while not storm or not _would_refuse(cp):
            storm = [f for f in _get(cp, "/v1/findings")["items"] if f["kind"] == "RetryStorm"]
            assert time.monotonic() < deadline, storm
            time.sleep(0.5)
        yield Landscape(cp, mobile, storm[0])
    finally:
        stop_all(workloads)
        stop_process(cp.proc)


GROUPS = "[...document.querySelectorAll('svg.topology [data-group]')].map((g) => g.dataset.group)"
SELECT = (
    "(() => {{ const s = document.getElementById('{id}'); s.value = '{value}';"
    " s.dispatchEvent(new Event('change')); return true; }})()"
)
SHOWN = (
    "[...document.querySelectorAll('svg.topology [data-control=\"shop/watch\"]')]"
    ".reduce((n, c) => n + Number(c.dataset.count), 0)"
)
CONTROL = "document.querySelector('svg.topology [data-control=\"shop/watch\"]')"


def test_groups_and_a_dry_run_control_show_on_the_edge_they_govern_at_1400px(
    landscape: Landscape,
) -> None:
    cp = landscape.cp

    async def agreed(b: Browser, more_than: int) -> int:
        """The count the page shows once it is what the proxies report (both move on
        while scrapes bring calls in; the page catches up on its 5-second refresh)."""
        deadline = time.monotonic() + 30
        while True:
            shown, counted = await b.eval(SHOWN), await asyncio.to_thread(_would_refuse, cp)
            if shown == counted > more_than:
                return int(shown)
            assert time.monotonic() < deadline, (shown, counted)
            await asyncio.sleep(0.5)

    async def steps(b: Browser) -> Any:
        await b.until(f"Boolean({CONTROL})")
        await b.eval(SELECT.format(id="window", value="15m"))  # every call of the fixture
        await b.until("document.querySelector('h2').textContent.includes('last 15m')")
        count = await agreed(b, 0)
        by_tier = {
            "groups": await b.eval(GROUPS),
            "control": await b.eval(
                f"[{CONTROL}.textContent, {CONTROL}.closest('[data-group-edge]').dataset.groupEdge]"
            ),
            "edge": await b.eval(
                "document.querySelector('.edge-label[data-group-edge=\"web → backend\"]')"
                ".textContent"
            ),
            "members": await b.eval(
                "document.querySelector('[data-group-row=\"web\"]').children[1].textContent"
            ),
            "rows": await b.eval(
                "[...document.querySelectorAll('[data-control-row=\"shop/watch\"]')]"
                ".map((r) => r.textContent)"
            ),
            "wide": await b.eval(NO_SIDEWAYS_SCROLL),
            "overlaps": await b.eval(LABEL_OVERLAPS),
        }
        await b.eval(SELECT.format(id="group-by", value="app"))
        await b.until(f"({GROUPS}).length === 3")
        by_app = {
            "groups": await b.eval(GROUPS),
            "controls": await b.eval(
                "[...document.querySelectorAll('svg.topology [data-control=\"shop/watch\"]')]"
                ".map((c) => [c.closest('[data-group-edge]').dataset.groupEdge, c.dataset.count])"
            ),
            "wide": await b.eval(NO_SIDEWAYS_SCROLL),
            "overlaps": await b.eval(LABEL_OVERLAPS),
        }
        # Live: calls made while the page is open reach their edge's count, no reload.
        await asyncio.to_thread(_send, landscape.mobile, "/", 3)
        live = await agreed(b, count)
        errors = await b.eval("document.body.getAttribute('data-js-errors')")
        return count, by_tier, by_app, live, errors

    count, by_tier, by_app, live, errors = with_browser(landscape.cp.api + "/#/landscape", steps)
    # Grouped by tier (the page's first choice): web-1 and mobile-1 are one group, and
    # their edges to meter one edge, with the control's count from both their proxies.
    assert sorted(by_tier["groups"]) == ["backend", "web"]
    assert by_tier["members"] == "mobile-1.shop, web-1.shop"
    assert by_tier["control"] == [f"shop/watch (DryRun): would refuse {count}", "web → backend"]
    half = 100 * 2 * CALLS / (2 * CALLS + STORM)  # once per call, as the callers counted
    assert by_tier["edge"].endswith(f"rps · {half:.2f}%" + by_tier["control"][0])
    [mobile, web] = sorted(by_tier["rows"])
    assert mobile.startswith("shop/watchDryRunmobile-1.shop → meter.shopweb → backend")
    assert web.startswith("shop/watchDryRunweb-1.shop → meter.shopweb → backend")
    assert "(rate " in mobile and "(rate " in web
    assert by_tier["wide"] == [] and by_tier["overlaps"] == {"labels": 1, "found": []}
    # Grouped by app: three groups, and the control on each caller's edge, with its own count.
    assert sorted(by_app["groups"]) == ["meter", "mobile", "web"]
    edges = dict(by_app["controls"])
    assert sorted(edges) == ["mobile → meter", "web → meter"]
    assert sum(int(n) for n in edges.values()) == count
    assert by_app["wide"] == [] and by_app["overlaps"] == {"labels": 2, "found": []}
    assert live >= count + 2  # 1/m: a token may have come back, not two
    assert errors is None


FINDING = "document.querySelector('[data-finding=\"{id}\"]')"


def test_a_finding_shows_its_command_and_its_control_is_applied_with_an_admin_token(
    landscape: Landscape,
) -> None:
    storm = landscape.storm
    finding = FINDING.format(id=storm["id"])
    [control] = storm["suggestions"]
    name = control["metadata"]["name"]
    token = landscape.cp.token_file.read_text().strip()

    async def steps(b: Browser) -> Any:
        await b.until(f"Boolean({finding})")
        shown = {
            "text": await b.eval(f"{finding}.textContent"),
            "command": await b.eval(f"{finding}.querySelector('[data-apply-command]').textContent"),
            "button": await b.eval(f"Boolean({finding}.querySelector('[data-apply]'))"),
        }
        # Sign in as a person would, through the header's button, with the admin token.
        await b.eval(
            f"window.prompt = () => {json.dumps(token)}; window.confirm = () => true;"
            " document.getElementById('auth').click(), true"
        )
        await b.until(f"Boolean({finding}?.querySelector('[data-apply]'))")
        await b.eval(f"{finding}.querySelector('[data-apply]').click(), true")
        result = await b.until(
            f"{finding}?.querySelector('[data-apply-result]')?.textContent.startsWith('Applied')"
            f" && {finding}.querySelector('[data-apply-result]').textContent"
        )
        row = await b.until(
            f"document.querySelector('[data-control-row=\"shop/{name}\"]')?.textContent"
        )
        return shown, result, row, await b.eval("document.body.getAttribute('data-js-errors')")

    shown, result, row, errors = with_browser(landscape.cp.api + "/#/landscape", steps)
    assert "RetryStorm" in shown["text"] and "web-1.shop" in shown["text"]
    assert (
        "retriesPerCall" in shown["text"]
        and f"Suggests TrafficControl shop/{name}" in shown["text"]
    )
    # Without an admin token the page offers the command, never a button.
    assert shown["command"] == f"gossamer findings --apply {storm['id']}"
    assert shown["button"] is False
    assert result == f"Applied: trafficcontrol/{name} (shop) created"
    assert row.startswith(f"shop/{name}Enforce")
    stored = landscape.cp.cli(
        "get", "trafficcontrols", name, "-n", "shop", "-o", "json", check=True
    )
    assert json.loads(stored.stdout)["spec"]["retryBudget"] == control["spec"]["retryBudget"]
    assert errors is None


def test_an_apply_the_control_plane_refuses_shows_why(landscape: Landscape) -> None:
    cp, storm = landscape.cp, landscape.storm
    finding = FINDING.format(id=storm["id"])
    token = cp.cli("api-token", "create", "on-call", "--scope", "admin", check=True).stdout.strip()

    async def steps(b: Browser) -> Any:
        await b.until(f"Boolean({finding})")
        await b.eval(
            f"window.prompt = () => {json.dumps(token)}; window.confirm = () => true;"
            " document.getElementById('auth').click(), true"
        )
        await b.until(f"Boolean({finding}?.querySelector('[data-apply]'))")
        # Revoked after the page took it: the page still offers the button.
        await asyncio.to_thread(cp.cli, "api-token", "revoke", "on-call", check=True)
        await b.eval(f"{finding}.querySelector('[data-apply]').click(), true")
        return await b.until(
            f"{finding}?.querySelector('[data-apply-result]')?.textContent.startsWith('Not')"
            f" && {finding}.querySelector('[data-apply-result]').className"
            f" + ': ' + {finding}.querySelector('[data-apply-result]').textContent"
        )

    result = with_browser(cp.api + "/#/landscape", steps)
    assert result.startswith(
        "apply-result bad: Not applied: the API token given is not known (revoked, "
    ), result


TIERS = {  # tier: (services, the tiers it calls)
    "edge": (["gateway", "cdn-origin", "auth-proxy"], ["web", "api"]),
    "web": (["storefront", "checkout-ui", "search-ui", "account-ui", "mobile-bff"], ["api"]),
    "api": (
        ["catalog", "cart", "orders", "users", "search", "reviews", "pricing"],
        ["payments", "data", "api"],
    ),
    "payments": (["payments-gateway", "fraud-scoring", "ledger", "refunds"], ["data"]),
    "data": (["postgres-proxy", "redis-cache", "object-store", "kafka-bridge", "search-index"], []),
    "batch": (
        [
            "nightly-reports",
            "recommendations-trainer",
            "email-digest",
            "reindexer",
            "gdpr-exporter",
            "invoice-runner",
        ],
        ["data", "api", "payments"],
    ),
}


def _canned_landscape() -> dict[str, Any]:
    """What the API would answer for a landscape of 30 services in six tiers, with
    controls on several group edges (two on one), refusing and counting."""
    services, workloads, edges = [], [], []
    for tier, (names, _) in TIERS.items():
        for name in names:
            meta = {"namespace": "prod", "name": name}
            services.append({"metadata": meta, "spec": {"selector": {"app": name}}})
            labels = {"app": name, "tier": tier, "team": f"team-{name[0]}"}
            workloads.append({"metadata": {**meta, "name": f"{name}-1", "labels": labels}})
    for names, calls in TIERS.values():
        for i, src in enumerate(names):
            for to in calls:
                dst = TIERS[to][0][i % len(TIERS[to][0])]
                if dst != src:
                    edges.append(
                        {
                            "src_namespace": "prod",
                            "src_name": src,
                            "namespace": "prod",
                            "name": dst,
                            "requests": 600 + i,
                            "rps": 10.0 + i,
                            "success_rate": 0.97 if to == "data" else 0.999,
                        }
                    )
    controls = [
        ("shield-payments", "Enforce"),
        ("watch-batch", "DryRun"),
        ("bulkhead-data-from-batch", "Enforce"),
        ("storm-guard", "DryRun"),
    ]
    status = {
        "prod/shield-payments": [("catalog-1.prod", "ledger.prod", "refused")],
        "prod/watch-batch": [("nightly-reports-1.prod", "catalog.prod", "wouldRefuse")],
        "prod/bulkhead-data-from-batch": [("reindexer-1.prod", "redis-cache.prod", "refused")],
        "prod/storm-guard": [
            ("catalog-1.prod", "ledger.prod", "wouldRefuse"),
            ("gateway-1.prod", "storefront.prod", "wouldRefuse"),
        ],
    }
    return {
        "/version": {"trustDomain": "cluster.local", "version": "0"},
        "/v1/stats/edges": {"items": edges},
        "/v1/resources/services": {"items": services},
        "/v1/resources/workloads": {"items": workloads},
        "/v1/resources/trafficcontrols": {
            "items": [
                {
                    "kind": "TrafficControl",
                    "metadata": {"namespace": "prod", "name": n},
                    "spec": {"mode": mode},
                }
                for n, mode in controls
            ]
        },
        "/v1/controls/status": {
            "items": {
                key: {
                    "edges": [
                        {
                            "source": s,
                            "service": d,
                            "refused": {},
                            "wouldRefuse": {},
                            kind: {"rate": 1234, "concurrency": 56},
                        }
                        for s, d, kind in rows
                    ]
                }
                for key, rows in status.items()
            }
        },
        "/v1/findings": {"items": []},
    }


# Answers the page's reads from `canned` before its own script runs: a layout check of a
# landscape bigger than this machine can run for a browser test, on the same code path.
CANNED_FETCH = """
const canned = %s;
const realFetch = window.fetch;
window.fetch = async (url, options) => {
  const path = String(url).split("?")[0];
  if (!(path in canned)) return realFetch(url, options);
  return new Response(JSON.stringify(canned[path]), {
    status: 200, headers: {"Content-Type": "application/json"}});
};
"""


@pytest.mark.parametrize("group_by", ["tier", "team"])
def test_a_landscape_of_thirty_services_fits_1400px_with_no_label_over_another(
    landscape: Landscape, group_by: str
) -> None:
    script = CANNED_FETCH % json.dumps(_canned_landscape())

    async def steps(b: Browser) -> Any:
        await b.call("Page.enable")  # without it the script is not added
        await b.call("Page.addScriptToEvaluateOnNewDocument", source=script)
        await b.call("Page.reload")
        await b.until("Boolean(document.querySelector('[data-control=\"prod/storm-guard\"]'))")
        await b.eval(SELECT.format(id="group-by", value=group_by))
        await b.until(
            "[...document.querySelectorAll('h2')]"
            f".some((h) => h.textContent === 'Groups by {group_by}')"
        )
        return {
            "groups": await b.eval(GROUPS),
            "controls": await b.eval(
                "[...document.querySelectorAll('svg.topology [data-control]')]"
                ".map((c) => c.dataset.control)"
            ),
            "wide": await b.eval(NO_SIDEWAYS_SCROLL),
            "overlaps": await b.eval(LABEL_OVERLAPS),
            "scale": await b.eval(
                "(() => { const s = document.querySelector('svg.topology');"
                " return s.getBoundingClientRect().width / s.viewBox.baseVal.width; })()"
            ),
            "errors": await b.eval("document.body.getAttribute('data-js-errors')"),
        }

    shown = with_browser(landscape.cp.api + "/#/landscape", steps)
    if group_by == "tier":
        assert sorted(shown["groups"]) == sorted(TIERS)
        assert sorted(shown["controls"]) == [
            "prod/bulkhead-data-from-batch",
            "prod/shield-payments",
            "prod/storm-guard",
            "prod/storm-guard",
            "prod/watch-batch",
        ]
        # Six tiers in five columns: drawn at 60% or more, still legible. (By team, 14
        # groups calling each other seven deep are drawn smaller: readable when zoomed.)
        assert shown["scale"] > 0.6, shown["scale"]
    else:
        teams = {f"team-{name[0]}" for names, _ in TIERS.values() for name in names}
        assert sorted(shown["groups"]) == sorted(teams)
    assert shown["wide"] == []
    assert shown["overlaps"]["found"] == [], shown["overlaps"]
    assert shown["errors"] is None
