"""Adversarial tests of HTTP/1.1 carried between two proxies as HTTP/2 streams
(proxy.outbound.h1to2 on the client proxy, proxy.inbound.h2to1 on the peer; decision
0111), against real data planes over real mTLS: a hostile app or client on either side.

Each test turns the stream path on (GOSSAMER_MULTIPLEX_HTTP1=1) before the mesh fixture
makes its proxies. What the path must keep is what the per-connection path does: the
same request reaches the app, the same response reaches the client, every request is
sent at most once unless it may be sent again, and every place under the in-flight cap
is given back. A strict xfail is a defect found here: it turns into a plain test once
fixed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections import Counter

import pytest

from gossamer.proxy.outbound.h1to2 import StreamUpstream
from gossamer.proxy.wire.http2 import MAX_STREAMS, STREAM_WINDOW, UPSTREAM_CONNECTION_WINDOW
from gossamer.proxy.wire.limits import MAX_HEADERS, InFlight
from gossamer.translate.snapshot import ServicePort, ServiceView
from tests.proxy import conftest as proxy_conftest
from tests.proxy.conftest import Mesh, raw_exchange, server_snapshot
from tests.proxy.test_e2e_http import admin_get, metric
from tests.proxy.test_in_flight import _wait_count

mesh = proxy_conftest.mesh  # the fixture: a client proxy and two echo workloads


@pytest.fixture(autouse=True)
def streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP/1.1 between the proxies as streams; set before the mesh makes its proxies."""
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "1")


def _one_endpoint(mesh: Mesh) -> None:
    """Route echo to echo-1 alone, so that every stream shares one peer connection."""
    only = ServiceView(
        "echo", "default", (ServicePort(80, "http", None, (mesh.workloads[0].endpoint(),)),)
    )
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(only,)))


