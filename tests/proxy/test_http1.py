"""The HTTP/1.1 readers and framing decisions, fed bytes directly (no sockets)."""

from __future__ import annotations

import pytest

from gossamer.proxy.wire.http1 import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    INBOUND_REQUEST_KINDS,
    OUTBOUND_REQUEST_KINDS,
    Headers,
    ProtocolError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    chunked_end,
    error_response,
    request_framing,
    request_head_bytes,
    response_framing,
)


class Requests:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []
        self.bodies: list[bytes] = []
        self.ends: list[Headers | None] = []
        self.tunnel = b""

    def request_head(self, head: RequestHead) -> None:
        self.heads.append(head)
        self.bodies.append(b"")

    def request_body(self, data: bytes) -> None:
        self.bodies[-1] += data

    def request_end(self, trailers: Headers | None) -> None:
        self.ends.append(trailers)

    def request_upgrade(self, data: bytes) -> None:
        self.tunnel += data


class Responses:
    def __init__(self) -> None:
        self.heads: list[ResponseHead] = []
        self.body = b""
        self.ends = 0
        self.tunnel: bytes | None = None

    def response_head(self, head: ResponseHead) -> None:
        self.heads.append(head)

    def response_body(self, data: bytes) -> None:
        self.body += data

    def response_end(self, trailers: Headers | None) -> None:
        self.ends += 1

    def response_upgrade(self, data: bytes) -> None:
        self.tunnel = data


def read_requests(data: bytes, kinds: dict[bytes, int] = OUTBOUND_REQUEST_KINDS) -> Requests:
    got = Requests()
    RequestReader(got, kinds).feed(data)
    return got


def test_a_simple_request_is_read_whole() -> None:
    got = read_requests(b"GET /a?b=1 HTTP/1.1\r\nHost: echo\r\nAccept: */*\r\n\r\n")
    (head,) = got.heads
    assert (head.method, head.target, head.host, head.http11, head.keep_alive) == (
        b"GET",
        b"/a?b=1",
        b"echo",
        True,
        True,
    )
    assert head.headers == [(b"Accept", b"*/*")]
    assert head.body == BODY_NONE
    assert got.ends == [None]


def test_hop_by_hop_headers_and_those_connection_names_are_removed() -> None:
    got = read_requests(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\n"
        b"X-Secret: 1\r\nTE: trailers\r\nTrailer: x\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n"
        b"Proxy-Authorization: Basic abc\r\nX-Kept: yes\r\n\r\n"
    )
    assert got.heads[0].headers == [(b"X-Kept", b"yes")]


def test_the_local_app_cannot_set_the_source_service() -> None:
    got = read_requests(b"GET / HTTP/1.1\r\nHost: a\r\ngossamer-src-service: evil\r\n\r\n")
    assert got.heads[0].headers == []
    assert got.heads[0].src_service is None


def test_inbound_reads_the_source_service_and_forwarded_for() -> None:
    got = read_requests(
        b"GET / HTTP/1.1\r\nHost: a\r\ngossamer-src-service: web\r\n"
        b"X-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\n\r\n",
        INBOUND_REQUEST_KINDS,
    )
    head = got.heads[0]
    assert head.src_service == b"web"
    assert head.forwarded_for == b"1.2.3.4, 5.6.7.8"
    assert head.headers == []


def test_a_chunked_body_is_decoded_with_its_trailers() -> None:
    got = read_requests(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n"
    )
    assert got.heads[0].body == BODY_CHUNKED
    assert got.bodies == [b"hello world"]
    assert got.ends == [[(b"X-Checksum", b"1")]]


def test_a_body_split_across_reads_arrives_in_order() -> None:
    got = Requests()
    reader = RequestReader(got, OUTBOUND_REQUEST_KINDS)
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
    assert got.heads[0].content_length == b"10"
    assert got.bodies == [b"0123456789"]


