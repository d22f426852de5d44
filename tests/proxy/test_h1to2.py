"""HTTP/1.1 carried to a peer as HTTP/2 streams (proxy.outbound.h1to2), when the stream
goes wrong, against a real client proxy.

The replica is played by the test (`StreamPeer`): a peer's inbound listener with the
echo identity over mTLS and ALPN gossamer/h2, speaking HTTP/2 with the `h2` package,
that answers each stream as its script says: resets it before any answer, sends its
response head and then resets it, drops the whole connection, says GOAWAY refusing it,
refuses it with REFUSED_STREAM, or answers. HTTP/2 from the app meets the same peer in
the refused-stream tests (one place for what a refusal means: RFC 9113 8.1.4). So
each test says exactly when the stream went, as test_retry_hardening does for a
connection per request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
import pytest_asyncio

from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.wire.http2 import REFUSED_REPLAY_LIMIT
from gossamer.proxy.wire.limits import REFUSED_RETRIES, REPLAY_LIMIT
from gossamer.proxy.wire.tls import make_contexts
from tests.proxy.conftest import EchoApp, Pki, curl, fast_config
from tests.proxy.test_e2e_upgrade import two_proxies
from tests.proxy.test_retry_hardening import RESET_RETRY, apply, send

RESET = "reset the stream before any answer"
RESET_AFTER_HEAD = "send the response head, then reset the stream"
DROP = "drop the connection before any answer"
REFUSE = "GOAWAY that refuses the stream"
REFUSED = "reset the stream REFUSED_STREAM (not processed)"
ANSWER = "answer"
LYING_LENGTH = "answer with a content-length of 100 and no body (END_STREAM on the head)"


class PeerListener:
    """A replica's inbound listener played by a test: mTLS with the identity
    default/echo. A connection that asks for ALPN gossamer/h2 is handed to `serve`
    (what ends it badly is kept in `errors`); one that asks for HTTP/1.1 (gossamer/h1)
    is counted and closed at once."""

    def __init__(self, pki: Pki) -> None:
        self.context = make_contexts(pki.issue("default", "echo")).server
        self.connections = 0
        self.h1_connections = 0  # connections that asked for HTTP/1.1 (gossamer/h1)
        self.errors: list[str] = []  # what ended a connection badly
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "gossamer/h2":
            self.h1_connections += 1  # not spoken here: closed at once
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.serve(reader, writer)
        except (ConnectionError, OSError, h2.exceptions.H2Error) as e:
            self.errors.append(repr(e))
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class StreamPeer(PeerListener):
    """A PeerListener that answers stream number i as script[i] says, and every later
    one with 200 and its name. `max_streams`: the MAX_CONCURRENT_STREAMS its SETTINGS
    announce. A subclass adds moves in `at_start` and `at_end`."""

    validate = True  # h2 checks and normalizes what it sends

    def __init__(
        self,
        pki: Pki,
        name: str,
        script: tuple[str, ...] = (),
        max_streams: int | None = None,
    ) -> None:
        super().__init__(pki)
        self.name = name
        self.script = script
        self.max_streams = max_streams
        self.requests: list[dict[bytes, bytes]] = []  # each stream's request headers
        self.bodies: list[bytes] = []  # each answered stream's request body

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=self.validate,
                normalize_outbound_headers=self.validate,
            )
        )
        conn.initiate_connection()
        if self.max_streams is not None:
            max_streams = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
            conn.update_settings({max_streams: self.max_streams})
        writer.write(conn.data_to_send())
        bodies: dict[int, bytearray] = {}
        moves: dict[int, str] = {}
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    sid = event.stream_id
                    self.requests.append(dict(event.headers or []))
                    i = len(self.requests) - 1
                    move = moves[sid] = self.script[i] if i < len(self.script) else ANSWER
                    bodies[sid] = bytearray()
                    if await self.at_start(conn, writer, sid, move):
                        return
                elif isinstance(event, h2.events.DataReceived):
                    sid = event.stream_id
                    bodies.setdefault(sid, bytearray()).extend(event.data or b"")
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    body = bytes(bodies.pop(sid, b""))
                    if await self.at_end(conn, writer, sid, moves.get(sid, ANSWER), body):
                        return
            writer.write(conn.data_to_send())
            await writer.drain()

    async def at_start(
        self, conn: h2.connection.H2Connection, writer: asyncio.StreamWriter, sid: int, move: str
    ) -> bool:
        """A request's head came: act as `move` says. True: the connection is done."""
        if move == RESET:
            conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif move == REFUSED:
            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif move == DROP:
            writer.transport.abort()
            return True
        elif move == REFUSE:
            return await go_away(conn, writer, max(sid - 2, 0))
        return False

    async def at_end(
        self,
        conn: h2.connection.H2Connection,
        writer: asyncio.StreamWriter,
        sid: int,
        move: str,
        body: bytes,
    ) -> bool:
        """The request is whole: answer it as `move` says. True: the connection is done."""
        if move == RESET_AFTER_HEAD:
            conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"100")])
            conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif move == LYING_LENGTH:
            conn.send_headers(
                sid,
                [(b":status", b"200"), (b"content-length", b"100")],
                end_stream=True,
            )
        elif move == ANSWER:
            self.bodies.append(body)
            name = self.name.encode()
            conn.send_headers(
                sid,
                [(b":status", b"200"), (b"content-length", b"%d" % len(name))],
            )
            conn.send_data(sid, name, end_stream=True)
        return False