class LocalApp:
    """A plain-TCP app on a local ephemeral port, played by a test: its `_handle`
    serves each connection."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class ScriptedApp(LocalApp):
    """An HTTP/1.1 app that answers every request with the same bytes, then closes."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer
        self.requests = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(self.answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.asyncio
async def test_a_request_with_as_many_fields_as_http1_takes_passes_as_a_stream(
    mesh: Mesh,
) -> None:
    """The client proxy's HTTP/1.1 reader takes up to MAX_HEADERS (100) fields, as Envoy
    does; the request then becomes HEADERS with :method, :scheme, :authority, :path,
    gossamer-src-service and gossamer-orig-proto as well, and the peer's
    H2Connection._on_request answers more than MAX_HEADERS fields 431. Over a connection
    per request (the default) the same request is 200."""
    extra = b"".join(b"x-h%d: v\r\n" % i for i in range(MAX_HEADERS - 5))
    request = b"GET / HTTP/1.1\r\nHost: echo\r\n" + extra + b"Connection: close\r\n\r\n"
    answer = await raw_exchange(mesh.outbound, request, 10.0)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert len(json.loads(body)["headers"]) >= MAX_HEADERS - 5


@pytest.mark.asyncio
async def test_an_apps_103_early_hints_reaches_the_client(mesh: Mesh) -> None:
    """The peer's h2to1 reads the app's 103 and keeps it (H1Exchange.response_head: a
    status under 200 only sets `interim`), so no informational HEADERS reach the client
    proxy; and were one sent, H2Connection._on_informational passes a 1xx on only to a
    half with a connection (`other.conn is not None`), while StreamUpstream, the carrier
    of an HTTP/1.1 client's half, has no method to take one. Over a connection per
    request the client gets the 103, then the 200."""
    app = ScriptedApp(
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    )
    port = await app.start()
    try:
        for w in mesh.workloads:
            w.proxy.apply_snapshot(server_snapshot(mesh.pki, w.name, port))
        answer = await raw_exchange(
            mesh.outbound, b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n", 10.0
        )
    finally:
        await app.close()
    assert app.requests == 1
    assert answer.endswith(b"\r\n\r\nok")  # the final response came whole
    assert answer.startswith(b"HTTP/1.1 103 "), answer[:200]
    assert b"link: </style.css>; rel=preload" in answer


@pytest.mark.asyncio
async def test_requests_past_max_streams_to_one_peer_each_reach_the_app_once(
    mesh: Mesh,
) -> None:
    """More POSTs in flight to one endpoint than its connection takes streams: those past
    MAX_STREAMS take a connection of their own (Streamer._bind); every one is answered
    200, each reaches the app exactly once, and every place is given back."""
    _one_endpoint(mesh)
    # The peer's SETTINGS (MAX_CONCURRENT_STREAMS = MAX_STREAMS) are in before the burst:
    # a cold link is test_a_burst_on_a_new_peer_connection_is_not_refused_503's case.
    await raw_exchange(mesh.outbound, b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
    cap = mesh.client.in_flight = InFlight(10 * MAX_STREAMS, lambda: "workload default/web")
    mesh.workloads[0].app.delay = 1.0  # so that they are all in flight together
    for app_pool in mesh.workloads[0].proxy._apps.values():
        # The echo app's listen backlog is asyncio's 100: past it, on the stock loop, a
        # connect waits for the SYN to be sent again (1 s), fast_config's whole timeout.
        app_pool.timeout = 10.0
    count = MAX_STREAMS + 44
    answers = await asyncio.gather(
        *[
            raw_exchange(
                mesh.outbound,
                b"POST /p%d HTTP/1.1\r\nHost: echo\r\nContent-Length: 3\r\n"
                b"Connection: close\r\n\r\nabc" % i,
                20.0,
            )
            for i in range(count)
        ]
    )
    assert Counter(a[:12] for a in answers) == {b"HTTP/1.1 200": count}
    paths = Counter(path for _, path, _, _ in mesh.workloads[0].app.received)
    assert len(paths) == count + 1 and set(paths.values()) == {1}
    await _wait_count(cap, 0)
    assert all(not link.halves for link in mesh.client.peer_links.conns.values())


@pytest.mark.asyncio
async def test_a_peer_closing_with_posts_in_flight_sends_none_twice(mesh: Mesh) -> None:
    """A peer proxy goes away with POSTs in flight on its connection: each is answered
    (200 from the other peer, or 502), none reaches an app twice, and the in-flight cap
    comes back to 0."""
    cap = mesh.client.in_flight = InFlight(1000, lambda: "workload default/web")
    for w in mesh.workloads:
        w.app.delay = 1.0
    calls = [
        asyncio.ensure_future(
            raw_exchange(
                mesh.outbound,
                b"POST /p%d HTTP/1.1\r\nHost: echo\r\nContent-Length: 3\r\n"
                b"Connection: close\r\n\r\nabc" % i,
                20.0,
            )
        )
        for i in range(40)
    ]
    await asyncio.sleep(0.5)  # all sent, none answered yet
    await mesh.workloads[0].proxy.close()
    answers = await asyncio.gather(*calls)
    statuses = Counter(a[:12] for a in answers)
    assert set(statuses) <= {b"HTTP/1.1 200", b"HTTP/1.1 502"}, statuses
    assert sum(statuses.values()) == 40
    paths = Counter(p for w in mesh.workloads for _, p, _, _ in w.app.received)
    assert set(paths.values()) == {1}, [p for p, n in paths.items() if n > 1]
    await _wait_count(cap, 0)


@pytest.mark.asyncio
async def test_an_endpoint_leaving_the_snapshot_drains_its_link_after_its_streams(
    mesh: Mesh,
) -> None:
    """Links.sweep: echo-1 leaves the snapshot with requests in flight on its link; they
    are answered 200, then its connection closes (no new streams were put on it)."""
    _one_endpoint(mesh)
    mesh.workloads[0].app.delay = 1.5
    calls = [
        asyncio.ensure_future(
            raw_exchange(
                mesh.outbound,
                b"GET /s%d HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n" % i,
                20.0,
            )
        )
        for i in range(10)
    ]
    await asyncio.sleep(0.5)
    (link,) = mesh.client.peer_links.conns.values()
    assert len(link.halves) == 10
    mesh.client.apply_snapshot(mesh.client_snapshot())  # both endpoints
    second = ServiceView(
        "echo", "default", (ServicePort(80, "http", None, (mesh.workloads[1].endpoint(),)),)
    )
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(second,)))
    for _ in range(300):  # the sweep runs each SWEEP_INTERVAL
        if link.draining:
            break
        await asyncio.sleep(0.01)
    assert link.draining and not link.closed
    after = await raw_exchange(
        mesh.outbound, b"GET /after HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n", 10.0
    )
    assert b'"instance": "echo-2"' in after
    answers = await asyncio.gather(*calls)
    assert all(b'"instance": "echo-1"' in a and a.startswith(b"HTTP/1.1 200 ") for a in answers)
    for _ in range(300):
        if link.closed:
            break
        await asyncio.sleep(0.01)
    assert link.closed


