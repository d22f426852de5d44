"""An Aggregate TrafficControl rate across three source proxies (issue 16): the control
plane splits one budget between them by their demand, and what gets through, all
three together, stays within 10% of the budget. Real processes: a control plane, three
`gossamer run` clients, one echo workload; the load is paced HTTP/1.1 from this test."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    ControlPlaneProcess,
    Workload,
    echo_app,
    free_port,
    run_workload,
    sleeper,
    stop_all,
)

pytestmark = pytest.mark.e2e

BUDGET = 30.0  # calls a second, for the three sources together
OFFERED = 25.0  # calls a second each source tries: 75 in all, 2.5x the budget
MEASURE = 8.0  # seconds counted, after a settling second

OBJECTS = """\
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: gossamer.dev/v1alpha1
kind: TrafficControl
metadata: {name: cap, namespace: shop}
spec:
  from: {selector: {matchLabels: {tier: web}}}
  to: {selector: {matchLabels: {app: api}}}
  rate: {limit: 30/s, burst: 3, scope: Aggregate}
"""


async def _get(outbound: str) -> int:
    host, port = outbound.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: api.shop\r\nConnection: close\r\n\r\n")
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1])
    finally:
        writer.close()


async def _paced(outbound: str, seconds: float, rate: float) -> list[tuple[float, int]]:
    """`rate` calls a second for `seconds`, each on its own connection; (when, status)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    results: list[tuple[float, int]] = []
    tasks = []

    async def one(at: float) -> None:
        results.append((at, await _get(outbound)))

    for i in range(int(seconds * rate)):
        at = start + i / rate
        await asyncio.sleep(max(0.0, at - loop.time()))
        tasks.append(asyncio.create_task(one(at - start)))
    await asyncio.gather(*tasks)
    return results


def _shares(w: Workload) -> list[float | None]:
    with urllib.request.urlopen(f"http://{w.admin}/config", timeout=5) as r:
        config = json.load(r)
    return [row.get("share") for row in config["controls"]]


def test_an_aggregate_rate_holds_for_the_whole_source_group(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=OBJECTS, check=True)
    started: list[Workload] = []
    try:
        port = free_port()
        started.append(run_workload(
            control_plane, tmp_path, "api-1", service_account="api", labels={"app": "api"},
            app=echo_app("api-1", port), port=f"http=8080:{port}",
        ))  # fmt: skip
        sources = [
            run_workload(
                control_plane,
                tmp_path,
                f"web-{i}",
                service_account="web",
                labels={"tier": "web"},
                app=sleeper(),
            )
            for i in range(3)
        ]
        started += sources
        for w in started:
            w.wait_ready()

        async def run() -> list[list[tuple[float, int]]]:
            # Warm up: each source learns the service and reports its demand.
            for w in sources:
                for _ in range(50):
                    if await _get(w.outbound) in (200, 503):
                        break
                    await asyncio.sleep(0.1)
            return list(
                await asyncio.gather(*(_paced(w.outbound, MEASURE + 3, OFFERED) for w in sources))
            )

        per_source = asyncio.run(run())
        shares = [_shares(w) for w in sources]
    finally:
        stop_all(started)

    # Count from 3 s in: the split has been made and applied by then.
    admitted = [sum(1 for at, s in calls if at >= 3.0 and s == 200) for calls in per_source]
    refused = [sum(1 for at, s in calls if at >= 3.0 and s == 503) for calls in per_source]
    total = sum(admitted)
    assert abs(total - BUDGET * MEASURE) <= 0.1 * BUDGET * MEASURE, (admitted, refused, shares)
    # Each source got a part, and the parts add up to the budget.
    assert all(a > 0 for a in admitted), admitted
    flat = [s for row in shares for s in row]
    assert all(s is not None for s in flat), shares
    assert sum(s for s in flat if s is not None) == pytest.approx(BUDGET, rel=0.01)
    print(f"admitted per source over {MEASURE:g}s: {admitted} (total {total}), shares {shares}")