async def go_away(
    conn: h2.connection.H2Connection, writer: asyncio.StreamWriter, last_stream_id: int
) -> bool:
    """Say GOAWAY with `last_stream_id` and close the connection (True: it is done)."""
    conn.close_connection(last_stream_id=last_stream_id)
    writer.write(conn.data_to_send())
    await writer.drain()
    writer.close()
    return True


@pytest_asyncio.fixture
async def client(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DataPlane]:
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "1")
    proxy = DataPlane(fast_config(), on_interest=lambda key: None)
    assert proxy.config.multiplex_http1  # HTTP/1.1 to peers as streams
    try:
        await proxy.start()
        proxy.set_credentials(pki.issue("default", "web"))
        yield proxy
    finally:
        await proxy.close()


@pytest_asyncio.fixture
async def peers() -> AsyncIterator[list[StreamPeer]]:
    started: list[StreamPeer] = []
    try:
        yield started
    finally:
        for peer in started:
            await peer.close()


async def one_peer(
    pki: Pki, client: DataPlane, peers: list[StreamPeer], script: tuple[str, ...], *objects: object
) -> StreamPeer:
    peer = StreamPeer(pki, "echo-1", script)
    peers.append(peer)
    apply(client, pki, {"echo-1": await peer.start()}, *objects)
    return peer


