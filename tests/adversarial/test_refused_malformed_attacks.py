"""Adversarial tests of decision 0112 (commits 7977a18, b63e470): a stream the peer
refused unprocessed is sent again whatever its method, and a malformed header block is a
stream error, with every HTTP/1.1-to-HTTP/2 conversion going through
`http2.from_http1`.

How: a real client proxy (DataPlane, real mTLS, ALPN gossamer/h2) calls a replica
played by the test (`HostilePeer`, the `h2` package with validation of what it sends
turned off) that answers each stream as its script says: a 103 and then REFUSED_STREAM
or a GOAWAY that disowns the stream, a response head and then REFUSED_STREAM, a GOAWAY
on every connection or one that covers the stream before the connection closes, a late
refusal, SETTINGS that take no stream, a malformed response head, malformed trailers
after the response began (plain and gRPC). The app is a raw `h2` client (which, unlike
curl, does not send a refused stream again itself), curl, grpcio, or raw HTTP/1.1
carried as streams (proxy.outbound.h1to2, GOSSAMER_MULTIPLEX_HTTP1=1). Where a real
peer proxy is the target (the mesh fixture, tests.proxy.test_h2_hardening's echo mesh
and RawH2), the attacks are: an HTTP/1.1 app's 304 with a Content-Length beside another
stream on the link, floods of malformed requests, malformed requests followed by more
DATA than the connection's window, malformed request trailers to an HTTP/1.1 app, and a
burst of requests over the peer's in-flight cap. Every test runs over the three HTTP/2
engines (python, native, session); every loop is bounded in count and time.

What must hold: a request that reached the peer's application (the peer said so by
answering any part of it, a 1xx included) is never sent again without a retry policy
that allows it, by the proxy or, on its word, by the app's client; every re-send is
bounded (limits.REFUSED_RETRIES), counted once, spends no retry budget, ejects nothing,
and ends in a clear answer within the route's timeout; a copy kept for a refusal is let
go once no refusal can use it; a malformed block ends its stream only, with an answer
that says what went wrong, and costs the shared link nothing. A strict xfail is a defect
found here: it turns into a plain test once fixed.

The review found 11 defects; all are fixed and are plain tests now (decision 0112):
a 1xx then a refusal (the pair is `interim`: not refused), a refusal after a head
(passed on as INTERNAL_ERROR), a GOAWAY refusal past REFUSED_RETRIES (REFUSED_STREAM
to an HTTP/2 app), a 304's content-length on the h2 engines (`http2._Stream`), the
copies kept for a refusal (let go once the response head came, both paths), re-sends
that spent connect tries (a refusal begins a new try), malformed trailers to gRPC
(INTERNAL_ERROR), refusals from a peer at its in-flight cap (REFUSED_STREAM goes only
to another replica: no re-sends pile onto the busy one), a refusal for good named
in its 503, and a request with Expect: 100-continue (kept like any other: this hop
sends the 100 itself, once).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
import pytest_asyncio
from hyperframe.frame import Frame, WindowUpdateFrame

from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.outbound.h1to2 import StreamUpstream
from gossamer.proxy.wire import h2codec
from gossamer.proxy.wire.http2 import CONNECTION_WINDOW, CONTROL_FRAME_LIMIT, STREAM_WINDOW
from gossamer.proxy.wire.limits import REFUSED_RETRIES, REPLAY_LIMIT, InFlight
from gossamer.proxy.wire.tls import sni_for
from tests.adversarial.test_h1to2_attacks import LocalApp, _one_endpoint
from tests.adversarial.test_stream_end_attacks import h2load
from tests.proxy import conftest as proxy_conftest
from tests.proxy.conftest import Mesh, Pki, curl, fast_config, raw_exchange, server_snapshot
from tests.proxy.conftest import h2_codec as h2_codec  # autouse: the engine under test
from tests.proxy.test_e2e_http import admin_get, metric
from tests.proxy.test_e2e_upgrade import two_proxies
from tests.proxy.test_h1to2 import StreamPeer, go_away
from tests.proxy.test_h2_hardening import (
    ENHANCE_YOUR_CALM,
    RawH2,
    echo_mesh,
    inbound_context,
    open_to,
    request,
)
from tests.proxy.test_retry_hardening import RESET_RETRY, apply, retry_policy, send
from tests.proxy.test_traffic import httproute, ref

WAIT = 10.0

EARLY_THEN_REFUSED = "103 Early Hints, then RST_STREAM REFUSED_STREAM"
EARLY_THEN_GOAWAY = "103 Early Hints, then a GOAWAY whose last stream id is below it"
HEAD_THEN_REFUSED = "the response head, then RST_STREAM REFUSED_STREAM"
GOAWAY_ALWAYS = "GOAWAY with last stream id 0 on the stream's first frame"
REFUSED = "RST_STREAM REFUSED_STREAM on the stream's first frame"
MALFORMED_HEAD = "a response head with a connection-specific field"
MALFORMED_TRAILERS = "a response head and DATA, then trailers with a connection field"
HEAD_AND_HOLD = "a response head and some DATA, and the stream kept open (a long response)"
RESET_AFTER_READING = "the request read whole, then RST_STREAM INTERNAL_ERROR (processed, failed)"
LATE_REFUSED = "RST_STREAM REFUSED_STREAM 0.6 s after the stream's first frame"
LATE_GOAWAY = "GOAWAY with last stream id 0, 0.6 s after the stream's first frame"
GOAWAY_COVERING_THEN_CLOSE = "a GOAWAY whose last stream id covers it, then the connection closed"
GRPC_MALFORMED_TRAILERS = "a gRPC response message, then trailers with a connection field"


mesh = proxy_conftest.mesh  # the fixture: a client proxy and two echo workloads


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    metafunc.parametrize("h2_codec", h2codec.NAMES, indirect=True)


class HostilePeer(StreamPeer):
    """A StreamPeer ("echo-1") with the moves of this file. It validates nothing it
    sends, so it can send what a buggy or hostile peer would; each stream's body is
    kept once it ended, whatever the move."""

    validate = False

    def __init__(
        self, pki: Pki, script: tuple[str, ...] = (), max_streams: int | None = None
    ) -> None:
        super().__init__(pki, "echo-1", script, max_streams)

    async def at_start(
        self, conn: h2.connection.H2Connection, writer: asyncio.StreamWriter, sid: int, move: str
    ) -> bool:
        if move in (LATE_REFUSED, LATE_GOAWAY):
            await asyncio.sleep(0.6)
        if move in (REFUSED, LATE_REFUSED):
            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif move in (GOAWAY_ALWAYS, LATE_GOAWAY):
            return await go_away(conn, writer, 0)
        return False

    async def at_end(
        self,
        conn: h2.connection.H2Connection,
        writer: asyncio.StreamWriter,
        sid: int,
        move: str,
        body: bytes,
    ) -> bool:
        early = [(b":status", b"103"), (b"link", b"</style.css>; rel=preload")]
        if move == EARLY_THEN_REFUSED:
            conn.send_headers(sid, early)
            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif move == EARLY_THEN_GOAWAY:
            conn.send_headers(sid, early)
            return await go_away(conn, writer, max(sid - 2, 0))
        elif move == HEAD_THEN_REFUSED:
            conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"100")])
            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif move == MALFORMED_HEAD:
            conn.send_headers(
                sid, [(b":status", b"200"), (b"connection", b"close")], end_stream=True
            )
        elif move == MALFORMED_TRAILERS:
            conn.send_headers(sid, [(b":status", b"200")])
            conn.send_data(sid, b"partial")
            conn.send_headers(sid, [(b"connection", b"close")], end_stream=True)
        elif move == RESET_AFTER_READING:
            conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif move == GOAWAY_COVERING_THEN_CLOSE:
            return await go_away(conn, writer, sid)
        elif move == GRPC_MALFORMED_TRAILERS:
            conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
            conn.send_data(sid, b"\x00\x00\x00\x00\x02ok")
            conn.send_headers(sid, [(b"grpc-status", b"0"), (b"connection", b"x")], end_stream=True)
        elif move == HEAD_AND_HOLD:
            conn.send_headers(sid, [(b":status", b"200")])
            conn.send_data(sid, b"first")
        else:  # StreamPeer's moves: ANSWER (every stream after the script) and others
            return await super().at_end(conn, writer, sid, move, body)
        self.bodies.append(body)
        return False


@pytest_asyncio.fixture
async def peers() -> AsyncIterator[list[HostilePeer]]:
    started: list[HostilePeer] = []
    try:
        yield started
    finally:
        for peer in started:
            await peer.close()


@pytest_asyncio.fixture
async def client(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DataPlane]:
    """A client proxy that carries HTTP/1.1 to peers as streams (HTTP/2 from apps goes
    as streams whatever this says)."""
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "1")
    proxy = DataPlane(fast_config(), on_interest=lambda key: None)
    assert proxy.config.multiplex_http1
    try:
        await proxy.start()
        proxy.set_credentials(pki.issue("default", "web"))
        yield proxy
    finally:
        await proxy.close()


async def hostile_peer(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], script: tuple[str, ...], *objects: object
) -> HostilePeer:
    peer = HostilePeer(pki, script)
    peers.append(peer)
    apply(client, pki, {"echo-1": await peer.start()}, *objects)
    return peer


class H2Answer:
    """What an app's HTTP/2 client saw of one stream."""

    def __init__(self) -> None:
        self.informational: list[int] = []
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.trailers: dict[bytes, bytes] | None = None
        self.reset: int | None = None  # the RST_STREAM error code, if reset
        self.ended = False