async def _never_reading_download(address: tuple[str, int], size: int) -> socket.socket:
    """A client that asks for `size` bytes and reads none of them (a small receive
    buffer, so that the proxy's writes back up soon)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    sock.send(b"GET /bytes?n=%d HTTP/1.1\r\nHost: echo\r\n\r\n" % size)
    return sock


def _held(mesh: Mesh) -> int:
    """Response bytes the client proxy has handed to clients that stopped reading, not
    yet acknowledged to the peer (StreamUpstream.held), over its streams in flight."""
    total = 0
    for link in mesh.client.peer_links.conns.values():
        for half in link.halves.values():
            carrier = half.other.carrier if half.other is not None else None
            if isinstance(carrier, StreamUpstream):
                total += carrier.held
    return total


@pytest.mark.asyncio
async def test_clients_that_stop_reading_and_leave_do_not_stall_the_peer_connection(
    mesh: Mesh,
) -> None:
    """Clients download through one peer connection and stop reading; the client proxy
    pauses reading the stream and keeps the DATA it has handed on unacknowledged (`held`,
    up to a stream window each), to acknowledge it once the client reads again. Then the
    clients leave: the exchange closes its StreamUpstream, which cancels the stream and
    never acknowledges `held`, so those bytes stay counted against the connection's
    window (UPSTREAM_CONNECTION_WINDOW, 64 MiB) for the life of the connection. Once
    clients that left had held that much, no DATA comes on the connection at all: every
    other request to that peer waits with its response head and no body."""
    _one_endpoint(mesh)
    per_round = 128
    leaked = 0
    for _ in range(4):  # at most 4 x 128 clients
        clients = [
            await _never_reading_download(mesh.outbound, 20_000_000) for _ in range(per_round)
        ]
        held, still = 0, 0
        while held < per_round * STREAM_WINDOW // 2 and still < 50:
            # until each has about half a stream window held, or no more comes (0.5 s)
            await asyncio.sleep(0.01)
            now = _held(mesh)
            still = still + 1 if now == held else 0
            held = now
        leaked += held
        for sock in clients:  # gone at once (RST): no FIN to read after
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        if not held or leaked > UPSTREAM_CONNECTION_WINDOW:
            break  # the connection's window is spent, or would be, never given back
    for _ in range(300):  # the cancelled streams are gone from the connection
        if not any(link.halves for link in mesh.client.peer_links.conns.values()):
            break
        await asyncio.sleep(0.01)
    answer = await raw_exchange(
        mesh.outbound,
        b"GET /bytes?n=1000000 HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
        5.0,
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert len(answer.partition(b"\r\n\r\n")[2]) == 1_000_000


async def _impatient_get(address: tuple[str, int], patience: float) -> None:
    """A client that gives up on a slow answer and goes (as curl -m or a load balancer
    does): its request's stream is cancelled on the peer connection."""
    _, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"GET /hang HTTP/1.1\r\nHost: echo\r\n\r\n")
        await asyncio.sleep(patience)
    finally:
        writer.transport.abort()