@pytest.mark.asyncio
async def test_a_request_goes_as_a_stream_with_its_head_and_body(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    peer = await one_peer(pki, client, peers, ())
    assert await send(client, "POST", b"x" * 1000) == (200, "", b"echo-1")
    assert await send(client, "GET") == (200, "", b"echo-1")
    first, second = peer.requests
    assert first[b":method"] == b"POST" and first[b":path"] == b"/x"
    assert first[b":authority"] == b"echo" and first[b"content-length"] == b"1000"
    assert first[b"gossamer-orig-proto"] == b"HTTP/1.1"
    assert b"connection" not in first  # hop-by-hop: it stays on the client's hop
    assert peer.bodies == [b"x" * 1000, b""]
    assert second[b":method"] == b"GET" and b"content-length" not in second
    assert peer.connections == 1  # both on one connection


@pytest.mark.asyncio
@pytest.mark.parametrize("move", [RESET, DROP, REFUSE])
async def test_a_get_whose_stream_is_lost_before_any_answer_is_sent_again(
    pki: Pki, client: DataPlane, peers: list[StreamPeer], move: str
) -> None:
    """As a request on a pooled connection the peer had just closed: never answered,
    without a body, so sent again (on a new connection where the old one went)."""
    peer = await one_peer(pki, client, peers, (ANSWER, move))
    assert await send(client) == (200, "", b"echo-1")
    assert await send(client) == (200, "", b"echo-1")
    assert len(peer.requests) == 3
    assert peer.connections == (1 if move == RESET else 2)


@pytest.mark.asyncio
async def test_a_post_whose_stream_is_reset_is_not_sent_again(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    peer = await one_peer(pki, client, peers, (ANSWER, RESET))
    assert (await send(client))[0] == 200
    status, error, _ = await send(client, "POST", b"payload")
    assert status == 502
    assert "upstream reset" in error
    assert len(peer.requests) == 2


@pytest.mark.asyncio
async def test_a_post_the_peer_refused_unprocessed_is_sent_again_whole(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """A stream past the peer's GOAWAY reached no application (RFC 9113 8.1.4): the
    POST is sent again, body and all, with no retry policy, on a new connection."""
    peer = await one_peer(pki, client, peers, (ANSWER, REFUSE))
    assert (await send(client))[0] == 200
    assert await send(client, "POST", b"p" * 3000) == (200, "", b"echo-1")
    assert [r[b":method"] for r in peer.requests] == [b"GET", b"POST", b"POST"]
    assert peer.bodies == [b"", b"p" * 3000]
    assert peer.connections == 2


async def two_refusing_peers(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> tuple[StreamPeer, StreamPeer]:
    """Two replicas of echo, each refusing its first stream REFUSED_STREAM (at its
    limit) and answering the next."""
    one, two = StreamPeer(pki, "echo-1", (REFUSED,)), StreamPeer(pki, "echo-2", (REFUSED,))
    peers.extend((one, two))
    apply(client, pki, {"echo-1": await one.start(), "echo-2": await two.start()})
    return one, two


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h1", "h2"])
async def test_a_post_refused_by_a_replica_at_its_limit_goes_to_another(
    pki: Pki, client: DataPlane, peers: list[StreamPeer], protocol: str
) -> None:
    """REFUSED_STREAM: the replica is at its limit of streams. The POST goes again, body
    and all, to another replica, which refuses it too, then back to the first, which
    answers: three tries (1 + REFUSED_RETRIES), the app reached once."""
    one, two = await two_refusing_peers(pki, client, peers)
    body = b"r" * 3000
    if protocol == "h1":
        status, error, got = await send(client, "POST", body)
        assert status == 200, error
    else:
        status, got = await h2_post(client, body)
        assert status == 200
    answered = one if got == b"echo-1" else two
    assert answered.bodies == [body]
    assert len(one.requests) + len(two.requests) == 1 + REFUSED_RETRIES
    assert len(answered.requests) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["h1", "h2"])
async def test_a_post_refused_by_the_only_replica_at_its_limit_is_refused_to_the_client(
    pki: Pki, client: DataPlane, peers: list[StreamPeer], protocol: str
) -> None:
    """With no other replica, a REFUSED_STREAM is not sent again to the busy one (each
    would cost it a refusal more): an HTTP/1.1 client gets a 503 that says so, an
    HTTP/2 client the REFUSED_STREAM, for its own retry policy."""
    peer = await one_peer(pki, client, peers, (REFUSED,))
    if protocol == "h1":
        status, error, _ = await send(client, "POST", b"p")
        assert status == 503
        assert "refused the request unprocessed" in error and "limit" in error, error
    else:
        assert await h2_post(client, b"p") == (-h2.errors.ErrorCodes.REFUSED_STREAM, b"")
    assert len(peer.requests) == 1


@pytest.mark.asyncio
async def test_a_fields_surrounding_whitespace_does_not_reach_the_peer(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """An HTTP/1.1 parser leaves whitespace at a value's end (RFC 9110 5.5: not part of
    it); in HTTP/2 it makes the block malformed (RFC 9113 8.2.1), which the peer would
    refuse. The stream carries the value without it."""
    peer = await one_peer(pki, client, peers, ())
    assert client.outbound_address is not None
    reader, writer = await asyncio.open_connection(*client.outbound_address)
    try:
        writer.write(
            b"GET /x HTTP/1.1\r\nHost: echo\r\nX-Sloppy: v \t\r\nConnection: close\r\n\r\n"
        )
        data = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.transport.abort()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    (request,) = peer.requests
    assert request[b"x-sloppy"] == b"v"


@pytest.mark.asyncio
async def test_a_peer_that_refuses_every_time_is_asked_a_bounded_number_of_times(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    peer = await one_peer(pki, client, peers, (REFUSE,) * 10)
    status, error, _ = await send(client, "POST", b"p")
    assert status == 503
    assert "refused the request unprocessed" in error and "GOAWAY" in error, error
    assert len(peer.requests) == 1 + REFUSED_RETRIES


@pytest.mark.asyncio
async def test_a_refused_post_too_big_to_keep_is_not_sent_again(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """A body over REPLAY_LIMIT is not kept: once part of it went on the refused stream
    it cannot be sent again, and the client gets a 503 that says it was refused."""
    peer = await one_peer(pki, client, peers, (REFUSE,))
    status, error, _ = await send(client, "POST", b"p" * (REPLAY_LIMIT + 1))
    assert status == 503
    assert "refused the request unprocessed" in error, error
    assert len(peer.requests) == 1


async def h2_post(client: DataPlane, body: bytes) -> tuple[int, bytes]:
    """One HTTP/2 POST from the app through the client's outbound, by the `h2` package
    (no retry of its own, where curl sends a refused stream again itself): (status,
    body), or (-error code, b"") for a reset stream."""
    assert client.outbound_address is not None
    reader, writer = await asyncio.open_connection(*client.outbound_address)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    conn.send_headers(
        1,
        [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"echo"),
         (b":path", b"/x"), (b"content-length", b"%d" % len(body))],
    )  # fmt: skip
    for at in range(0, len(body), 16384):  # within the initial window (65,535)
        conn.send_data(1, body[at : at + 16384], end_stream=at + 16384 >= len(body))
    writer.write(conn.data_to_send())
    status, got = 0, bytearray()
    try:
        while data := await asyncio.wait_for(reader.read(65536), 10.0):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers or [])[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    got.extend(event.data or b"")
                elif isinstance(event, h2.events.StreamEnded):
                    return status, bytes(got)
                elif isinstance(event, h2.events.StreamReset):
                    return -int(event.error_code or 0), b""
            writer.write(conn.data_to_send())
    finally:
        writer.transport.abort()
    return status, bytes(got)


@pytest.mark.asyncio
async def test_an_http2_post_the_peer_refused_unprocessed_is_sent_again_whole(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """The same for HTTP/2 from the app (proxy.outbound.h2): no retry policy, yet the
    refused stream goes again with its DATA; the app's stream never sees the refusal."""
    peer = await one_peer(pki, client, peers, (ANSWER, REFUSE))
    assert (await send(client))[0] == 200
    assert await h2_post(client, b"q" * 3000) == (200, b"echo-1")
    assert [r[b":method"] for r in peer.requests] == [b"GET", b"POST", b"POST"]
    assert peer.bodies == [b"", b"q" * 3000]


@pytest.mark.asyncio
async def test_an_http2_body_over_what_is_kept_for_a_refusal_is_refused_to_the_app(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """Without a retry policy, only REFUSED_REPLAY_LIMIT of a body is kept (a
    connection's streams hold at most its window in copies): a larger one cannot go
    again, and the app's stream is refused in turn, for its client to send again."""
    peer = await one_peer(pki, client, peers, (ANSWER, REFUSE))
    assert (await send(client))[0] == 200
    body = b"q" * (REFUSED_REPLAY_LIMIT + 1)
    assert await h2_post(client, body) == (-h2.errors.ErrorCodes.REFUSED_STREAM, b"")
    assert len(peer.requests) == 2


@pytest.mark.asyncio
async def test_an_http2_stream_the_peer_refuses_every_time_is_refused_to_the_app(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """After REFUSED_RETRIES, the app's stream is reset REFUSED_STREAM in turn: it was
    processed nowhere, and the app's client may send it elsewhere."""
    peer = await one_peer(pki, client, peers, (REFUSE,) * 10)
    assert await h2_post(client, b"q") == (-h2.errors.ErrorCodes.REFUSED_STREAM, b"")
    assert len(peer.requests) == 1 + REFUSED_RETRIES


@pytest.mark.asyncio
async def test_a_retry_policy_on_reset_sends_a_put_again_whole(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """A retry policy on `reset` sends an idempotent request again, body and all, on
    the first try's stream being reset before any answer (its body was kept)."""
    peer = await one_peer(pki, client, peers, (RESET,), RESET_RETRY)
    got = await send(client, "PUT", b"y" * 5000)
    assert got == (200, "", b"echo-1"), peer.errors
    assert len(peer.requests) == 2
    assert peer.bodies == [b"y" * 5000]


@pytest.mark.asyncio
async def test_a_retry_sends_a_put_with_expect_100_continue_again_and_one_100_only(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """This hop answers `Expect: 100-continue` itself: the body the client sends after
    the 100 is kept like any other, and a second try neither waits for a second 100 nor
    sends the client one (a client may take it for the final answer's place)."""
    peer = await one_peer(pki, client, peers, (RESET,), RESET_RETRY)
    assert client.outbound_address is not None
    reader, writer = await asyncio.open_connection(*client.outbound_address)
    try:
        writer.write(
            b"PUT /x HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"y" * 5000)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 10.0)
    finally:
        writer.transport.abort()
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == b"echo-1"
    assert len(peer.requests) == 2
    assert peer.bodies == [b"y" * 5000]


@pytest.mark.asyncio
async def test_a_response_cut_short_by_a_reset_is_not_sent_again(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """The head came, then the stream was reset: the request may have been acted on, and
    the client's response cannot be completed, so its connection is closed after the
    head (the Content-Length says what is missing)."""
    peer = await one_peer(pki, client, peers, (RESET_AFTER_HEAD,), RESET_RETRY)
    assert client.outbound_address is not None
    reader, writer = await asyncio.open_connection(*client.outbound_address)
    try:
        writer.write(b"GET /x HTTP/1.1\r\nHost: echo\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10.0)  # until the proxy closes
    finally:
        writer.transport.abort()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 100" in head.lower()
    assert len(body) < 100
    assert len(peer.requests) == 1


@pytest.mark.asyncio
async def test_chunked_and_upgrade_requests_take_a_connection_of_their_own(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """A chunked body and an Upgrade are not carried as streams (Exchange._streamable):
    they go over HTTP/1.1 (ALPN gossamer/h1), which this replica does not speak, so
    they fail, while a plain request to it on the same proxy is a stream and succeeds."""
    peer = await one_peer(pki, client, peers, ())
    assert client.outbound_address is not None
    for extra in (
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    ):
        reader, writer = await asyncio.open_connection(*client.outbound_address)
        try:
            body = b"3\r\nabc\r\n0\r\n\r\n" if b"chunked" in extra else b""
            writer.write(b"POST /x HTTP/1.1\r\nHost: echo\r\n" + extra + b"\r\n" + body)
            data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        finally:
            writer.transport.abort()
        assert data.startswith(b"HTTP/1.1 502"), data[:200]
    assert peer.requests == []
    assert peer.h1_connections >= 2
    assert await send(client) == (200, "", b"echo-1")
    assert len(peer.requests) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("app_protocol", [None, "http2"])
async def test_a_stream_reaches_an_http1_app_as_the_http1_request_it_was(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, app_protocol: str | None
) -> None:
    """Between two real proxies, the peer hands a request carried as a stream to the
    app as HTTP/1.1, also on a port declared `http2` (as an HTTP/1.1 request from the
    peer would go), with its body."""
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "1")
    app = EchoApp("echo-1")
    port = await app.start()
    try:
        async with two_proxies(pki, port, app_protocol) as (client, server):
            assert client.config.multiplex_http1
            rc, out, err = await curl(
                "-H", "Host: echo", "--data-binary", "hello", f"http://127.0.0.1:{client.outbound_address[1]}/x"
            )  # fmt: skip
            assert rc == 0, err
            body = json.loads(out)
            assert body["version"] == "HTTP/1.1" and body["method"] == "POST"
            assert body["body_length"] == 5
            assert client.peer_links.conns  # it went as a stream
            assert server.h2_connections
    finally:
        await app.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("streams", [False, True], ids=["connection", "stream"])
async def test_an_http1_request_saying_grpc_reaches_an_http1_app_either_way(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, streams: bool
) -> None:
    """An HTTP/1.1 request whose content-type says gRPC (gRPC-Web's proxies, a client's
    mistake) goes to an HTTP/1.1 app as HTTP/1.1 whichever way it travels between the
    proxies: the peer used to answer one carried as a stream with gRPC UNIMPLEMENTED."""
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "1" if streams else "0")
    app = EchoApp("echo-1")
    port = await app.start()
    try:
        async with two_proxies(pki, port, None) as (client, _):
            assert client.config.multiplex_http1 is streams
            rc, out, err = await curl(
                "-H", "Host: echo", "-H", "content-type: application/grpc",
                "--data-binary", "hello", f"http://127.0.0.1:{client.outbound_address[1]}/x",
            )  # fmt: skip
            assert rc == 0, err
            body = json.loads(out)
            assert body["version"] == "HTTP/1.1" and body["method"] == "POST"
            assert body["body_length"] == 5
            assert bool(client.peer_links.conns) is streams
    finally:
        await app.close()


@pytest.mark.asyncio
async def test_a_response_that_ends_short_of_its_length_is_a_502(
    pki: Pki, client: DataPlane, peers: list[StreamPeer]
) -> None:
    """A peer's head that says 100 bytes follow and ends the stream: the client gets a
    502 (the nghttp2 engine ends the connection over it, h1to2 refuses it on the others),
    as when an HTTP/1.1 upstream closes short, never a head promising a body that will not
    come; the next request is answered."""
    await one_peer(pki, client, peers, (LYING_LENGTH,))
    status, error, _ = await send(client)
    assert status == 502
    assert "upstream reset" in error or "content-length" in error
    assert await send(client) == (200, "", b"echo-1")
