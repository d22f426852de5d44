"""`_h1native` against llhttp: the same bytes, the same calls (decision 0115).

The C path reads a plain keep-alive message whole in one call and declines everything
else to llhttp. Each test feeds the same bytes to a reader that may use it and to one
that may not, and requires the handler to see the same calls with the same values (or the
same refusal); a spy says whether the C path took each message, so that what is meant to
be read in C is, and what is meant for llhttp (every refusal, every unusual framing) is not.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from gossamer.proxy.wire import http1
from gossamer.proxy.wire.http1 import (
    INBOUND_REQUEST_KINDS,
    OUTBOUND_REQUEST_KINDS,
    RESPONSE_KINDS,
    Headers,
    ProtocolError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
)
from gossamer.proxy.wire.limits import MAX_HEAD_SIZE, MAX_HEADERS

Event = tuple[Any, ...]


def test_the_extension_is_built_and_used() -> None:
    # `make test` and .ci/run install a C compiler and Python's headers (setup.py builds
    # the extension); without them the readers fall back to llhttp alone, and every test
    # here would compare llhttp with itself.
    assert http1._native is not None, "gossamer.proxy.wire._h1native is not built"
    assert http1.native
    assert "_h1native" in http1.reader_description()


class Recorder:
    """A request and response handler that writes down every call it gets."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def request_head(self, head: RequestHead) -> None:
        self.events.append(("head", *(getattr(head, s) for s in RequestHead.__slots__)))

    def request_body(self, data: bytes) -> None:
        self.events.append(("body", bytes(data)))

    def request_end(self, trailers: Headers | None) -> None:
        self.events.append(("end", trailers))

    def request_upgrade(self, data: bytes) -> None:
        self.events.append(("upgrade", bytes(data)))

    def response_head(self, head: ResponseHead) -> None:
        self.events.append(("head", *(getattr(head, s) for s in ResponseHead.__slots__)))

    def response_body(self, data: bytes) -> None:
        self.events.append(("body", bytes(data)))

    def response_end(self, trailers: Headers | None) -> None:
        self.events.append(("end", trailers))

    def response_upgrade(self, data: bytes) -> None:
        self.events.append(("upgrade", bytes(data)))


