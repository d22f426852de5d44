"""The gRPC unary workload: an h2c backend, a check that calls really are gRPC, h2load.

- Backend: nginx (one worker) with ``http2`` on a plain listener, so h2c with prior
  knowledge, answering every POST with one static gRPC message and the trailer
  ``grpc-status: 0``. nginx's static handler refuses a POST with 405; ``error_page 405
  =200`` turns that into an internal redirect to the message file with status 200. It
  is far faster than any proxy in front of it (C, one worker), so the proxies are what
  the measurement compares.
- Checks: every setup's answer is checked before it is measured, with a small client
  on the ``h2`` package (status 200, the expected message, and ``grpc-status: 0``
  arriving as a trailer), and, when ``grpcio`` is installed (the ``test`` extra), with
  a real gRPC client as well.
- Load: ``h2load`` with gRPC framing (POST, ``content-type: application/grpc``,
  ``te: trailers``, a body of one length-prefixed message) over ``-c`` connections with
  ``-m`` concurrent streams each, for a fixed time; every request's duration goes to
  ``--log-file``, from which the percentiles come.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib.loadgen import HOST, percentile
from benchlib.procs import BenchError, Proc, Processes, free_port, run_tool, wait_for

# One unary method; the bodies are protobuf-shaped (field 1, a string) but nothing
# decodes them: the proxies pass messages through, and the checks compare bytes.
METHOD = "/gossamer.bench.Echo/Unary"
REQUEST_PAYLOAD = b"\x0a\x0bhello bench"
RESPONSE_PAYLOAD = b"\x0a\x0bhello again"
GRPC_HEADERS = (("content-type", "application/grpc"), ("te", "trailers"))
# A server-streaming method (run.py --grpc-stream): each call is answered with
# STREAM_MESSAGES messages, each in a DATA frame of its own, as a gRPC server that
# flushes every message sends them.
STREAM_METHOD = "/gossamer.bench.Echo/Stream"
STREAM_MESSAGES = 1000


def grpc_message(payload: bytes) -> bytes:
    """One gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


# ---- backend ------------------------------------------------------------------------

NGINX_GRPC_CONF = """\
daemon off;
{user}worker_processes 1;
error_log stderr warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # One HTTP/2 connection carries every request of a run: no request cap, and room
    # for every stream the load generator and the proxies keep open.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    http2_max_concurrent_streams 1024;
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            # POST to a static file is a 405; answer it with the message, as a 200.
            error_page 405 =200 /grpc-response;
            return 405;
        }}
        location = /grpc-response {{
            internal;
            default_type application/grpc;
            etag off;
            add_trailer grpc-status 0 always;
            alias {dir}/response.bin;
        }}
        location = {stream_method} {{
            error_page 405 =200 /grpc-stream-response;
            return 405;
        }}
        location = /grpc-stream-response {{
            internal;
            default_type application/grpc;
            etag off;
            add_trailer grpc-status 0 always;
            # One message per DATA frame.
            http2_chunk_size {message_bytes};
            alias {dir}/stream.bin;
        }}
    }}
}}
"""


def start_backend(procs: Processes, nginx_bin: str, work: Path) -> tuple[int, Proc]:
    """nginx answering gRPC unary calls over h2c: its port and process."""
    directory = work / "nginx-grpc"
    directory.mkdir()
    (directory / "response.bin").write_bytes(grpc_message(RESPONSE_PAYLOAD))
    (directory / "stream.bin").write_bytes(grpc_message(RESPONSE_PAYLOAD) * STREAM_MESSAGES)
    for attempt in range(3):
        port = free_port()
        conf = directory / "nginx.conf"
        # The worker reads the answer from the run's private directory: run as root,
        # nginx would drop to an unprivileged user that cannot; it stays root instead.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(
            NGINX_GRPC_CONF.format(
                dir=directory,
                port=port,
                user=user,
                stream_method=STREAM_METHOD,
                message_bytes=len(grpc_message(RESPONSE_PAYLOAD)),
            )
        )
        proc = procs.spawn(
            "nginx-grpc", [nginx_bin, "-e", "stderr", "-p", str(directory), "-c", str(conf)]
        )
        try:
            wait_for("nginx (gRPC)", functools.partial(call_ok, port, 0.5), procs, timeout=10)
        except BenchError:
            procs.stop(proc)
            if attempt == 2:
                raise
            continue  # the port was taken between free_port() and nginx's bind
        return port, proc
    raise AssertionError("unreachable")


