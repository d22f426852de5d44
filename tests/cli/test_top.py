"""`gossamer top`'s table: tapped requests grouped by method and path over a window."""

from __future__ import annotations

import io
from typing import Any

from gossamer.cli.tap import line_of
from gossamer.cli.top import TopTable, render


def _event(path: str, status: int = 200, latency: float = 1.0, method: str = "GET") -> Any:
    return {"method": method, "path": path, "status": status, "latency_ms": latency}


def test_requests_are_grouped_by_method_and_path_without_the_query() -> None:
    board = TopTable(window=30)
    board.started = 0.0
    for path, status, latency in [("/a?x=1", 200, 2.0), ("/a", 500, 5.0), ("/b", 200, 1.0)]:
        board.add(_event(path, status, latency), 10.0)
    board.add(_event("/a", method="POST"), 10.0)
    rows = board.rows(10.0)
    assert [(r["method"], r["path"], r["requests"]) for r in rows] == [
        ("GET", "/a", 2),
        ("POST", "/a", 1),
        ("GET", "/b", 1),
    ]
    assert rows[0]["success_rate"] == 0.5
    assert (rows[0]["best_ms"], rows[0]["worst_ms"], rows[0]["last_ms"]) == (2.0, 5.0, 5.0)
    assert rows[0]["rps"] == 0.2  # 2 requests over the 10 s seen so far


def test_requests_older_than_the_window_leave_the_table() -> None:
    board = TopTable(window=5)
    board.add(_event("/old"), 0.0)
    board.add(_event("/new"), 4.0)
    assert [r["path"] for r in board.rows(6.0)] == ["/new"]


def test_the_table_has_one_line_per_path_under_the_headers() -> None:
    board = TopTable(window=5)
    board.add(_event("/a", latency=1.5), 1.0)
    out = io.StringIO()
    render(board.rows(1.0), out)
    header, row = out.getvalue().splitlines()
    assert header.split() == ["METHOD", "PATH", "COUNT", "RPS", "SUCCESS", "BEST", "WORST", "LAST"]
    assert row.split()[:3] == ["GET", "/a", "1"] and row.split()[4] == "100.0%"


def test_a_tapped_request_prints_on_one_line_with_who_called_whom() -> None:
    event = {
        "time": "2025-01-01T00:00:00.000Z", "direction": "inbound", "method": "GET",
        "path": "/x", "authority": "meter.shop", "status": 200, "latency_ms": 1.25,
        "tls": True, "source": {"service": "web", "namespace": "shop",
        "identity": "spiffe://cluster.local/ns/shop/sa/web"},
        "destination": {"workload": "meter-1", "namespace": "shop"},
    }  # fmt: skip
    assert line_of(event) == (
        "2025-01-01T00:00:00.000Z in  src=web.shop dst=meter-1.shop :method=GET "
        ":authority=meter.shop :path=/x :status=200 latency=1.25ms tls=true "
        "id=spiffe://cluster.local/ns/shop/sa/web"
    )


def test_a_tapped_grpc_call_prints_its_grpc_status_too() -> None:
    event = {
        "time": "2025-01-01T00:00:00.000Z", "direction": "outbound", "method": "POST",
        "path": "/shop.Board/Post", "authority": "board", "status": 200, "grpc_status": 5,
        "latency_ms": 2.0, "tls": True, "source": {"workload": "web-1", "namespace": "shop"},
        "destination": {"workload": "board-1", "namespace": "shop"},
    }  # fmt: skip
    assert ":status=200 latency=2ms tls=true grpc-status=5" in line_of(event)
