"""`gossamer stat` and `gossamer edges` tables, against golden files."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from gossamer.cli.stat import print_edges, print_routes, print_services

QUIET = {"requests": 0, "success_rate": None, "rps": 0.0, "p50_ms": None, "p95_ms": None,
         "p99_ms": None}  # fmt: skip
BUSY = {"requests": 1200, "success_rate": 0.985, "rps": 20.0, "p50_ms": 1.25, "p95_ms": 8.5,
        "p99_ms": 24.75}  # fmt: skip
SERVICES: list[dict[str, Any]] = [
    {"name": "api", "namespace": "shop", **BUSY, "stale": False},
    {"name": "ledger", "namespace": "bank", **QUIET, "stale": True},
]
EDGES: list[dict[str, Any]] = [
    {"src_name": "web", "src_namespace": "shop", "name": "api", "namespace": "shop", **BUSY,
     "stale": False},
]  # fmt: skip
RETRIED = {"effective_success_rate": 0.985, "actual_success_rate": 0.9575, "retries": 35}
WIDE_SERVICES: list[dict[str, Any]] = [
    {**SERVICES[0], **RETRIED},
    {**SERVICES[1], "effective_success_rate": None, "actual_success_rate": None, "retries": None},
]
WIDE_EDGES: list[dict[str, Any]] = [{**EDGES[0], **RETRIED}]
ROUTES: list[dict[str, Any]] = [
    {"name": "api-reads", "namespace": "shop", "service": "api", "service_namespace": "shop",
     **BUSY, "stale": False},
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("stat-services", lambda out: print_services(SERVICES[:1], False, out)),
        ("stat-services-all", lambda out: print_services(SERVICES, True, out)),
        ("stat-routes", lambda out: print_routes(ROUTES, False, out)),
        ("stat-routes-all", lambda out: print_routes(ROUTES, True, out)),
        ("edges", lambda out: print_edges(EDGES, out)),
        ("stat-services-wide", lambda out: print_services(WIDE_SERVICES, True, out, wide=True)),
        ("edges-wide", lambda out: print_edges(WIDE_EDGES, out, wide=True)),
        ("edges-retried", lambda out: print_edges(WIDE_EDGES, out)),
        ("stat-routes-wide", lambda out: print_routes(ROUTES, False, out, wide=True)),
    ],
    ids=[
        "services in one namespace",
        "services across namespaces, a quiet stale one among them",
        "routes",
        "routes across namespaces (routes --stats SERVICE)",
        "edges",
        "services, wide: effective and actual success and retries",
        "edges, wide: effective and actual success and retries",
        "edges with retries, narrow: a line points at -o wide",
        "routes, wide: retries per route are not known",
    ],
)
def test_stat_tables_match_golden(
    name: str, render: Callable[[io.StringIO], None], golden: Callable[[str, str], None]
) -> None:
    out = io.StringIO()
    render(out)
    golden(f"cli/{name}.txt", out.getvalue())