# ---- checks -------------------------------------------------------------------------


@dataclass
class CallResult:
    status: int
    message: bytes
    grpc_status: bytes | None  # from the trailers; None when none came
    trailers_only: bool  # grpc-status came in the response head, not as a trailer


def call(port: int, timeout: float = 2.0) -> CallResult:
    """One unary call over h2c with prior knowledge, with the ``h2`` package."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", HOST.encode()),
            (b":path", METHOD.encode()),
            *((n.encode(), v.encode()) for n, v in GRPC_HEADERS),
        ],
    )
    conn.send_data(stream, grpc_message(REQUEST_PAYLOAD), end_stream=True)
    status, body, grpc_status, trailers_only = 0, b"", None, False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            if not data:
                raise OSError("connection closed before the call ended")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    head = dict(event.headers or [])
                    status = int(head.get(b":status", b"0"))
                    if b"grpc-status" in head:
                        grpc_status, trailers_only = head[b"grpc-status"], True
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data or b""
                    conn.acknowledge_received_data(
                        event.flow_controlled_length or 0, event.stream_id or 0
                    )
                elif isinstance(event, h2.events.TrailersReceived):
                    grpc_status = dict(event.headers or []).get(b"grpc-status")
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise OSError(f"GOAWAY {event.error_code}")
            sock.sendall(conn.data_to_send())
        with contextlib.suppress(OSError):
            conn.close_connection()
            sock.sendall(conn.data_to_send())
    return CallResult(status, body, grpc_status, trailers_only)


def call_ok(port: int, timeout: float = 2.0) -> bool:
    """True when a unary call through ``port`` gets the message and grpc-status 0."""
    try:
        got = call(port, timeout)
    except (OSError, ValueError):
        return False
    return got.status == 200 and got.grpc_status == b"0" and got.message == _RESPONSE


_RESPONSE = grpc_message(RESPONSE_PAYLOAD)


def verify(port: int, what: str) -> dict[str, Any]:
    """Fail unless ``port`` answers proper gRPC: the trailer as a trailer, and (when
    grpcio is installed) a real gRPC client's call succeeds with the expected message."""
    try:
        got = call(port, timeout=5.0)
    except (OSError, ValueError) as err:
        raise BenchError(f"{what}: a gRPC call failed: {err}") from err
    if got.status != 200 or got.message != _RESPONSE:
        raise BenchError(f"{what}: unexpected answer to a gRPC call: {got}")
    if got.grpc_status != b"0" or got.trailers_only:
        raise BenchError(f"{what}: grpc-status 0 did not arrive as a trailer: {got}")
    checked: dict[str, Any] = {"h2_client": "ok", "grpcio": None}
    try:
        import grpc  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return checked
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.default_authority", HOST)]
    ) as channel:
        unary = channel.unary_unary(METHOD)
        try:
            reply, outcome = unary.with_call(REQUEST_PAYLOAD, timeout=10)
        except grpc.RpcError as err:
            raise BenchError(f"{what}: a grpcio call failed: {err}") from err
        if reply != RESPONSE_PAYLOAD or outcome.code() != grpc.StatusCode.OK:
            raise BenchError(f"{what}: grpcio got {reply!r}, {outcome.code()}")
        stream = channel.unary_stream(STREAM_METHOD)
        try:
            replies = list(stream(REQUEST_PAYLOAD, timeout=10))
        except grpc.RpcError as err:
            raise BenchError(f"{what}: a grpcio server stream failed: {err}") from err
        if replies != [RESPONSE_PAYLOAD] * STREAM_MESSAGES:
            raise BenchError(f"{what}: a server stream brought {len(replies)} messages")
    checked["grpcio"] = f"ok ({grpc.__version__})"
    return checked