async def app_h2(
    address: tuple[str, int] | None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, h2.connection.H2Connection]:
    """An app's HTTP/2 connection (prior knowledge) to `address`, by the `h2` package:
    (reader, writer, its h2 state, the preface queued)."""
    assert address is not None
    reader, writer = await asyncio.open_connection(*address)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    return reader, writer, conn


async def h2_call(
    client: DataPlane, method: bytes = b"POST", body: bytes = b"", later: bytes = b""
) -> H2Answer:
    """One HTTP/2 request from an app through the client's outbound, by the `h2`
    package (which, unlike curl, does not send a refused stream again itself). `later`:
    the rest of the body, sent half a second after the head and `body`."""
    reader, writer, conn = await app_h2(client.outbound_address)
    head = [(b":method", method), (b":scheme", b"http"), (b":authority", b"echo"),
            (b":path", b"/x")]  # fmt: skip
    whole = body + later
    if whole:
        head.append((b"content-length", b"%d" % len(whole)))
    conn.send_headers(1, head, end_stream=not whole)
    got = H2Answer()
    try:
        for part, last in ((body, not later), (later, True)):
            for at in range(0, len(part), 16384):  # within the initial window (65,535)
                end = last and at + 16384 >= len(part)
                conn.send_data(1, part[at : at + 16384], end_stream=end)
            writer.write(conn.data_to_send())
            if not last:
                await asyncio.sleep(0.5)
        while not got.ended and (data := await asyncio.wait_for(reader.read(65536), WAIT)):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.InformationalResponseReceived):
                    got.informational.append(int(dict(event.headers or [])[b":status"]))
                elif isinstance(event, h2.events.ResponseReceived):
                    got.headers = dict(event.headers or [])
                    got.status = int(got.headers[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    got.body.extend(event.data or b"")
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.TrailersReceived):
                    got.trailers = dict(event.headers or [])
                elif isinstance(event, h2.events.StreamEnded):
                    got.ended = True
                elif isinstance(event, h2.events.StreamReset):
                    got.reset = int(event.error_code or 0)
                    got.ended = True
            writer.write(conn.data_to_send())
    finally:
        writer.transport.abort()
    return got


async def call_through(
    client: DataPlane, protocol: str, method: str = "POST", body: bytes = b"once"
) -> tuple[int, str, bytes]:
    """One request through the client proxy from an app speaking HTTP/2 ("h2", the `h2`
    package) or HTTP/1.1 ("h1", carried as a stream): (status, or -(the RST_STREAM
    error code) for a reset stream; gossamer-error; body)."""
    if protocol == "h1":
        return await send(client, method, body)
    got = await h2_call(client, method.encode(), body)
    if got.reset is not None and not got.status:
        return -got.reset, "", b""
    return got.status, got.headers.get(b"gossamer-error", b"").decode(), bytes(got.body)


# ---- a request that reached the peer's app is not sent again -------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("move", [EARLY_THEN_REFUSED, EARLY_THEN_GOAWAY])
async def test_an_http2_post_answered_103_then_refused_is_not_sent_again(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], move: str
) -> None:
    """A peer that answered a 103 has processed the request (RFC 9113 8.1.4: REFUSED
    means before any processing); a refusal after it is a lie or a bug, and believing
    it sends a POST to the app twice."""
    peer = await hostile_peer(pki, client, peers, (move,))
    got = await h2_call(client, b"POST", b"once")
    assert [r[b":method"] for r in peer.requests] == [b"POST"]
    # The session engine (nghttp2) drops a stream's queued frames, the 103 among them,
    # when the stream is reset in the same read; a 1xx is advisory (RFC 9110 15.2).
    assert got.informational in ([103], [])
    assert got.status == 502 or got.reset == h2.errors.ErrorCodes.INTERNAL_ERROR


