"""`gossamer top`: the busiest paths, from a live tap, over a sliding window."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from gossamer.cli.common import add_output_flag, add_server_flags, client_from, duration_arg
from gossamer.cli.output import dump, table
from gossamer.cli.tap import open_tap, tap_flags, tap_query

HEADERS = ("METHOD", "PATH", "COUNT", "RPS", "SUCCESS", "BEST", "WORST", "LAST")
CLEAR = "\x1b[H\x1b[2J"
MAX_HELD = 100_000  # requests kept for the window; beyond this the oldest go first


@dataclass(frozen=True, slots=True)
class Seen:
    at: float
    method: str
    path: str
    status: int
    latency_ms: float


class TopTable:
    """Requests seen in the last `window` seconds, grouped by method and path."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.seen: deque[Seen] = deque(maxlen=MAX_HELD)
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def add(self, event: dict[str, Any], now: float) -> None:
        path = str(event.get("path", "")).partition("?")[0]
        seen = Seen(now, event["method"], path, int(event["status"]), float(event["latency_ms"]))
        with self.lock:
            self.seen.append(seen)

    def rows(self, now: float) -> list[dict[str, Any]]:
        with self.lock:
            while self.seen and now - self.seen[0].at > self.window:
                self.seen.popleft()
            seen = list(self.seen)
        span = max(min(self.window, now - self.started), 1e-3)
        groups: dict[tuple[str, str], list[Seen]] = {}
        for s in seen:
            groups.setdefault((s.method, s.path), []).append(s)
        rows: list[dict[str, Any]] = []
        for (method, path), items in groups.items():
            ok = sum(1 for s in items if 0 < s.status < 500)
            latencies = [s.latency_ms for s in items]
            rows.append(
                {
                    "method": method,
                    "path": path,
                    "requests": len(items),
                    "rps": round(len(items) / span, 3),
                    "success_rate": round(ok / len(items), 6),
                    "best_ms": min(latencies),
                    "worst_ms": max(latencies),
                    "last_ms": latencies[-1],
                }
            )
        rows.sort(key=lambda r: (-r["requests"], r["path"], r["method"]))
        return rows


def render(rows: list[dict[str, Any]], out: TextIO, limit: int | None = None) -> None:
    table(
        HEADERS,
        [
            (
                r["method"],
                r["path"],
                r["requests"],
                f"{r['rps']:.1f}",
                f"{r['success_rate'] * 100:.1f}%",
                f"{r['best_ms']:g}ms",
                f"{r['worst_ms']:g}ms",
                f"{r['last_ms']:g}ms",
            )
            for r in rows[:limit]
        ],
        out,
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "top",
        help="the busiest paths of a service (or namespace), live",
        description="Tap the service's proxies (or every proxy in the namespace) and show "
        "the paths they serve, busiest first, over a sliding WINDOW, redrawn every "
        "second. With -o json (or when not on a terminal): tap for DURATION, then print "
        "one snapshot. Counts requests as the serving proxies saw them (inbound).",
    )
    p.add_argument("service", nargs="?", help="one service (default: the whole namespace)")
    tap_flags(p)
    p.add_argument(
        "-w",
        "--window",
        type=duration_arg(),
        default=30,
        help="how far back the table looks, e.g. 30s, 1m, 5m (default: 30s)",
    )
    p.add_argument(
        "--duration",
        type=duration_arg(most=3600),
        default=10,
        help="how long a snapshot taps, e.g. 10s (default: 10s)",
    )
    add_output_flag(p)
    add_server_flags(p)
    p.set_defaults(func=top)


def top(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    client = client_from(args)
    live = args.output == "table" and out.isatty()
    query = tap_query(
        args, args.service, direction="inbound", duration=None if live else f"{args.duration}s"
    )
    board = TopTable(args.window)
    if not live:
        for event in open_tap(client, query, args.duration):
            board.add(event, time.monotonic())
        rows = board.rows(time.monotonic())
        if args.output in ("json", "yaml"):
            dump(rows, args.output, out)
        else:
            render(rows, out)
        return 0
    failure: list[BaseException] = []
    reader = threading.Thread(
        target=_follow, args=(lambda: open_tap(client, query), board, failure), daemon=True
    )
    reader.start()
    while reader.is_alive():
        out.write(CLEAR)
        render(board.rows(time.monotonic()), out, limit=40)
        out.flush()
        reader.join(1.0)
    if failure:
        raise failure[0]
    return 0


def _follow(events: Callable[[], Any], board: TopTable, failure: list[BaseException]) -> None:
    try:
        for event in events():
            board.add(event, time.monotonic())
    except BaseException as err:  # SystemExit from fail() too: the main thread raises it
        failure.append(err)