# ---- load ---------------------------------------------------------------------------


@dataclass
class GrpcLoadResult:
    connections: int
    streams: int  # concurrent streams per connection (h2load -m)
    seconds: float
    requests: int  # completed
    succeeded: int
    failed: int
    errored: int
    non_2xx: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    data_bytes: int = 0  # response DATA received (h2load's "traffic: ... data")
    # Calls h2load counted as succeeded (HTTP 200) that lack their answer's data: a gRPC
    # error is a 200 with grpc-status in trailers (a proxy's "no endpoints" is one), which
    # h2load cannot see. Estimated from the data received against what each call answers.
    unanswered: int = 0

    @property
    def errors(self) -> int:
        return self.failed + self.errored + self.non_2xx + self.unanswered

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


def _need(text: str, pattern: str) -> re.Match[str]:
    m = re.search(pattern, text, re.MULTILINE)
    if m is None:
        raise BenchError(f"unexpected h2load output (no {pattern!r}):\n{text}")
    return m


def parse_h2load(
    text: str, log_file: Path | None, connections: int, streams: int, answer_bytes: int = 0
) -> GrpcLoadResult:
    """h2load's summary; `answer_bytes`: the DATA each successful call receives (0: not
    checked)."""
    finished = _need(text, r"^finished in ([\d.]+)s, ([\d.]+) req/s")
    counts = _need(
        text,
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored",
    )
    codes = _need(text, r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
    data = _need(text, r"^traffic: .*, \S+ \((\d+)\) data")
    durations: list[float] = []
    if log_file is not None and log_file.exists():
        for line in log_file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                durations.append(int(parts[2]) / 1e3)
    durations.sort()
    succeeded, received = int(counts.group(4)), int(data.group(1))
    # Calls cut off at the end of a timed run add part of an answer: never a negative count.
    unanswered = max(0, succeeded - received // answer_bytes) if answer_bytes else 0
    return GrpcLoadResult(
        connections=connections,
        streams=streams,
        seconds=float(finished.group(1)),
        requests=int(counts.group(3)),
        succeeded=int(counts.group(4)),
        failed=int(counts.group(5)),
        errored=int(counts.group(6)),
        non_2xx=sum(int(codes.group(i)) for i in (2, 3, 4)),
        # Calls answered per second: those answered without their data are not counted.
        rps=float(finished.group(2)) * (1 - unanswered / succeeded if succeeded else 1),
        p50_ms=percentile(durations, 50),
        p90_ms=percentile(durations, 90),
        p99_ms=percentile(durations, 99),
        max_ms=durations[-1] if durations else float("nan"),
        data_bytes=received,
        unanswered=unanswered,
    )


def h2load(
    h2load_bin: str,
    port: int,
    connections: int,
    streams: int,
    seconds: float,
    body: Path,
    log_file: Path | None = None,
    method: str = METHOD,
) -> GrpcLoadResult:
    """Closed-loop gRPC load for ``seconds``: ``connections`` x ``streams`` calls in
    flight at all times (unary, or server streams of STREAM_MESSAGES messages)."""
    argv = [
        h2load_bin,
        "-t1",
        f"-c{connections}",
        f"-m{streams}",
        f"-D{max(1, round(seconds))}",
        "-d",
        str(body),
        "-H",
        f":authority: {HOST}",
        *(x for name, value in GRPC_HEADERS for x in ("-H", f"{name}: {value}")),
    ]
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    argv.append(f"http://127.0.0.1:{port}{method}")
    out = run_tool(argv, timeout=seconds + 30)
    answer = len(grpc_message(RESPONSE_PAYLOAD)) * (
        STREAM_MESSAGES if method == STREAM_METHOD else 1
    )
    return parse_h2load(out, log_file, connections, streams, answer)


def write_request_body(work: Path) -> Path:
    path = work / "grpc-request.bin"
    path.write_bytes(grpc_message(REQUEST_PAYLOAD))
    return path