@pytest.mark.asyncio
@pytest.mark.parametrize("move", [EARLY_THEN_REFUSED, EARLY_THEN_GOAWAY])
async def test_an_http1_post_answered_103_then_refused_is_not_sent_again(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], move: str
) -> None:
    """HTTP/1.1 carried as a stream: the 1xx marks the stream answered, and the POST is
    not sent again (Exchange.upstream_lost: upstream.answered); the client gets 502."""
    peer = await hostile_peer(pki, client, peers, (move,))
    status, error, _ = await send(client, "POST", b"once")
    assert status == 502, error
    assert [r[b":method"] for r in peer.requests] == [b"POST"]


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_a_post_a_goaway_covers_is_not_sent_again_when_the_connection_closes(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str
) -> None:
    """A GOAWAY whose last stream id covers the stream says the peer may have processed
    it (RFC 9113 6.8); the connection then closing without an answer is not a
    refusal: the POST is answered 502, not sent again."""
    peer = await hostile_peer(pki, client, peers, (GOAWAY_COVERING_THEN_CLOSE,))
    status, error, _ = await call_through(client, protocol)
    assert status == 502 or status < 0, error
    assert [r[b":method"] for r in peer.requests] == [b"POST"]


@pytest.mark.asyncio
async def test_a_refused_post_with_expect_100_continue_is_sent_again_whole(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    """curl, .NET and Java clients send Expect: 100-continue with a request body."""
    peer = await hostile_peer(pki, client, peers, (GOAWAY_ALWAYS,))
    assert client.outbound_address is not None
    host, port = client.outbound_address
    rc, out, err = await curl(
        "-v", "-m", "8", "-H", "Expect: 100-continue", "--data-binary", "x" * 3000,
        "-H", "Host: echo", f"http://{host}:{port}/x",
    )  # fmt: skip
    assert (rc, out) == (0, b"echo-1"), err
    assert len(peer.requests) == 2
    assert peer.bodies == [b"x" * 3000]


@pytest.mark.asyncio
async def test_an_http2_post_refused_after_its_response_head_is_not_sent_again(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    """REFUSED_STREAM after a response head: pair.status is set, so the proxy does not
    send the stream again itself; the app's stream is reset. (The python and native
    engines pass the 200 head on first; the session engine drops the head it had
    queued when the reset follows in the same read.)"""
    peer = await hostile_peer(pki, client, peers, (HEAD_THEN_REFUSED,))
    got = await h2_call(client, b"POST", b"once")
    assert got.reset is not None and not got.body
    assert [r[b":method"] for r in peer.requests] == [b"POST"]


@pytest.mark.asyncio
async def test_a_refusal_after_a_response_head_is_not_passed_on_as_a_refusal(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    """The proxy saw the peer answer; what it passes on must not invite the app's
    client to send the request again (curl, like grpc and Envoy, re-sends a stream
    reset REFUSED_STREAM on a new connection)."""
    peer = await hostile_peer(pki, client, peers, (HEAD_THEN_REFUSED,))
    assert client.outbound_address is not None
    host, port = client.outbound_address
    rc, _, err = await curl(
        "--http2-prior-knowledge", "-v", "-m", "8", "-d", "once", "-H", "Host: echo",
        f"http://{host}:{port}/x",
    )  # fmt: skip
    assert b"REFUSED_STREAM, retrying" not in err
    assert rc != 0  # the response was cut short
    assert [r[b":method"] for r in peer.requests] == [b"POST"]


@pytest.mark.asyncio
async def test_an_http1_post_refused_after_its_response_head_is_not_sent_again(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    peer = await hostile_peer(pki, client, peers, (HEAD_THEN_REFUSED,))
    assert client.outbound_address is not None
    reader, writer = await asyncio.open_connection(*client.outbound_address)
    try:
        writer.write(b"POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\n\r\nonce")
        data = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.transport.abort()
    # The head came (200, a content-length of 100) and then the connection is cut
    # short: the client can tell its response was not whole.
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert len(data.partition(b"\r\n\r\n")[2]) < 100
    assert [r[b":method"] for r in peer.requests] == [b"POST"]


# ---- every re-send is bounded, and ends in a clear answer -----------------------------


@pytest.mark.asyncio
async def test_an_http2_stream_a_peer_goaways_every_time_is_refused_to_the_app(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    peer = await hostile_peer(pki, client, peers, (GOAWAY_ALWAYS,) * 10)
    got = await h2_call(client, b"POST", b"q")
    assert len(peer.requests) == 1 + REFUSED_RETRIES
    assert got.reset == h2.errors.ErrorCodes.REFUSED_STREAM, (got.status, bytes(got.body))


@pytest.mark.asyncio
async def test_an_http2_stream_a_peer_goaways_every_time_is_asked_a_bounded_number_of_times(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    """A peer that says GOAWAY (last stream id 0) on every new connection: the stream
    goes 1 + REFUSED_RETRIES times, each on a new connection, then the app gets an
    answer, not a hang."""
    peer = await hostile_peer(pki, client, peers, (GOAWAY_ALWAYS,) * 10)
    got = await h2_call(client, b"POST", b"q")
    assert got.ended
    assert len(peer.requests) == 1 + REFUSED_RETRIES
    assert peer.connections == 1 + REFUSED_RETRIES


@pytest.mark.asyncio
async def test_an_http1_request_a_peer_goaways_every_time_is_answered_503_saying_so(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    peer = await hostile_peer(pki, client, peers, (GOAWAY_ALWAYS,) * 10)
    status, error, _ = await send(client, "POST", b"q")
    assert status == 503 and "refused the request unprocessed" in error, error
    assert len(peer.requests) == 1 + REFUSED_RETRIES
    assert peer.connections == 1 + REFUSED_RETRIES


def closed_port() -> int:
    """A local port nothing listens on (a replica whose proxy is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.asyncio
@pytest.mark.parametrize("body", [b"small", b"b" * (REPLAY_LIMIT + 1)], ids=["kept", "too-big"])
async def test_an_http1_request_refused_for_good_is_answered_with_the_refusal_named(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], body: bytes
) -> None:
    await hostile_peer(pki, client, peers, (REFUSED,) * 10)
    status, error, _ = await send(client, "POST", body)
    assert status == 503
    assert "refused" in error and "closed the connection" not in error, error


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_a_refusal_and_a_replica_down_do_not_fail_a_request_one_replica_answers(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str
) -> None:
    """Two replicas: one refuses the first stream unprocessed and answers the next,
    the other is down. Neither a refusal nor a failed connect sent the request
    anywhere; without the refusal the call goes to the live replica and is answered."""
    assert await one_live_replica(pki, client, peers, protocol, (REFUSED,)) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_a_replica_down_does_not_fail_a_request_the_other_answers(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str
) -> None:
    """The same without the refusal: the call goes on to the live replica."""
    assert await one_live_replica(pki, client, peers, protocol, ()) == 1


async def one_live_replica(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str, script: tuple[str, ...]
) -> int:
    """A POST to echo, whose replicas are a HostilePeer playing `script` and one that
    is down: asserts it is answered by the live one; how many times that one was asked."""
    peer = HostilePeer(pki, script)
    peers.append(peer)
    apply(client, pki, {"echo-1": await peer.start(), "echo-2": closed_port()})
    assert await call_through(client, protocol) == (200, "", b"echo-1")
    return len(peer.requests)


@pytest.mark.asyncio
@pytest.mark.parametrize("timeout", ["request", "backendRequest"])
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_a_routes_timeouts_fire_across_the_refusals(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str, timeout: str
) -> None:
    """A peer that refuses each stream 0.6 s after it came (a GOAWAY below it, so that
    it goes again at once on a new connection), under a route whose request
    timeout is 1 s (the tries would take 1.8 s: it counts from the request, not from
    each re-send) or whose per-try timeout is 0.3 s (it fires before the refusal): the
    client gets its 504, not a wait for every refusal."""
    limit = "1s" if timeout == "request" else "300ms"
    route = httproute("slow", [{"backendRefs": [ref("echo")], "timeouts": {timeout: limit}}])
    await hostile_peer(pki, client, peers, (LATE_GOAWAY,) * 5, route)
    status, error, _ = await call_through(client, protocol)
    assert status == 504, error


# ---- a malformed block from the peer ends its stream only -----------------------------


@pytest.mark.asyncio
async def test_a_malformed_response_head_is_a_502_and_the_link_goes_on(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    peer = await hostile_peer(pki, client, peers, (MALFORMED_HEAD,))
    got = await h2_call(client, b"GET")
    assert got.status == 502, (got.status, got.reset)
    assert b"malformed" in got.headers.get(b"gossamer-error", b"")
    again = await h2_call(client, b"GET")
    assert (again.status, bytes(again.body)) == (200, b"echo-1")
    assert peer.connections == 1  # the stream error did not end the link


@pytest.mark.asyncio
async def test_malformed_trailers_after_a_response_began_reset_the_apps_stream(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    """The response began (200, DATA): malformed trailers end the stream only. The
    app's stream is reset (the python and native engines pass the head and DATA on
    first; the session engine drops what it had queued), and the link goes on."""
    peer = await hostile_peer(pki, client, peers, (MALFORMED_TRAILERS,))
    got = await h2_call(client, b"GET")
    assert got.trailers is None and got.reset is not None
    again = await h2_call(client, b"GET")
    assert (again.status, bytes(again.body)) == (200, b"echo-1")
    assert peer.connections == 1


@pytest.mark.asyncio
async def test_malformed_trailers_cut_an_http1_clients_chunked_response_short(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    """HTTP/1.1 carried as a stream: the response began (200, chunked, DATA), then the
    peer's trailers are malformed. The client's response ends without its last chunk
    (it can tell it was cut short: the DATA queued for it is dropped with the stream),
    and the link goes on."""
    peer = await hostile_peer(pki, client, peers, (MALFORMED_TRAILERS,))
    data = await raw_exchange(
        client.outbound_address or ("", 0),
        b"GET /x HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    assert not body.endswith(b"0\r\n\r\n"), body  # what came before may be dropped
    assert await send(client) == (200, "", b"echo-1")
    assert peer.connections == 1


# ---- what an HTTP/1.1 app may answer reaches an HTTP/2 client -------------------------


class PathApp(LocalApp):
    """An HTTP/1.1 app answering each path with its own bytes, after its own delay,
    then closing the connection."""

    def __init__(self, answers: dict[bytes, tuple[float, bytes]]) -> None:
        super().__init__()
        self.answers = answers
        self.paths: list[bytes] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            self.paths.append(path)
            delay, answer = self.answers[path]
            await asyncio.sleep(delay)
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, KeyError):
            pass
        finally:
            writer.close()


@pytest.fixture
def multiplexed(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP/1.1 between the proxies as streams; set before the mesh makes its proxies
    (HTTP/2 from apps goes as streams either way)."""
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "1")


async def get_through(mesh: Mesh, protocol: str, path: str) -> tuple[int, bytes]:
    """GET `path` through the client proxy, HTTP/2 (curl, prior knowledge) or HTTP/1.1
    (carried as a stream): (status, body); 0 for no response."""
    status, _, body = await exchange_through(mesh, protocol, path)
    return status, body


async def exchange_through(
    mesh: Mesh, protocol: str, path: str
) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    """As get_through: (status, the response's fields by lower-case name, body)."""
    if protocol == "h1":
        data = await raw_exchange(
            mesh.outbound,
            f"GET {path} HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n".encode(),
            WAIT,
        )
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1]) if head else 0
    else:
        rc, out, _ = await curl(
            "--http2-prior-knowledge", "-m", "8", "-i", "-H", "Host: echo",
            f"{mesh.proxy_url}{path}",
        )  # fmt: skip
        head, _, body = out.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1]) if rc == 0 and head else 0
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.lower(), []).append(value.strip())
    return status, fields, body