def test_pipelined_requests_are_read_in_order() -> None:
    got = read_requests(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [h.target for h in got.heads] == [b"/1", b"/2"]


def test_http10_is_not_kept_alive_unless_asked() -> None:
    plain = read_requests(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").heads[0]
    asked = read_requests(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").heads[0]
    assert [(h.http11, h.keep_alive) for h in (plain, asked)] == [(False, False), (False, True)]


def test_expect_continue_is_taken_by_the_proxy() -> None:
    got = read_requests(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
    )
    assert got.heads[0].expect_continue
    assert got.heads[0].headers == []


def test_an_upgrade_request_is_forwarded_as_a_plain_one_and_reading_goes_on() -> None:
    got = read_requests(
        b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAA\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [h.target for h in got.heads] == [b"/1", b"/2"]
    assert got.heads[0].headers == []


MALFORMED = [
    ("bad request line", b"GET /\r\n\r\n", 400),
    ("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    (
        "conflicting content lengths",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
    ),
    (
        "content length with transfer encoding",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "a non-chunked transfer encoding",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    ("a bad content length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("obsolete line folding", b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 400),
    (
        "a bad chunk size",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    ("a header over 64 KiB", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (
        "many headers over 64 KiB",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Y: 0123456789\r\n" * 6000 + b"\r\n",
        431,
    ),
    ("a header line that never ends", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 300000, 431),
    ("HTTP/2 in an HTTP/1 request line", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
]


@pytest.mark.parametrize(
    ("data", "status"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_a_malformed_request_is_refused_with_a_status(data: bytes, status: int) -> None:
    reader = RequestReader(Requests(), OUTBOUND_REQUEST_KINDS)
    with pytest.raises(ProtocolError) as e:
        for i in range(0, len(data), 65536):
            reader.feed(data[i : i + 65536])
    assert e.value.status == status


def test_a_response_with_content_length_is_read() -> None:
    got = Responses()
    reader = ResponseReader(got)
    reader.set_handler(got, head_only=False)
    reader.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\nX: y\r\n\r\nok")
    (head,) = got.heads
    assert (head.status, head.reason, head.body, head.keep_alive) == (
        201,
        b"Created",
        BODY_LENGTH,
        False,
    )
    assert head.headers == [(b"X", b"y")]
    assert (got.body, got.ends) == (b"ok", 1)


def test_a_response_to_head_has_no_body_whatever_its_length_says() -> None:
    got = Responses()
    reader = ResponseReader(got)
    reader.set_handler(got, head_only=True)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert got.ends == 1
    assert got.heads[0].content_length == b"1000"
    # The reader is usable for the next response on the same connection.
    reader.set_handler(got, head_only=False)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert (got.ends, got.body) == (2, b"x")


def test_a_close_delimited_response_ends_at_eof() -> None:
    got = Responses()
    reader = ResponseReader(got)
    reader.set_handler(got, head_only=False)
    reader.feed(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    assert got.heads[0].body == BODY_UNTIL_CLOSE
    assert got.ends == 0
    assert reader.eof()
    assert (got.body, got.ends) == (b"until the end", 1)


def test_interim_responses_come_before_the_final_one() -> None:
    got = Responses()
    reader = ResponseReader(got)
    reader.set_handler(got, head_only=False)
    reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert [h.status for h in got.heads] == [100, 204]
    assert got.ends == 2


def test_a_malformed_response_is_a_bad_gateway() -> None:
    got = Responses()
    reader = ResponseReader(got)
    reader.set_handler(got, head_only=False)
    with pytest.raises(ProtocolError) as e:
        reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert e.value.status == 502


def _response(body: int, *, cl: bytes | None = None, te: bytes | None = None) -> ResponseHead:
    head = ResponseHead(200, b"OK", [])
    head.body, head.content_length, head.transfer_encoding = body, cl, te
    return head


FRAMING = [
    (
        "length stays length",
        _response(BODY_LENGTH, cl=b"5"),
        True,
        BODY_LENGTH,
        b"content-length: 5\r\n",
    ),
    (
        "chunked stays chunked",
        _response(BODY_CHUNKED, te=b"chunked"),
        True,
        BODY_CHUNKED,
        b"transfer-encoding: chunked\r\n",
    ),
    (
        "close-delimited becomes chunked",
        _response(BODY_UNTIL_CLOSE),
        True,
        BODY_CHUNKED,
        b"transfer-encoding: chunked\r\n",
    ),
    (
        "chunked to HTTP/1.0 is close-delimited",
        _response(BODY_CHUNKED, te=b"chunked"),
        False,
        BODY_UNTIL_CLOSE,
        b"",
    ),
    (
        "other codings are kept",
        _response(BODY_CHUNKED, te=b"gzip, chunked"),
        True,
        BODY_CHUNKED,
        b"transfer-encoding: gzip, chunked\r\n",
    ),
    (
        "no body keeps its length",
        _response(BODY_NONE, cl=b"7"),
        True,
        BODY_NONE,
        b"content-length: 7\r\n",
    ),
]


@pytest.mark.parametrize(
    ("head", "http11", "mode", "header"), [c[1:] for c in FRAMING], ids=[c[0] for c in FRAMING]
)
def test_response_framing_towards_the_client(
    head: ResponseHead, http11: bool, mode: int, header: bytes
) -> None:
    assert response_framing(head, http11) == (mode, header)


def test_request_framing_is_written_again() -> None:
    got = read_requests(
        b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert request_framing(got.heads[0]) == b"transfer-encoding: chunked\r\n"
    assert (
        request_head_bytes(b"GET", b"/", b"a", [(b"X", b"1")], b"extra: 2\r\n")
        == b"GET / HTTP/1.1\r\nhost: a\r\nX: 1\r\nextra: 2\r\n\r\n"
    )
    assert chunked_end([(b"T", b"1")]) == b"0\r\nT: 1\r\n\r\n"


def test_an_error_response_carries_its_reason() -> None:
    data = error_response(502, "connect refused by 10.0.0.1:4143", close=True)
    assert data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"gossamer-error: connect refused by 10.0.0.1:4143\r\n" in data
    assert b"connection: close\r\n" in data
    assert data.endswith(b"\r\n\r\nconnect refused by 10.0.0.1:4143\n")


# ---- tunnels (Exchange._open_tunnel) -------------------------------------------------


def test_a_websocket_upgrade_is_a_tunnel_request_and_what_follows_is_the_tunnels() -> None:
    reader = RequestReader(got := Requests(), OUTBOUND_REQUEST_KINDS)
    reader.feed(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: k\r\n\r\n\x81\x00"
    )
    reader.feed(b"GET / HTTP/1.1\r\n\r\n")
    (head,) = got.heads
    assert (head.tunnel, head.upgrade, head.keep_alive) == (True, b"websocket", False)
    assert head.headers == [(b"Sec-WebSocket-Key", b"k")]
    assert request_framing(head) == b"connection: upgrade\r\nupgrade: websocket\r\n"
    assert got.tunnel == b"\x81\x00GET / HTTP/1.1\r\n\r\n"


def test_connect_is_a_tunnel_request_with_its_authority_as_target() -> None:
    got = read_requests(b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\nhello")
    (head,) = got.heads
    assert (head.method, head.target, head.tunnel, head.upgrade) == (
        b"CONNECT",
        b"echo:80",
        True,
        None,
    )
    assert request_framing(head) == b""
    assert got.tunnel == b"hello"


def test_a_101_hands_the_bytes_after_it_to_the_tunnel() -> None:
    reader = ResponseReader(got := Responses())
    reader.feed(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: x\r\n\r\n\x81\x02hi"
    )
    assert [h.status for h in got.heads] == [101]
    assert got.heads[0].headers == [(b"Sec-WebSocket-Accept", b"x")]
    assert got.tunnel == b"\x81\x02hi"


def test_a_2xx_to_connect_hands_the_bytes_after_its_head_to_the_tunnel() -> None:
    reader = ResponseReader(got := Responses())
    reader.expect_connect()
    reader.feed(b"HTTP/1.1 200 Connection Established\r\n")
    assert got.heads == []
    reader.feed(b"X: y\r\n\r\nserver speaks first")
    assert [h.status for h in got.heads] == [200]
    assert got.tunnel == b"server speaks first"


def test_a_refused_connect_is_read_as_a_plain_response() -> None:
    reader = ResponseReader(got := Responses())
    reader.expect_connect()
    reader.feed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    assert [h.status for h in got.heads] == [403]
    assert (got.body, got.ends, got.tunnel) == (b"no", 1, None)