class Spy:
    """Stands in for the extension module: counts the messages the C path took."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.taken = 0
        self.declined = 0

    def _count(self, parsed: Any) -> Any:
        if parsed is None:
            self.declined += 1
        else:
            self.taken += 1
        return parsed

    def parse_request(self, *args: Any) -> Any:
        return self._count(self.real.parse_request(*args))

    def parse_response(self, *args: Any) -> Any:
        return self._count(self.real.parse_response(*args))


@contextmanager
def readers(native: bool) -> Iterator[None]:
    before = http1.native
    http1.native = native
    try:
        yield
    finally:
        http1.native = before


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    s = Spy(http1._native)
    monkeypatch.setattr(http1, "_native", s)
    return s


def read_requests(chunks: list[bytes], kinds: dict[bytes, int], native: bool) -> list[Event]:
    recorder = Recorder()
    with readers(native):
        reader = RequestReader(recorder, kinds)
    for chunk in chunks:
        try:
            reader.feed(chunk)
        except ProtocolError as e:
            recorder.events.append(("refused", type(e).__name__, e.status, str(e)))
            break
    return recorder.events


def read_responses(
    chunks: list[bytes], native: bool, head_only: bool = False, connect: bool = False
) -> list[Event]:
    recorder = Recorder()
    with readers(native):
        reader = ResponseReader(recorder)
    reader.set_handler(recorder, head_only)
    if connect:
        reader.expect_connect()
    for chunk in chunks:
        try:
            reader.feed(chunk)
        except ProtocolError as e:
            recorder.events.append(("refused", e.status, str(e)))
            break
    return recorder.events


def same_requests(
    chunks: list[bytes], spy: Spy, kinds: dict[bytes, int] = OUTBOUND_REQUEST_KINDS
) -> list[Event]:
    spy.taken = 0
    native = read_requests(chunks, kinds, True)
    taken = spy.taken
    spy.taken = 0
    assert native == read_requests(chunks, kinds, False), chunks
    assert spy.taken == 0  # the llhttp reader never asked the extension
    spy.taken = taken
    return native


def same_responses(chunks: list[bytes], spy: Spy, **how: bool) -> list[Event]:
    spy.taken = 0
    native = read_responses(chunks, True, **how)
    taken = spy.taken
    spy.taken = 0
    assert native == read_responses(chunks, False, **how), chunks
    assert spy.taken == 0
    spy.taken = taken
    return native


GET = b"GET / HTTP/1.1\r\nHost: echo.bench\r\n\r\n"
NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 05 Dec 2026 06:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n"
    b"Hello, world!"
)


def request(*lines: bytes, start: bytes = b"GET / HTTP/1.1", body: bytes = b"") -> bytes:
    return start + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def response(*lines: bytes, status: bytes = b"200 OK", body: bytes = b"") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\n" + body


# What the C path reads itself: (request, messages it takes).
READ_IN_C = [
    GET,
    request(b"Host: a", b"User-Agent: curl/8.5.0", b"Accept: */*"),
    request(b"host: a", b"Connection: keep-alive", b"Keep-Alive: timeout=5", b"TE: trailers"),
    request(b"Host: a", b"CONNECTION: Keep-Alive"),
    request(b"Host: a", b"Proxy-Connection: keep-alive"),
    request(b"Host: a", b"Content-Length: 5", start=b"POST /x?y=1 HTTP/1.1", body=b"hello"),
    request(b"Host: a", b"Content-Length: 0", start=b"PUT /x HTTP/1.1"),
    request(b"Host: a", b"Content-Length: 007", start=b"PATCH /x HTTP/1.1", body=b"1234567"),
    request(b"Host: a", start=b"DELETE /a/b HTTP/1.1"),
    request(b"Host: a", start=b"HEAD / HTTP/1.1"),
    request(b"Host: a", start=b"OPTIONS /x HTTP/1.1"),
    request(b"Host: a", start=b"GET /a\"<>{}|\\^`~!$&'()*+,;=:@%20#f HTTP/1.1"),
    request(b"Host: a", b"X: trailing  ", b"Y:\t\tleading", b"Z:", b"W: \t ", b"V: a\tb"),
    request(b"Host: a", b"Proxy-Authorization: secret", b"gossamer-src-service: forged"),
    request(b"Host: a", b"A-b_c.d!e#f$g%h&i'j*k+l^m`n|o~p: token name"),
    request(b"Host: a", b"X-Forwarded-For: 1.2.3.4", b"x-forwarded-for: 5.6.7.8"),
    request(b"Host: a", b"x" * 70 + b": a name longer than any kind"),
    request(*(b"F%d: v" % i for i in range(MAX_HEADERS))),
    request(b"Host: a", b"Gossamer-Src-Service: a", b"GOSSAMER-SRC-SERVICE: b"),
]

# What it leaves to llhttp: each is refused by llhttp or needs what only llhttp has.
READ_BY_LLHTTP = [
    request(b"Host: a", b"Connection: close"),
    request(b"Host: a", b"Connection: keep-alive, close"),
    request(b"Host: a", b"Connection: x-private"),
    request(b"Host: a", b"Connection: keep-alive "),
    request(b"Host: a", b"Proxy-Connection: close"),
    request(b"Host: a", b"Connection: upgrade", b"Upgrade: websocket"),
    request(b"Host: a", b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings"),
    request(b"Host: a", b"Transfer-Encoding: chunked", start=b"POST / HTTP/1.1", body=b"0\r\n\r\n"),
    request(b"Host: a", b"Transfer-Encoding: gzip", start=b"POST / HTTP/1.1"),
    request(b"Host: a", b"Content-Length: 1", b"Transfer-Encoding: chunked", body=b"x"),
    request(b"Host: a", b"Content-Length: 1", b"Content-Length: 1", body=b"x"),
    request(b"Host: a", b"Content-Length: 1", b"Content-Length: 2", body=b"xy"),
    request(b"Host: a", b"Content-Length: +1", body=b"x"),
    request(b"Host: a", b"Content-Length: 1 ", body=b"x"),
    request(b"Host: a", b"Content-Length: 0x1", body=b"x"),
    request(b"Host: a", b"Content-Length: 1234567890123456789"),
    request(b"Host: a", b"Content-Length: 10", body=b"short"),
    request(b"Host: a", b"Host: b"),
    request(b"Host: a", b"Expect: 100-continue", b"Content-Length: 1", body=b"x"),
    request(b"Host: a", b"Expect: something-else"),
    request(b"Host: a", start=b"GET / HTTP/1.0"),
    request(b"Host: a", b"Connection: keep-alive", start=b"GET / HTTP/1.0"),
    request(b"Host: a", start=b"GET / HTTP/2.0"),
    request(b"Host: a", start=b"GET /"),
    request(b"Host: a", start=b"GET http://a/ HTTP/1.1"),
    request(b"Host: a", start=b"OPTIONS * HTTP/1.1"),
    request(b"Host: a:443", start=b"CONNECT a:443 HTTP/1.1"),
    request(b"Host: a", start=b"get / HTTP/1.1"),
    request(b"Host: a", start=b"PURGE / HTTP/1.1"),
    request(b"Host: a", start=b"GET  / HTTP/1.1"),
    request(b"Host: a", start=b"GET / HTTP/1.1 "),
    request(b"Host: a", start=b"GET /\x7f HTTP/1.1"),
    request(b"Host: a", b"X: a", b" folded"),
    request(b"Host: a", b"X : a"),
    request(b"Host: a", b": empty name"),
    request(b"Host: a", b"X a"),
    request(b"Host: a", b"X: nul\x00"),
    request(b"Host: a", b"X: del\x7f"),
    request(b"Host: a", b"X: obs-text \xc3\xa9"),
    request(b"Host: a", b"X: bare\rCR"),
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    request(*(b"F%d: v" % i for i in range(MAX_HEADERS + 1))),
    request(b"Host: a", b"X: " + b"v" * MAX_HEAD_SIZE),
    b"GET / HTTP/1.1\r\nHost: a\r\n",
]


@pytest.mark.parametrize("message", READ_IN_C, ids=range(len(READ_IN_C)))
@pytest.mark.parametrize(
    "kinds",
    [OUTBOUND_REQUEST_KINDS, INBOUND_REQUEST_KINDS],
    ids=["outbound", "inbound"],
)
def test_a_plain_request_is_read_in_c_as_llhttp_reads_it(
    message: bytes, kinds: dict[bytes, int], spy: Spy
) -> None:
    events = same_requests([message], spy, kinds)
    assert spy.taken == 1
    assert events[0][0] == "head" and events[-1] == ("end", None)


@pytest.mark.parametrize("message", READ_BY_LLHTTP, ids=range(len(READ_BY_LLHTTP)))
@pytest.mark.parametrize(
    "kinds",
    [OUTBOUND_REQUEST_KINDS, INBOUND_REQUEST_KINDS, {}],
    ids=["outbound", "inbound", "no kinds"],
)
def test_anything_else_is_left_to_llhttp(message: bytes, kinds: dict[bytes, int], spy: Spy) -> None:
    same_requests([message], spy, kinds)
    # Host and Expect are only what the reader's kinds make them: with none (or, for
    # Expect, inbound, where the app answers it) they are plain fields, read in C.
    expect = b"Expect" in message and kinds is not OUTBOUND_REQUEST_KINDS
    if kinds == {}:
        expect = expect and b"Content-Length" not in message  # llhttp frames by it
    plain = expect or (kinds == {} and b"Host: b" in message)
    assert spy.taken == (1 if plain else 0)


def test_framing_headers_are_llhttps_whatever_the_readers_kinds_say(spy: Spy) -> None:
    # A reader with no kinds still must not read past Content-Length or a chunked body
    # as if the head were all: llhttp frames by them whatever the reader classifies.
    for message in (
        request(b"Content-Length: 3", body=b"abc") + GET,
        request(b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n") + GET,
        request(b"Connection: keep-alive") + GET,
    ):
        events = same_requests([message], spy, {})
        assert [e[0] for e in events].count("head") == 2
        assert spy.taken == 0  # declined, llhttp reads all the read holds
        events = same_requests([message, GET], spy, {})
        assert [e[0] for e in events].count("head") == 3
        assert spy.taken == 1  # the GET in a read of its own


def test_pipelined_requests_are_read_in_c_until_one_is_not(spy: Spy) -> None:
    plain = request(b"Host: a", b"Content-Length: 2", start=b"POST / HTTP/1.1", body=b"hi")
    chunked = request(b"Host: a", b"Transfer-Encoding: chunked", body=b"2\r\nhi\r\n0\r\n\r\n")
    events = same_requests([GET + plain + GET + chunked + GET + GET], spy)
    assert [e[0] for e in events].count("head") == 6
    # Three in C; then llhttp reads the chunked one and, in the same feed, what follows.
    assert spy.taken == 3
    # Split anywhere: a message cut by a read is llhttp's, the rest the C path's.
    for cut in range(1, len(GET + plain + GET)):
        data = GET + plain + GET
        assert same_requests([data[:cut], data[cut:]], spy)[-1] == ("end", None)


def test_after_a_message_llhttp_began_the_c_path_waits_for_the_next(spy: Spy) -> None:
    events = same_requests([GET[:10], GET[10:] + GET, GET], spy)
    assert [e[0] for e in events].count("head") == 3
    # The first (and, in the same read, the second) are llhttp's; the third, a read of
    # its own, the C path's.
    assert spy.taken == 1


def test_a_request_that_closes_the_connection_ends_the_c_path(spy: Spy) -> None:
    close = request(b"Host: a", b"Connection: close")
    events = same_requests([close, GET], spy)
    assert events[-1][0] == "refused"  # llhttp: data after Connection: close
    assert spy.taken == 0


def test_a_tunnel_requests_bytes_are_the_tunnels(spy: Spy) -> None:
    ws = request(b"Host: a", b"Connection: Upgrade", b"Upgrade: websocket")
    events = same_requests([ws, GET, GET], spy)
    assert events[-2:] == [("upgrade", GET), ("upgrade", GET)]
    assert spy.taken == 0
    # An h2c upgrade is a plain request: the C path reads what follows.
    h2c = request(b"Host: a", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c")
    events = same_requests([h2c, GET], spy)
    assert [e[0] for e in events] == ["head", "end", "head", "end"]
    assert spy.taken == 1


# Responses the C path reads itself.
RESPONSES_IN_C = [
    NGINX,
    response(b"Content-Length: 0", status=b"404 Not Found"),
    response(b"Content-Length: 2", b"Set-Cookie: a=1", b"Set-Cookie: b=2", body=b"ok"),
    response(b"Content-Length: 2", b"Keep-Alive: timeout=5", b"Trailer: x", body=b"ok"),
    response(b"Content-Length: 0", status=b"200 "),
    response(b"Content-Length: 0", status=b"599 Whatever\tit says"),
    response(b"Content-Length: 1", b"Host: not a kind here", body=b"x"),
]

RESPONSES_BY_LLHTTP = [
    response(b"Content-Length: 2", b"Connection: close", body=b"ok"),
    response(b"Content-Length: 2", b"Proxy-Connection: close", body=b"ok"),
    response(b"Transfer-Encoding: chunked", body=b"2\r\nok\r\n0\r\n\r\n"),
    response(b"Server: x", body=b"until close"),
    response(b"Content-Length: 5", body=b"ok"),
    response(b"Content-Length: 2", b"Content-Length: 2", body=b"ok"),
    response(status=b"204 No Content"),
    response(b"Content-Length: 3", status=b"304 Not Modified"),
    response(status=b"100 Continue") + NGINX,
    response(b"Connection: upgrade", b"Upgrade: websocket", status=b"101 Switching Protocols"),
    response(b"Content-Length: 0", status=b"199 Odd"),
    response(b"Content-Length: 0", status=b"600 Odd"),
    response(b"Content-Length: 0", status=b"200"),
    response(b"Content-Length: 0", status=b"200 \xc3\xa9"),
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    response(b"Content-Length: 2", b"X: a", b" folded", body=b"ok"),
    response(b"Content-Length: 2", b"X : a", body=b"ok"),
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
]


@pytest.mark.parametrize("message", RESPONSES_IN_C, ids=range(len(RESPONSES_IN_C)))
def test_a_plain_response_is_read_in_c_as_llhttp_reads_it(message: bytes, spy: Spy) -> None:
    events = same_responses([message], spy)
    assert spy.taken == 1
    assert events[0][0] == "head" and events[-1] == ("end", None)


@pytest.mark.parametrize("message", RESPONSES_BY_LLHTTP, ids=range(len(RESPONSES_BY_LLHTTP)))
def test_any_other_response_is_left_to_llhttp(message: bytes, spy: Spy) -> None:
    same_responses([message], spy)
    assert spy.taken == 0


def test_a_response_to_head_is_llhttps_and_the_next_one_the_c_paths(spy: Spy) -> None:
    events = same_responses([response(b"Content-Length: 13"), NGINX], spy, head_only=True)
    assert events[0][0] == "head" and events[1] == ("end", None)
    # The reader was told once; the second response (after set_handler, in real use) is
    # read with the same head_only here, so both are llhttp's.
    assert spy.taken == 0
    recorder = Recorder()
    reader = ResponseReader(recorder)
    reader.set_handler(recorder, True)
    reader.feed(response(b"Content-Length: 13"))
    reader.set_handler(recorder, False)
    reader.feed(NGINX)
    assert spy.taken == 1
    assert recorder.events[-2:] == [("body", b"Hello, world!"), ("end", None)]


def test_a_response_to_connect_is_never_the_c_paths(spy: Spy) -> None:
    ok = response(status=b"200 Connection established")
    events = same_responses([ok + b"tunnel bytes"], spy, connect=True)
    assert events[-1] == ("upgrade", b"tunnel bytes")
    refused = response(b"Content-Length: 2", status=b"403 Forbidden", body=b"no")
    same_responses([refused, NGINX], spy, connect=True)
    assert spy.taken == 0


def test_after_an_interim_response_the_final_one_may_be_read_in_c(spy: Spy) -> None:
    events = same_responses([response(status=b"100 Continue"), NGINX], spy)
    assert [e[0] for e in events] == ["head", "end", "head", "body", "end"]
    assert spy.taken == 1


def test_bytes_after_a_whole_response_are_refused_alike_cut_anywhere(spy: Spy) -> None:
    # An upstream answers the request it was sent: a second response before the next
    # request is bound (set_handler) answers nothing (ExtraBytes; the connection is then
    # closed, never pooled). Empty lines between messages are no message.
    data = NGINX + response(b"Content-Length: 0") + NGINX
    for cut in range(1, len(data)):
        events = same_responses([data[:cut], data[cut:]], spy)
        assert [e[0] for e in events if e[0] != "body"] == ["head", "end", "refused"]
        assert events[-1] == ("refused", 502, "bytes after the response")
    events = same_responses([NGINX + b"\r\n\r\n"], spy)
    assert events[-1] == ("end", None)


def test_the_next_response_is_read_once_its_request_is_bound(spy: Spy) -> None:
    recorder = Recorder()
    reader = ResponseReader(recorder)
    for _ in range(3):
        reader.set_handler(recorder, False)
        reader.feed(NGINX)
    assert [e[0] for e in recorder.events].count("end") == 3
    assert spy.taken == 3


# Mutations: every message above with bytes changed, inserted and removed where a parser
# is most easily led astray. Equal calls, or equal refusals, for each.
ALPHABET = [b"\r", b"\n", b"\t", b" ", b":", b"\x00", b"\x7f", b"\x80", b",", b"0", b"9", b"a"]
ALPHABET += [b"A", b"/", b"-", b"\r\n", b"\r\n\r\n", b"Content-Length: 1\r\n"]
ALPHABET += [b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n", b"Host: b\r\n"]


def mutations(message: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    for _ in range(count):
        data = bytearray(message)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            what = rng.random()
            if what < 0.4 and at < len(data):
                data[at : at + 1] = rng.choice(ALPHABET)
            elif what < 0.8:
                data[at:at] = rng.choice(ALPHABET)
            elif at < len(data):
                del data[at : at + rng.randint(1, 4)]
        yield bytes(data)


def test_mutated_requests_are_read_alike(spy: Spy) -> None:
    rng = random.Random(1715)
    taken = 0
    corpus = [m for m in READ_IN_C + READ_BY_LLHTTP if len(m) < 4096]
    for message in corpus:
        for mutated in mutations(message, rng, 60):
            for kinds in (OUTBOUND_REQUEST_KINDS, INBOUND_REQUEST_KINDS):
                same_requests([mutated], spy, kinds)
                taken += spy.taken
            same_requests([mutated + GET], spy)
    # The mutations keep many messages plain: the C path was tried and taken on them.
    assert taken > 500


def test_mutated_responses_are_read_alike(spy: Spy) -> None:
    rng = random.Random(1716)
    taken = 0
    for message in RESPONSES_IN_C + RESPONSES_BY_LLHTTP:
        for mutated in mutations(message, rng, 100):
            same_responses([mutated], spy)
            taken += spy.taken
            same_responses([mutated + NGINX], spy)
    assert taken > 50


def test_generated_requests_are_read_alike(spy: Spy) -> None:
    rng = random.Random(1717)
    names = [b"Host", b"host", b"Content-Length", b"Connection", b"Proxy-Connection", b"TE"]
    names += [b"X-Forwarded-For", b"gossamer-src-service", b"Accept", b"Keep-Alive", b"Expect"]
    names += [b"Transfer-Encoding", b"Upgrade", b"Cookie", b"Proxy-Authorization"]
    values = [b"a", b"0", b"3", b"keep-alive", b"close", b"chunked", b"100-continue", b""]
    values += [b" x ", b"1.2.3.4", b"Keep-Alive", b"upgrade", b"websocket"]
    methods = [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT"]
    taken = 0
    for _ in range(3000):
        lines = [
            rng.choice(names) + b":" + rng.choice([b"", b" ", b"\t"]) + rng.choice(values)
            for _ in range(rng.randint(0, 6))
        ]
        start = rng.choice(methods) + b" " + rng.choice([b"/", b"/a?b", b"a:1"]) + b" HTTP/1.1"
        message = request(*lines, start=start, body=rng.choice([b"", b"abc", b"0\r\n\r\n"]))
        kinds = rng.choice([OUTBOUND_REQUEST_KINDS, INBOUND_REQUEST_KINDS])
        same_requests([message + GET], spy, kinds)
        taken += spy.taken
    assert taken > 500


def test_the_kinds_are_the_ones_python_knows() -> None:
    assert http1._native is not None
    native = http1._native
    assert (native.K_DROP, native.K_CONNECTION, native.K_CONTENT_LENGTH) == (
        http1.K_DROP,
        http1.K_CONNECTION,
        http1.K_CONTENT_LENGTH,
    )
    assert (native.K_TRANSFER_ENCODING, native.K_HOST, native.K_EXPECT) == (
        http1.K_TRANSFER_ENCODING,
        http1.K_HOST,
        http1.K_EXPECT,
    )
    assert (native.K_SRC_SERVICE, native.K_FORWARDED_FOR, native.K_UPGRADE) == (
        http1.K_SRC_SERVICE,
        http1.K_FORWARDED_FOR,
        http1.K_UPGRADE,
    )
    assert set(RESPONSE_KINDS) <= set(OUTBOUND_REQUEST_KINDS)


def test_bad_arguments_are_a_type_error_not_a_crash() -> None:
    assert http1._native is not None
    native = http1._native
    with pytest.raises(TypeError):
        native.parse_request(GET, 0, [], 10, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.parse_response(NGINX, 0)  # type: ignore[call-arg]
    assert native.parse_request(bytearray(GET), 0, {}, 10, 100) is None  # type: ignore[arg-type]
    assert native.parse_request(GET, len(GET), {}, 10, 100) is None
    assert native.parse_request(GET, -1, {}, 10, 100) is None
    # A kinds dict whose values are not ints: declined, not misread.
    assert native.parse_request(GET, 0, {b"host": "x"}, 10, 100) is None  # type: ignore[dict-item]


# ---- writing: the head in one call, as the Python it stands in for writes it ----------

HEADER_LISTS: list[Any] = [
    [],
    [(b"Server", b"nginx/1.22.1"), (b"Date", b"Sat, 05 Dec 2026 06:00:00 GMT")],
    [(b"x", b"")] * 40,
    [(b"a" * 5000, b"v" * 70000)],
    [[b"a list", b"not a tuple"]],  # written by the Python path
    [(b"x", bytearray(b"a bytearray"))],
    [(b"three", b"items", b"!")],
]


@pytest.mark.parametrize("headers", HEADER_LISTS, ids=range(len(HEADER_LISTS)))
@pytest.mark.parametrize("status", [200, 404, 0, 999, 1000, -1, 599])
def test_a_response_head_is_written_as_python_writes_it(
    headers: Any, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def written() -> bytes | str:
        try:
            return http1.response_head_bytes(status, b"", headers, b"content-length: 2\r\n")
        except ValueError as e:
            return str(e)  # three items: both refuse it alike

    native = written()
    monkeypatch.setattr(http1, "_native", None)
    assert native == written()


@pytest.mark.parametrize("headers", HEADER_LISTS, ids=range(len(HEADER_LISTS)))
@pytest.mark.parametrize("host", [b"echo.bench", None, b""])
def test_a_request_head_is_written_as_python_writes_it(
    headers: Any, host: bytes | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def written() -> bytes | str:
        try:
            return http1.request_head_bytes(b"POST", b"/a?b", host, headers, b"x: y\r\n")
        except ValueError as e:
            return str(e)

    native = written()
    monkeypatch.setattr(http1, "_native", None)
    assert native == written()


def test_the_common_heads_are_written_in_c() -> None:
    assert http1._native is not None
    fields = [(b"a", b"b")]
    assert http1._native.request_head(b"GET", b"/", None, fields, b"") == (
        b"GET / HTTP/1.1\r\na: b\r\n\r\n"
    )
    assert http1._native.response_head(204, b"No Content", fields, b"") == (
        b"HTTP/1.1 204 No Content\r\na: b\r\n\r\n"
    )
    assert http1._native.response_head(True, b"OK", fields, b"") is None  # not an int


def test_interim_responses_before_an_answer_to_head_are_read_alike(spy: Spy) -> None:
    # An answer to HEAD is given to llhttp a head at a time (what follows it must be
    # seen): many interim heads in one read are read in a loop, alike in both readers.
    interims = response(status=b"100 Continue") * 2000
    final = response(b"Content-Length: 13")
    events = same_responses([interims + final], spy, head_only=True)
    assert [e[0] for e in events].count("head") == 2001
    assert events[-1] == ("end", None)
    events = same_responses([interims + final + NGINX], spy, head_only=True)
    assert events[-1] == ("refused", 502, "bytes after the response")