@pytest.mark.asyncio
@pytest.mark.usefixtures("multiplexed")
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_a_304_with_a_content_length_costs_the_shared_link_nothing(
    mesh: Mesh, protocol: str
) -> None:
    """An HTTP/1.1 app's 304 Not Modified with the Content-Length of the representation
    (RFC 9110 8.6 allows it; no body follows) while another request shares the link:
    the 304 reaches the client, and the other request its answer. (On the python and
    native engines h2 took the 304 for a body cut short, InvalidBodyLengthError, and
    ended the whole link: http2._Stream knows a 304 has no body, as nghttp2 does.)"""
    _one_endpoint(mesh)
    app = PathApp(
        {
            b"/slow": (1.0, b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow"),
            b"/cached": (0.0, b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
        }
    )
    port = await app.start()
    try:
        w = mesh.workloads[0]
        w.proxy.apply_snapshot(server_snapshot(mesh.pki, w.name, port))
        slow = asyncio.ensure_future(get_through(mesh, protocol, "/slow"))
        for _ in range(100):  # the slow request is with the app
            if app.paths:
                break
            await asyncio.sleep(0.02)
        cached = await get_through(mesh, protocol, "/cached")
        slowed = await slow
    finally:
        await app.close()
    assert (cached, slowed) == ((304, b""), (200, b"slow")), (cached, slowed)


@pytest.mark.asyncio
@pytest.mark.usefixtures("multiplexed")
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_an_http1_apps_connection_specific_fields_never_reach_the_http2_hop(
    mesh: Mesh, protocol: str
) -> None:
    """An HTTP/1.1 app's response with every kind of connection-specific field (RFC
    9113 8.2.2: one left in makes the HTTP/2 block malformed, a 502 and a stream error
    for the caller), a field its Connection header names (RFC 9110 7.6.1), whitespace
    around values, obs-text, two Host fields and an empty value: the client gets the
    200, without the hop's fields."""
    _one_endpoint(mesh)
    answer = (
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: internal\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n"
        b"TE: gzip\r\nX-Padded: \t v \t\r\nX-Text: caf\xc3\xa9\r\nHost: a\r\nHost: b\r\n"
        b"X-Empty:\r\ncontent-length: 2\r\n\r\nok"
    )
    app = PathApp({b"/fields": (0.0, answer)})
    port = await app.start()
    try:
        w = mesh.workloads[0]
        w.proxy.apply_snapshot(server_snapshot(mesh.pki, w.name, port))
        status, fields, body = await exchange_through(mesh, protocol, "/fields")
        assert (status, body) == (200, b"ok")
        hop = {b"x-secret", b"keep-alive", b"proxy-connection", b"upgrade", b"te"}
        assert not hop & set(fields), fields
        assert fields[b"x-padded"] == [b"v"] and fields[b"x-text"] == [b"caf\xc3\xa9"]
        assert fields[b"host"] == [b"a", b"b"] and fields[b"x-empty"] == [b""]
        (link,) = mesh.client.peer_links.conns.values()
        assert not link.closed  # no stream error took the link with it either
    finally:
        await app.close()


# ---- what a refusal costs: accounting, a body still coming, a retry policy, memory --


def consecutive_failures(n: int) -> dict[str, object]:
    """An OutlierPolicy on echo that ejects an endpoint after `n` failed tries."""
    policy = retry_policy(consecutiveFailures=n, baseEjectionTime="30s")
    policy["kind"] = "OutlierPolicy"
    return policy


async def counted(client: DataPlane) -> tuple[float, float, float]:
    """gossamer_requests_total for echo (all, and 200s), and gossamer_retries_total."""
    _, text = await admin_get(client, "/metrics")
    page = text.decode()
    return (
        metric(page, "gossamer_requests_total", direction="outbound"),
        metric(page, "gossamer_requests_total", direction="outbound", code="200"),
        metric(page, "gossamer_retries_total"),
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_a_refused_request_sent_again_is_counted_once_and_ejects_nothing(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str
) -> None:
    """Two refusals, then an answer: one request in the golden metrics (a 200), no
    retry (the policy's budget is not spent), the endpoint's outstanding count back to
    0, and outlier detection (ejecting on a single failure) has heard no failure."""
    script = (GOAWAY_ALWAYS, GOAWAY_ALWAYS)
    peer = await hostile_peer(pki, client, peers, script, consecutive_failures(1))
    assert await call_through(client, protocol) == (200, "", b"echo-1"), peer.errors
    assert len(peer.requests) == 1 + REFUSED_RETRIES
    assert await counted(client) == (1, 1, 0)
    route = client.table.lookup_host(b"echo")
    (load,) = route.balancer.loads  # type: ignore[union-attr]
    assert load.outstanding == 0
    assert load.ejected_until <= client.loop.time()


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_refused_re_sends_hold_one_place_under_a_circuit_breaker(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str
) -> None:
    """A CircuitBreakerPolicy of one request at a time: a request refused twice and
    then answered held one place, and gave it back: the next request is admitted."""
    breaker = retry_policy(maxRequests=1)
    breaker["kind"] = "CircuitBreakerPolicy"
    peer = await hostile_peer(pki, client, peers, (GOAWAY_ALWAYS, GOAWAY_ALWAYS), breaker)
    for _ in range(2):
        assert await call_through(client, protocol) == (200, "", b"echo-1")
    assert len(peer.requests) == 2 + REFUSED_RETRIES


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_a_refusal_while_the_body_still_comes_sends_it_again_whole(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str
) -> None:
    """The peer refuses the stream on its head, while half the body is still on its
    way from the client: the request goes again once, whole, and is answered."""
    peer = await hostile_peer(pki, client, peers, (GOAWAY_ALWAYS,))
    first, rest = b"a" * 3000, b"b" * 3000
    if protocol == "h2":
        got = await h2_call(client, b"POST", first, later=rest)
        assert (got.status, bytes(got.body)) == (200, b"echo-1")
    else:
        assert client.outbound_address is not None
        reader, writer = await asyncio.open_connection(*client.outbound_address)
        try:
            writer.write(b"POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 6000\r\n"
                         b"Connection: close\r\n\r\n" + first)  # fmt: skip
            await asyncio.sleep(0.5)
            writer.write(rest)
            data = await asyncio.wait_for(reader.read(), WAIT)
        finally:
            writer.transport.abort()
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"echo-1"), data[:200]
    assert len(peer.requests) == 2
    assert peer.bodies == [first + rest]


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_a_post_refused_then_reset_after_processing_is_not_retried(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str
) -> None:
    """Under a retry policy on `reset`: the POST is refused (sent again, as it reached
    no app), then reset after the peer read it whole. The policy retries resets only
    for a request that may be sent twice; a POST may not, though its body is now kept
    for the refusal: it reached the app once after the refusal, and fails."""
    script = (GOAWAY_ALWAYS, RESET_AFTER_READING)
    peer = await hostile_peer(pki, client, peers, script, RESET_RETRY)
    status, error, _ = await call_through(client, protocol)
    assert status == 502 or status < 0, error
    assert len(peer.requests) == 2


@pytest.mark.asyncio
async def test_a_refused_pipelined_post_is_answered_in_its_turn(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    """Two POSTs pipelined on one HTTP/1.1 connection, the first refused unprocessed:
    it goes again, and both are answered, in order, each having reached the peer's app
    once."""
    peer = await hostile_peer(pki, client, peers, (GOAWAY_ALWAYS,))
    data = await raw_exchange(
        client.outbound_address or ("", 0),
        b"POST /first HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nfirst"
        b"POST /second HTTP/1.1\r\nHost: echo\r\nContent-Length: 6\r\n"
        b"Connection: close\r\n\r\nsecond",
        WAIT,
    )
    assert data.count(b"HTTP/1.1 200") == 2, data
    paths = [r[b":path"] for r in peer.requests]
    assert paths == [b"/first", b"/first", b"/second"], paths
    assert peer.bodies[-2:] == [b"first", b"second"]


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_refusals_and_a_retry_policy_together_are_bounded(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str
) -> None:
    """A peer that refuses every time, under a retry policy on `reset` (2 attempts):
    the refusals' re-sends and the policy's retries add up, and stop: the request goes
    at most 1 + REFUSED_RETRIES + 2 times, and the client gets its answer."""
    peer = await hostile_peer(pki, client, peers, (GOAWAY_ALWAYS,) * 20, RESET_RETRY)
    status, error, _ = await call_through(client, protocol, "PUT", b"idempotent")
    assert status in (503, -h2.errors.ErrorCodes.REFUSED_STREAM), error
    assert 1 + REFUSED_RETRIES <= len(peer.requests) <= 1 + REFUSED_RETRIES + 2


@pytest.mark.asyncio
async def test_the_copy_kept_for_a_refusal_is_let_go_once_the_response_came(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    peer = await hostile_peer(pki, client, peers, (HEAD_AND_HOLD,) * 4)
    reader, writer, conn = await app_h2(client.outbound_address)
    body = b"k" * 16000  # under REFUSED_REPLAY_LIMIT: kept
    heads = 0
    try:
        for sid in (1, 3, 5, 7):
            conn.send_headers(
                sid,
                [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"echo"),
                 (b":path", b"/watch"), (b"content-length", b"%d" % len(body))],
            )  # fmt: skip
            conn.send_data(sid, body, end_stream=True)
        writer.write(conn.data_to_send())
        while heads < 4:
            data = await asyncio.wait_for(reader.read(65536), WAIT)
            assert data
            for event in conn.receive_data(data):
                heads += isinstance(event, h2.events.ResponseReceived)
            writer.write(conn.data_to_send())
        (link,) = client.peer_links.conns.values()
        pairs = {half.pair for half in link.halves.values()}
        assert len(pairs) == 4 and all(p.status == 200 for p in pairs)
        held = sum(p.replay_size for p in pairs if p.replay is not None)
    finally:
        writer.transport.abort()
    assert len(peer.requests) == 4
    assert held == 0


@pytest.mark.asyncio
async def test_the_http1_body_kept_for_a_refusal_is_let_go_once_the_response_came(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    peer = await hostile_peer(pki, client, peers, (HEAD_AND_HOLD,) * 4)
    assert client.outbound_address is not None
    body = b"k" * 16000
    conns = [await asyncio.open_connection(*client.outbound_address) for _ in range(4)]
    try:
        for _, writer in conns:
            writer.write(
                b"POST /watch HTTP/1.1\r\nHost: echo\r\nContent-Length: 16000\r\n\r\n" + body
            )
        for reader, _ in conns:  # every response has begun
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert head.startswith(b"HTTP/1.1 200")
        (link,) = client.peer_links.conns.values()
        carriers = [half.pair.down.carrier for half in link.halves.values()]
        exchanges = [c.exchange for c in carriers if isinstance(c, StreamUpstream)]
        assert len(exchanges) == 4
        held = sum(len(b) for ex in exchanges if ex is not None for b in ex.replay or ())
    finally:
        for _, writer in conns:
            writer.transport.abort()
    assert len(peer.requests) == 4
    assert held == 0


# ---- malformed blocks: floods, the window, trailers (a gRPC client, an HTTP/1.1 app) --


class WindowedRawH2(RawH2):
    """RawH2 that also counts the connection window the proxy grants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.granted = 65_535  # the initial connection window (RFC 9113 6.9.2)

    def _received(self, frame: Frame) -> None:
        if isinstance(frame, WindowUpdateFrame) and frame.stream_id == 0:
            self.granted += frame.window_increment
        super()._received(frame)


MALFORMED = (b"connection", b"keep-alive")  # connection-specific (RFC 9113 8.2.2)


@pytest.mark.asyncio
@pytest.mark.parametrize("side", ["outbound", "inbound"])
async def test_a_flood_of_malformed_requests_gets_goaway_and_the_connection_closes(
    pki: Pki, side: str
) -> None:
    """More malformed header blocks in a second than CONTROL_FRAME_LIMIT: each is a
    stream error, and together they are a flood: GOAWAY ENHANCE_YOUR_CALM, the
    connection closes, and the proxy stops reading long before the end."""
    count = 4 * CONTROL_FRAME_LIMIT
    async with echo_mesh(pki) as (client, server, app):
        raw = await open_to(pki, client, server, side)
        try:
            bad = request(b"/bad", b"GET", MALFORMED)
            sent = 0
            for sid in range(1, 2 * count, 2):
                if not await raw.send(raw.headers(sid, bad)):
                    break
                sent += 1
            assert await raw.closed()
            assert raw.goaway is not None and raw.goaway[0] == ENHANCE_YOUR_CALM, raw.goaway
            assert sent < count
            assert not app.received  # none of them reached the app
        finally:
            await raw.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("side", ["outbound", "inbound"])
async def test_the_body_of_a_malformed_request_is_credited_to_the_connection(
    pki: Pki, side: str
) -> None:
    """Malformed requests followed by their bodies, more DATA in all than the
    connection's window (CONNECTION_WINDOW): the proxy resets each stream and ignores
    its DATA, but gives the window back (RFC 9113 6.9: DATA counts whatever its
    stream), so a well-formed request on the same connection is still answered."""
    async with echo_mesh(pki) as (client, server, _):
        if side == "outbound":
            assert client.outbound_address is not None
            raw = await WindowedRawH2.open(client.outbound_address)
        else:
            assert server.inbound_address is not None
            raw = await WindowedRawH2.open(
                server.inbound_address,
                inbound_context(pki),
                server_hostname=sni_for(8080, "echo-1", "default"),
            )
        try:
            body = b"m" * (STREAM_WINDOW - 16_384)
            chunks = [body[at : at + 16_384] for at in range(0, len(body), 16_384)]
            sent, sid = 0, 1
            while sent < CONNECTION_WINDOW + len(body):
                has_room = await raw.until(lambda n=sent: raw.granted - n >= len(body), 5.0)
                assert has_room, f"window stalled: {sent} sent, {raw.granted} granted"
                frames = raw.headers(sid, request(b"/bad", b"POST", MALFORMED), False)
                frames += b"".join(raw.data(sid, c, c is chunks[-1]) for c in chunks)
                assert await raw.send(frames), raw.goaway
                sent += len(body)
                sid += 2
            assert await raw.get(sid, request(b"/good")) == 200
            assert raw.goaway is None
        finally:
            await raw.close()


def grpc_unary(address: tuple[str, int]) -> grpc.StatusCode:
    """One unary gRPC call (grpcio, its own HTTP/2) through the client's outbound: the
    status the client saw."""
    host, port = address
    with grpc.insecure_channel(
        f"{host}:{port}", options=[("grpc.default_authority", "echo")]
    ) as channel:
        call = channel.unary_unary("/test.Echo/Unary")
        try:
            call(b"request", timeout=WAIT)
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.asyncio
async def test_malformed_trailers_reach_a_grpc_client_as_an_internal_error(
    pki: Pki, client: DataPlane, peers: list[HostilePeer]
) -> None:
    peer = await hostile_peer(pki, client, peers, (GRPC_MALFORMED_TRAILERS,))
    assert client.outbound_address is not None
    code = await asyncio.to_thread(grpc_unary, client.outbound_address)
    assert len(peer.requests) == 1
    assert code == grpc.StatusCode.INTERNAL, code


async def eventually(done: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Wait (bounded) until `done()` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not done() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return done()


class RecordingApp(LocalApp):
    """An HTTP/1.1 app that keeps every byte each connection brought, answers a GET
    200 at once, and a chunked request once its last chunk came."""

    def __init__(self) -> None:
        super().__init__()
        self.connections: list[bytearray] = []
        self.closed: set[int] = set()  # the connections the proxy closed, by index

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        index = len(self.connections)
        self.connections.append(got)
        try:
            while data := await reader.read(65536):
                got.extend(data)
                if got.startswith(b"GET ") or got.endswith(b"0\r\n\r\n"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except ConnectionError:
            pass
        finally:
            self.closed.add(index)
            writer.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", [b"connection", b"X-Upper"])
async def test_malformed_request_trailers_from_a_peer_abort_the_apps_exchange(
    pki: Pki, bad: bytes
) -> None:
    """A peer proxy's POST to an HTTP/1.1 app, its chunked body half sent, then
    malformed trailers: the stream is reset PROTOCOL_ERROR, the app's connection that
    carried the half body is closed (never reused: the next request's bytes would be
    read as the rest of that body), and the next request on the link is answered on a
    connection of its own."""
    app = RecordingApp()
    port = await app.start()
    try:
        async with two_proxies(pki, port) as (client, server):
            raw = await open_to(pki, client, server, "inbound")
            try:
                await raw.send(raw.headers(1, request(b"/first", b"POST"), end_stream=False))
                await raw.send(raw.data(1, b"abc"))
                assert await raw.until(
                    lambda: bool(app.connections) and b"abc" in app.connections[0]
                )
                await raw.send(raw.headers(1, [(bad, b"x")], end_stream=True))
                assert await raw.settled(1)
                assert await raw.get(3, request(b"/second")) == 200
                assert raw.resets == {1: h2.errors.ErrorCodes.PROTOCOL_ERROR}
                assert raw.goaway is None
            finally:
                await raw.close()
            first, second = app.connections
            assert first.startswith(b"POST /first") and b"/second" not in first
            assert second.startswith(b"GET /second")
            assert await eventually(lambda: 0 in app.closed)  # the proxies still run
    finally:
        await app.close()


# ---- a peer that refuses everything: a clear answer, at once --------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("move", [REFUSED, GOAWAY_ALWAYS])
async def test_a_grpc_call_a_peer_refuses_every_time_is_unavailable(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], move: str
) -> None:
    """A gRPC client (grpcio) whose call the only replica refuses every time: by a
    GOAWAY on each new connection, asked 1 + REFUSED_RETRIES times; by REFUSED_STREAM
    (a peer at its limit), once, as there is no other replica to send it to. Then the
    client reads UNAVAILABLE (which its own retry policy may send elsewhere)."""
    peer = await hostile_peer(pki, client, peers, (move,) * 10)
    assert client.outbound_address is not None
    code = await asyncio.to_thread(grpc_unary, client.outbound_address)
    assert code == grpc.StatusCode.UNAVAILABLE, code
    assert len(peer.requests) == (1 if move == REFUSED else 1 + REFUSED_RETRIES)


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h2", "h1"])
async def test_a_peer_that_takes_no_streams_is_sent_none(
    pki: Pki, client: DataPlane, peers: list[HostilePeer], protocol: str
) -> None:
    """A peer whose SETTINGS say MAX_CONCURRENT_STREAMS 0 (it refuses every stream
    before any is sent): none is opened on the link, and the client gets a 503 that
    says why, at once."""
    peer = HostilePeer(pki, (), max_streams=0)
    peers.append(peer)
    apply(client, pki, {"echo-1": await peer.start()})
    status, error, _ = await call_through(client, protocol)
    assert status == 503 and "cannot open a stream" in error, error
    assert not peer.requests and not peer.errors


# ---- a peer proxy at its in-flight cap, or draining: what refusals cost the link ---


async def get_burst(
    address: tuple[str, int],
    count: int,
    method: bytes = b"GET",
    body: bytes = b"",
    prefix: bytes = b"/burst",
) -> list[int]:
    """`count` requests at once on one HTTP/2 connection from an app, to <prefix>/<i>:
    each stream's status, or -(its RST_STREAM error code)."""
    reader, writer, conn = await app_h2(address)
    out: dict[int, int] = {}
    try:
        for i in range(count):
            sid = conn.get_next_available_stream_id()
            head = [(b":method", method), (b":scheme", b"http"), (b":authority", b"echo"),
                    (b":path", b"%s/%d" % (prefix, i))]  # fmt: skip
            if body:
                head.append((b"content-length", b"%d" % len(body)))
            conn.send_headers(sid, head, end_stream=not body)
            if body:
                conn.send_data(sid, body, end_stream=True)
        writer.write(conn.data_to_send())
        while len(out) < count and (data := await asyncio.wait_for(reader.read(65536), WAIT)):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    out[event.stream_id or 0] = int(dict(event.headers or [])[b":status"])
                elif isinstance(event, h2.events.StreamReset):
                    out[event.stream_id or 0] = -int(event.error_code or 0)
            writer.write(conn.data_to_send())
    finally:
        writer.transport.abort()
    return list(out.values())


@pytest.mark.asyncio
async def test_requests_over_a_peers_in_flight_cap_do_not_cost_the_link(mesh: Mesh) -> None:
    """One request holds the peer's only in-flight place (its app takes 3 s); meanwhile
    an app (h2load) sends 200 GETs at once on one connection, each refused by the peer
    unprocessed. They may be refused to the app, but the request in progress on the
    same link is answered."""
    _one_endpoint(mesh)
    w = mesh.workloads[0]
    cap = w.proxy.in_flight = InFlight(1, lambda: "workload default/echo-1")
    w.app.delay = 3.0
    held = asyncio.ensure_future(h2_get_status(mesh, "/held"))
    assert await eventually(lambda: w.app.requests == 1 and cap.count == 1)
    # The link's control frames so far (its SETTINGS) are counted in another second
    # than the burst's refusals.
    await asyncio.sleep(1.1)
    await h2load(mesh, requests=200, connections=1, streams=200)
    assert await held == 200
    (link,) = mesh.client.peer_links.conns.values()
    assert not link.closed


async def h2_get_status(mesh: Mesh, path: str) -> int:
    """A GET over HTTP/2 through the client proxy (curl): its status, 0 for none."""
    rc, out, _ = await curl(
        "--http2-prior-knowledge", "-m", "8", "-o", "/dev/null", "-w", "%{http_code}",
        "-H", "Host: echo", f"{mesh.proxy_url}{path}",
    )  # fmt: skip
    return int(out) if rc == 0 else 0


@pytest.mark.asyncio
async def test_posts_crossing_a_draining_peers_goaway_are_each_answered_once(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer proxy drains its link (GOAWAY) while 10 requests are with its app, and
    100 POSTs cross the GOAWAY (the client proxy reads nothing from the link for half a
    second: a round trip's delay). The peer refuses each crossing stream and counts it
    as a control frame; the client proxy, once it reads the GOAWAY, sends each again on
    a new link. The draining link is not taken for a flood: the 10 finish, and every
    POST is answered 200, having reached the app once."""
    caplog.set_level(logging.INFO, logger="gossamer.proxy")
    _one_endpoint(mesh)
    w = mesh.workloads[0]
    w.app.delay = 1.0
    held = asyncio.ensure_future(get_burst(mesh.outbound, 10))
    assert await eventually(lambda: w.app.requests == 10)
    (link,) = mesh.client.peer_links.conns.values()
    (draining,) = w.proxy.h2_connections
    link.transport.pause_reading()
    try:
        draining.go_away(h2.errors.ErrorCodes.NO_ERROR, "test: the peer drains its link")
        posts = asyncio.ensure_future(
            get_burst(mesh.outbound, 100, b"POST", b"0123456789", b"/crossing")
        )
        await asyncio.sleep(0.5)  # the POSTs cross the GOAWAY
    finally:
        link.transport.resume_reading()
    assert await held == [200] * 10
    assert await posts == [200] * 100
    paths = Counter(path for _, path, _, _ in w.app.received if path.startswith("/crossing"))
    assert len(paths) == 100 and set(paths.values()) == {1}, paths
    assert draining.closed and link.closed
    sent_again = [r for r in caplog.records if "refused the stream unprocessed" in r.message]
    assert len(sent_again) == 100  # each crossed the GOAWAY, and went again
