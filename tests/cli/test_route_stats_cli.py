"""`gossamer routes --stats` and `gossamer stat --routes`: the same route rows, asked for
with the same window flag, filtered and printed the same way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gossamer.cli.client import Client
from gossamer.cli.main import build_parser, main

METRICS = {"requests": 20, "success_rate": 0.85, "rps": 2.0, "p50_ms": 1.2, "p95_ms": 4.0,
           "p99_ms": 4.8}  # fmt: skip
ROWS: list[dict[str, Any]] = [
    {"name": "pages", "namespace": "shop", "service": "meter", "service_namespace": "shop",
     **METRICS, "stale": False},
    {"name": "pages", "namespace": "shop", "service": "meter-bad", "service_namespace": "shop",
     **METRICS, "stale": False},
    {"name": "reads", "namespace": "web", "service": "meter", "service_namespace": "shop",
     **METRICS, "stale": True},
]  # fmt: skip


class FakeApi:
    """Stands in for the control plane: records each GET, answers with `rows`."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.asked: list[tuple[str, dict[str, str]]] = []

    def get(self, path: str, **query: str) -> Any:  # patched over Client.get, unbound
        self.asked.append((path, query))
        return {"windowSeconds": 60.0, "at": 0.0, "items": self.rows}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi(ROWS)
    monkeypatch.setattr(Client, "get", fake.get)
    monkeypatch.delenv("GOSSAMER_TOKEN", raising=False)
    return fake


def test_routes_stats_prints_one_json_object_per_row(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", "--stats", "-n", "shop", "--window", "5m", "-o", "json"]) == 0
    assert api.asked == [("/v1/stats/routes", {"window": "5m", "namespace": "shop"})]
    assert json.loads(capsys.readouterr().out) == ROWS


def test_routes_stats_and_stat_routes_print_the_same_table(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", "--stats", "-n", "shop"]) == 0
    by_routes = capsys.readouterr().out
    assert main(["stat", "--routes", "-n", "shop"]) == 0
    assert capsys.readouterr().out == by_routes
    assert api.asked == [("/v1/stats/routes", {"window": "1m", "namespace": "shop"})] * 2
    header, *lines = by_routes.splitlines()
    assert header.split() == [
        "ROUTE", "SERVICE", "SUCCESS", "RPS", "P50", "P95", "P99", "REQUESTS", "STALE",
    ]  # fmt: skip
    assert lines[0].split()[:3] == ["pages", "meter.shop", "85.00%"]


def test_routes_stats_of_a_service_keeps_its_rows_from_every_namespace(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", "meter.shop", "--stats", "-o", "json"]) == 0
    assert api.asked == [("/v1/stats/routes", {"window": "1m"})]
    rows = json.loads(capsys.readouterr().out)
    assert [(r["namespace"], r["name"]) for r in rows] == [("shop", "pages"), ("web", "reads")]
    assert main(["routes", "meter", "-n", "shop", "--stats"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["NAMESPACE", "ROUTE", "SERVICE"]
    assert [line.split()[:2] for line in lines] == [["shop", "pages"], ["web", "reads"]]


def test_routes_stats_with_no_rows_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(Client, "get", FakeApi([]).get)
    assert main(["routes", "--stats", "-n", "shop"]) == 0
    assert capsys.readouterr().out == "no requests matched a route in shop in the last 1m\n"
    assert main(["routes", "--stats", "-n", "shop", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_routes_without_a_service_or_stats_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["routes"])
    assert e.value.code == 1
    assert "which SERVICE? (or --stats for golden metrics per route)" in capsys.readouterr().err


def test_the_window_flag_of_routes_stats_is_the_one_of_stat() -> None:
    parser = build_parser()
    routes = parser.parse_args(["routes", "--stats"])
    stat = parser.parse_args(["stat"])
    assert routes.window == stat.window == "1m"
    assert parser.parse_args(["routes", "--stats", "-w", "15m"]).window == "15m"