@pytest.mark.asyncio
async def test_clients_that_give_up_cost_the_other_clients_of_the_shared_connection_nothing(
    mesh: Mesh,
) -> None:
    """150 clients each ask for a slow answer and leave after 0.3 s, while other clients
    POST to the same peer. Over a connection per request each leaving client closes a
    connection of its own; as streams, each is an RST_STREAM CANCEL on the one peer
    connection (StreamUpstream.close), within PREMATURE_RESET_LIFETIME of its start, so
    the peer's rapid-reset guard (H2Connection._premature_reset: half of 100 or more
    streams) may take the client proxy for an attacker and drain the link with GOAWAY
    ENHANCE_YOUR_CALM, as Envoy's does in Istio. That costs the link, not a request:
    the streams open on it finish, and a POST that crossed the GOAWAY was refused
    unprocessed and is sent again on a new link (RFC 9113 8.1.4; decision 0112), where
    it was once answered 502."""
    _one_endpoint(mesh)
    mesh.workloads[0].app.delay = 0.5
    await raw_exchange(mesh.outbound, b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
    (link,) = mesh.client.peer_links.conns.values()
    leaving, posts = [], []
    for i in range(150):
        leaving.append(asyncio.ensure_future(_impatient_get(mesh.outbound, 0.3)))
        if i % 5 == 0:
            request = b"POST /p%d HTTP/1.1\r\nHost: echo\r\nContent-Length: 1\r\n" % i
            posts.append(
                asyncio.ensure_future(
                    raw_exchange(mesh.outbound, request + b"Connection: close\r\n\r\nx", 20.0)
                )
            )
        await asyncio.sleep(0.005)
    await asyncio.gather(*leaving)
    answers = await asyncio.gather(*posts)
    assert Counter(a[:12] for a in answers) == {b"HTTP/1.1 200": len(posts)}
    assert link.draining or link.closed  # the guard took it: the case this is about


@pytest.mark.asyncio
async def test_a_burst_on_a_new_peer_connection_is_not_refused_503(mesh: Mesh) -> None:
    """120 clients send a request at once to a peer the client proxy has no connection
    to yet. They are bound to the new link as it connects, before the peer's SETTINGS
    (MAX_CONCURRENT_STREAMS 256) are read, while the HTTP/2 engine holds the peer to
    RFC 9113's assumed 100 (nghttp2 and h2 alike): Streamer._bind lets them through up
    to MAX_STREAMS, StreamPair.attach's send_headers fails past 100, and those requests
    are answered 503 "cannot open a stream ... Max outbound streams is 100, 100 open",
    never tried, where the design is that a request finding the link full takes a
    connection of its own (decision 0111)."""
    _one_endpoint(mesh)
    mesh.workloads[0].app.delay = 0.3  # so that they are all in flight together
    for app_pool in mesh.workloads[0].proxy._apps.values():
        app_pool.timeout = 10.0  # past the echo app's listen backlog (100), on any loop
    clients = [await asyncio.open_connection(*mesh.outbound) for _ in range(120)]
    try:
        for i, (_, writer) in enumerate(clients):
            writer.write(b"GET /b%d HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n" % i)
        answers = await asyncio.gather(
            *[asyncio.wait_for(reader.read(), 20.0) for reader, _ in clients]
        )
    finally:
        for _, writer in clients:
            writer.transport.abort()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    assert not refused, refused[0].split(b"\r\n\r\n")[0]
    assert Counter(a[:12] for a in answers) == {b"HTTP/1.1 200": 120}


@pytest.mark.asyncio
async def test_a_request_whose_client_gave_up_is_not_counted_502_by_the_peer(
    mesh: Mesh,
) -> None:
    """A client asks for a slow answer and leaves. Over a connection per request the
    peer's inbound side counts it 499 (the client closed); as a stream, the peer sees
    the stream cancelled before any answer, and InboundH2's `done` records `p.status or
    502`: the destination workload's golden metrics show a server error that no app
    made (its success rate falls with every impatient client)."""
    _one_endpoint(mesh)
    await _impatient_get(mesh.outbound, 0.3)
    server = mesh.workloads[0].proxy
    name = "gossamer_requests_total"
    for _ in range(300):  # until the peer has counted the cancelled stream
        _, text = await admin_get(server, "/metrics")
        if metric(text.decode(), name, direction="inbound", dst_service="echo"):
            break
        await asyncio.sleep(0.01)
    counted = text.decode()
    assert metric(counted, name, direction="inbound", dst_service="echo") == 1
    assert metric(counted, name, direction="inbound", code="502") == 0
    assert metric(counted, name, direction="inbound", code="499") == 1
