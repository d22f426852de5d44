#!/usr/bin/env python3
"""The CPU one proxy hop spends per gRPC unary call in proxy/wire/http2.py, in one process.

No sockets, no TLS, no routing: an ``h2`` client and an ``h2`` backend talk through one
downstream and one upstream `H2Connection` joined by `StreamPair`s, over in-memory
transports, a batch of concurrent calls at a time (as ``h2load -m`` keeps them in
flight). The same calls are also made with the client talking to the backend directly;
the difference, divided by the number of calls, is what carrying a call costs the
proxy's HTTP/2 layer (h2's framing and HPACK on both connections, and ours). Process
CPU time, best of ``--repeat``: far steadier on a shared machine than the end-to-end
benchmark, which it does not replace (bench/run.py --workload grpc).

The hop is measured with each HTTP/2 codec built here (``--codec``, decisions 0097 and
0102: h2 with pure-Python or native HPACK, or nghttp2_session), repeats interleaved so
that each sees the same machine. The calls are spread over fresh
connections of at most CALLS_PER_CONNECTION streams each: the proxy drains a connection
at its 10,000th (decision 0046).

    .venv/bin/python bench/h2micro.py --calls 20000 --concurrency 64
    PYTHONPATH=/elsewhere/src .venv/bin/python bench/h2micro.py   # another version
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import h2.config
import h2.connection
import h2.events

try:
    from benchlib.grpc import METHOD, REQUEST_PAYLOAD, RESPONSE_PAYLOAD, grpc_message

    from gossamer.proxy.wire import h2codec
    from gossamer.proxy.wire.http2 import H2Connection, Headers, StreamPair, forwardable
except ModuleNotFoundError as err:
    sys.exit(f"h2micro: {err}; run it with the project's environment: .venv/bin/python")

REQUEST_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"echo.bench"),
    (b":path", METHOD.encode()),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"h2micro"),
    (b"content-length", b"%d" % len(grpc_message(REQUEST_PAYLOAD))),
]
# What nginx answers in the benchmark.
RESPONSE_HEADERS = [
    (b":status", b"200"),
    (b"server", b"nginx"),
    (b"date", b"Thu, 26 Nov 2026 12:00:00 GMT"),
    (b"content-type", b"application/grpc"),
    (b"content-length", b"%d" % len(grpc_message(RESPONSE_PAYLOAD))),
    (b"last-modified", b"Thu, 26 Nov 2026 11:00:00 GMT"),
    (b"accept-ranges", b"bytes"),
]
TRAILERS = [(b"grpc-status", b"0")]
CALLS_PER_CONNECTION = 5_000
# Messages the backend answers each call with, a DATA frame each (--messages: a server
# stream when more than one).
MESSAGES = 1


class Pipe(asyncio.Transport):
    """An in-memory transport: what the protocol writes waits in `buffer`."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray()
        self.writes = 0
        self._closing = False

    def write(self, data: Any) -> None:
        self.buffer += data
        self.writes += 1

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True


class Hop:
    """The proxy: streams from `down` are carried to `up`, as h2mesh does unrouted."""

    def __init__(self) -> None:
        self.down = H2Connection(client_side=False, handler=self, name="client")
        self.up = H2Connection(client_side=True, name="backend")
        self.down_pipe, self.up_pipe = Pipe(), Pipe()
        self.down.connection_made(self.down_pipe)
        self.up.connection_made(self.up_pipe)

    def new_stream(self, conn: H2Connection, stream_id: int, headers: Headers) -> None:
        StreamPair(conn, stream_id, 0.0).attach(self.up, forwardable(headers))


def _client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(1 << 30)
    return conn


def _backend() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(1 << 30)
    return conn


async def _turn() -> None:
    """Let the callbacks due (deferred writes) run: a few loop turns, as a connection
    hands the engine at most http2.WRITE_BUDGET of DATA between two writes, so a large
    burst (a batch of server streams) goes out over several turns."""
    for _ in range(12):
        await asyncio.sleep(0)


def _serve(backend: h2.connection.H2Connection, data: bytes) -> None:
    body = grpc_message(RESPONSE_PAYLOAD)
    head = RESPONSE_HEADERS if MESSAGES == 1 else RESPONSE_HEADERS[:4] + RESPONSE_HEADERS[5:]
    for event in backend.receive_data(data):
        if isinstance(event, h2.events.DataReceived):
            backend.acknowledge_received_data(
                event.flow_controlled_length or 0, event.stream_id or 0
            )
        if isinstance(event, h2.events.StreamEnded):
            sid = event.stream_id or 0
            backend.send_headers(sid, head)
            for _ in range(MESSAGES):
                backend.send_data(sid, body)
            backend.send_headers(sid, TRAILERS, end_stream=True)


def _read(client: h2.connection.H2Connection, data: bytes) -> int:
    done = 0
    for event in client.receive_data(data):
        if isinstance(event, h2.events.DataReceived):
            client.acknowledge_received_data(
                event.flow_controlled_length or 0, event.stream_id or 0
            )
        elif isinstance(event, h2.events.TrailersReceived):
            if dict(event.headers or []).get(b"grpc-status") != b"0":
                raise RuntimeError(f"unexpected trailers {event.headers}")
        elif isinstance(event, h2.events.StreamEnded):
            done += 1
        elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
            raise RuntimeError(f"unexpected {event}")
    return done


async def run(calls: int, concurrency: int, proxied: bool) -> tuple[float, float, int]:
    """CPU seconds for `calls` unary calls, `concurrency` at a time, in all and in the
    proxy alone; the proxy's transport writes."""
    spent = in_hop = 0.0
    writes = 0
    while calls > 0:
        some = min(calls, CALLS_PER_CONNECTION)
        s, h, w = await _connections(some, concurrency, proxied)
        spent, in_hop, writes = spent + s, in_hop + h, writes + w
        calls -= some
    return spent, in_hop, writes


async def _connections(calls: int, concurrency: int, proxied: bool) -> tuple[float, float, int]:
    """`run` over one set of connections."""
    client, backend = _client(), _backend()
    hop = Hop() if proxied else None
    body = grpc_message(REQUEST_PAYLOAD)
    to_client = backend.data_to_send()
    if hop is not None:
        # Connection prefaces and SETTINGS, before the clock starts.
        hop.down.data_received(client.data_to_send())
        await _turn()
        _serve(backend, hop.up_pipe.take())
        hop.up.data_received(to_client)
        await _turn()
        _read(client, hop.down_pipe.take())
        hop.down.data_received(client.data_to_send())
        _serve(backend, hop.up_pipe.take())
        hop.up.data_received(backend.data_to_send())
        await _turn()
        hop.down_pipe.take()
    else:
        _serve(backend, client.data_to_send())
        _read(client, to_client + backend.data_to_send())
        _serve(backend, client.data_to_send())
    writes = (hop.down_pipe.writes + hop.up_pipe.writes) if hop is not None else 0
    started = time.process_time()
    in_hop = 0.0
    finished = 0
    while finished < calls:
        batch = min(concurrency, calls - finished)
        for _ in range(batch):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST_HEADERS)
            client.send_data(sid, body, end_stream=True)
        got = 0
        if hop is None:
            _serve(backend, client.data_to_send())
            got = _read(client, backend.data_to_send())
        else:
            to_hop = client.data_to_send()
            clock = time.process_time()
            hop.down.data_received(to_hop)
            await _turn()
            in_hop += time.process_time() - clock
            _serve(backend, hop.up_pipe.take())
            to_hop = backend.data_to_send()
            clock = time.process_time()
            hop.up.data_received(to_hop)
            await _turn()
            in_hop += time.process_time() - clock
            got = _read(client, hop.down_pipe.take())
            to_hop = client.data_to_send()  # WINDOW_UPDATEs for the proxy
            if to_hop:
                clock = time.process_time()
                hop.down.data_received(to_hop)
                await _turn()
                in_hop += time.process_time() - clock
        if got != batch:
            raise RuntimeError(f"{got} of {batch} calls came back")
        finished += batch
    spent = time.process_time() - started
    if hop is not None:
        writes = hop.down_pipe.writes + hop.up_pipe.writes - writes
    return spent, in_hop, writes


def main() -> int:
    p = argparse.ArgumentParser(
        prog="bench/h2micro.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--calls", type=int, default=20_000, help="calls per measurement")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight at a time")
    p.add_argument("--repeat", type=int, default=5, help="measurements; the best counts")
    p.add_argument(
        "--codec",
        choices=("both", *h2codec.NAMES),
        default="both",
        help="the proxy's HTTP/2 codec (default: each one built here)",
    )
    p.add_argument(
        "--messages",
        type=int,
        default=1,
        help="messages per answer, a DATA frame each (default 1: unary; 1000: a server stream)",
    )
    args = p.parse_args()
    global MESSAGES
    MESSAGES = args.messages
    codecs = [args.codec] if args.codec != "both" else [h2codec.PYTHON.name]
    if args.codec == "both":
        codecs += [c.name for c in (h2codec.NATIVE, h2codec.SESSION) if c is not None]
    best: dict[str, tuple[float, float, float, int]] = {}
    for _ in range(args.repeat):
        for name in codecs:
            h2codec.use(name)
            direct = asyncio.run(run(args.calls, args.concurrency, False))[0]
            spent, in_hop, writes = asyncio.run(run(args.calls, args.concurrency, True))
            d, p_, h, _w = best.get(name, (float("inf"),) * 3 + (0,))
            best[name] = (min(d, direct), min(p_, spent), min(h, in_hop), writes)
    us = 1e6 / args.calls
    for name in codecs:
        direct, proxied, hop, writes = best[name]
        print(
            f"{h2codec.choose(name).description}: {args.calls:,} calls, {args.concurrency} in "
            f"flight: the hop {hop * us:.1f} us CPU per call ({writes / args.calls:.2f} "
            f"transport writes per call); client+backend {direct * us:.1f} us per call alone, "
            f"{proxied * us:.1f} with the hop"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
