"""HTTP/1.1 message reading and writing for the proxy, without I/O.

`RequestReader` and `ResponseReader` wrap an httptools (llhttp) parser: bytes go in,
and a handler gets one call per message part (head, body piece, end). Hop-by-hop
headers are taken out while reading, so a head handed on holds only what may be
forwarded; the framing headers are written again by whoever forwards the message,
because a proxy re-frames bodies (chunked in, chunked out; close-delimited in,
chunked out to an HTTP/1.1 client).

Anything the proxy cannot forward unambiguously raises `ProtocolError` with the
status to answer, so request smuggling through a malformed head is never possible. A
request head (and its trailers) may hold at most MAX_HEADERS fields in MAX_HEAD_SIZE
bytes (proxy.wire.limits); over either, 431.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from http import HTTPStatus
from types import ModuleType
from typing import Final, Protocol

import httptools

from gossamer.errors import GossamerError
from gossamer.proxy.wire.limits import MAX_HEAD_SIZE, MAX_HEADERS

log = logging.getLogger("gossamer.proxy")

_native: ModuleType | None
try:
    from gossamer.proxy.wire import _h1native as _native
except ImportError:  # built without a C compiler: llhttp reads every message
    _native = None

Headers = list[tuple[bytes, bytes]]

# What a header means to the proxy. Looked up once per header by lowercased name;
# a name missing from the table is forwarded untouched.
K_DROP: Final = 0  # hop-by-hop: never forwarded
K_CONNECTION: Final = 1
K_CONTENT_LENGTH: Final = 2
K_TRANSFER_ENCODING: Final = 3
K_HOST: Final = 4
K_EXPECT: Final = 5
K_SRC_SERVICE: Final = 6
K_FORWARDED_FOR: Final = 7
K_UPGRADE: Final = 8

SRC_SERVICE_HEADER: Final = b"gossamer-src-service"
ERROR_HEADER: Final = b"gossamer-error"
# The status a request whose client went away before its answer is counted with
# (nginx's client-closed-request), over HTTP/1.1 and HTTP/2 alike.
CLIENT_GONE: Final = 499
# On an HTTP/1.x request carried between two proxies as an HTTP/2 stream
# (proxy.outbound.h1to2): the version the app spoke, for the peer's tap and access log.
ORIG_PROTO_HEADER: Final = b"gossamer-orig-proto"

_HOP_BY_HOP: Final = {
    b"connection": K_CONNECTION,
    b"keep-alive": K_DROP,
    b"proxy-connection": K_DROP,
    b"te": K_DROP,
    b"trailer": K_DROP,
    b"upgrade": K_UPGRADE,
    b"content-length": K_CONTENT_LENGTH,
    b"transfer-encoding": K_TRANSFER_ENCODING,
}

# Requests from the local app: routed by Host; the app may not pose as another
# service, and its proxy credentials go no further than this proxy.
OUTBOUND_REQUEST_KINDS: Final = {
    **_HOP_BY_HOP,
    b"host": K_HOST,
    b"expect": K_EXPECT,
    b"proxy-authorization": K_DROP,
    SRC_SERVICE_HEADER: K_DROP,
    ORIG_PROTO_HEADER: K_DROP,
}
# Requests from a peer proxy: the source service is read (and not shown to the app),
# x-forwarded-for gets the peer's address appended.
INBOUND_REQUEST_KINDS: Final = {
    **_HOP_BY_HOP,
    b"host": K_HOST,
    SRC_SERVICE_HEADER: K_SRC_SERVICE,
    b"x-forwarded-for": K_FORWARDED_FOR,
}
RESPONSE_KINDS: Final = dict(_HOP_BY_HOP)

# How a body is delimited on the wire.
BODY_NONE: Final = 0
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2
BODY_UNTIL_CLOSE: Final = 3

_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}
# `Connection` values that name no other header (most messages carry one of these).
_PLAIN_CONNECTION: Final = frozenset(
    {b"keep-alive", b"Keep-Alive", b"close", b"Close", b"keep-alive, close"}
)
_CHUNK_END: Final = b"0\r\n\r\n"

READER_ENV: Final = "GOSSAMER_H1_READER"
# The kinds as _h1native.c numbers them: a build of another version is not used.
_KINDS_IN_C: Final = {
    "K_DROP": K_DROP,
    "K_CONNECTION": K_CONNECTION,
    "K_CONTENT_LENGTH": K_CONTENT_LENGTH,
    "K_TRANSFER_ENCODING": K_TRANSFER_ENCODING,
    "K_HOST": K_HOST,
    "K_EXPECT": K_EXPECT,
    "K_SRC_SERVICE": K_SRC_SERVICE,
    "K_FORWARDED_FOR": K_FORWARDED_FOR,
    "K_UPGRADE": K_UPGRADE,
}


def _native_wanted(wanted: str) -> bool:
    """Whether readers use `_h1native` for GOSSAMER_H1_READER's value (decision 0115):
    ``llhttp`` never, ``native`` always (an error where it is not built), unset where
    it is built."""
    wanted = wanted.strip().lower()
    if wanted not in ("", "llhttp", "native"):
        raise GossamerError(f"{READER_ENV}={wanted!r}: expected llhttp or native")
    if wanted == "llhttp":
        return False
    built = _native is not None and all(
        getattr(_native, name, None) == value for name, value in _KINDS_IN_C.items()
    )
    if wanted == "native" and not built:
        raise GossamerError(
            f"{READER_ENV}=native, but gossamer.proxy.wire._h1native is not built (or is "
            "of another version): install a C compiler and Python's headers (Debian: gcc "
            "python3-dev) and run `pip install -e .` again, or unset it"
        )
    return built


# Whether readers made from now on read the common message in one call into C before
# llhttp; tests turn it off to compare the two.
native: bool = _native_wanted(os.environ.get(READER_ENV, ""))


def reader_description() -> str:
    """Which HTTP/1.1 reader the proxy uses, for its start-up log line."""
    if native:
        return "llhttp, with the common keep-alive message read in one call (_h1native)"
    if _native is None:
        return "llhttp alone (the extension gossamer.proxy.wire._h1native is not built)"
    return f"llhttp alone ({READER_ENV})"


if native or os.environ.get(READER_ENV):
    log.info("HTTP/1.1 reader: %s", reader_description())
else:
    log.warning(
        "HTTP/1.1 reader: %s, slower; install a C compiler and Python's headers and "
        "reinstall Gossamer for the native one",
        reader_description(),
    )


class ProtocolError(Exception):
    """A message the proxy refuses to forward; `status` is what to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ExtraBytes(ProtocolError):
    """An upstream sent more after a whole response, in the same read: an answer to no
    request (the next request on the connection is not its to answer)."""

    def __init__(self) -> None:
        super().__init__(502, "bytes after the response")


class Http2Preface(ProtocolError):
    """A connection began with the HTTP/2 preface; `data` is the read that ended it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(400, "HTTP/2 preface where HTTP/1.1 was expected")
        self.data = data


class RequestHead:
    """One request's start line and forwardable headers, hop-by-hop headers removed."""

    __slots__ = (
        "body",
        "content_length",
        "expect_continue",
        "forwarded_for",
        "headers",
        "host",
        "http11",
        "keep_alive",
        "method",
        "src_service",
        "target",
        "transfer_encoding",
        "tunnel",
        "upgrade",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.http11 = True
        self.keep_alive = True
        self.headers: Headers = []
        self.host: bytes | None = None
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.body = BODY_NONE
        self.expect_continue = False
        self.src_service: bytes | None = None
        self.forwarded_for: bytes | None = None
        # A request that turns its connection into a tunnel once answered 101 (an
        # Upgrade, whose protocol is `upgrade`) or 2xx (CONNECT); see
        # Exchange._open_tunnel in proxy.forward.exchange.
        self.tunnel = False
        self.upgrade: bytes | None = None


class ResponseHead:
    __slots__ = (
        "body",
        "content_length",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "transfer_encoding",
    )

    def __init__(self, status: int, reason: bytes, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.body = BODY_NONE
        self.keep_alive = True


class RequestHandler(Protocol):
    def request_head(self, head: RequestHead) -> None: ...
    def request_body(self, data: bytes) -> None: ...
    def request_end(self, trailers: Headers | None) -> None: ...

    def request_upgrade(self, data: bytes) -> None:
        """Bytes after a tunnel request's head: they belong to the tunnel, not HTTP."""


class ResponseHandler(Protocol):
    def response_head(self, head: ResponseHead) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_end(self, trailers: Headers | None) -> None: ...
    def response_upgrade(self, data: bytes) -> None:
        """The response switched protocols; `data` is the first of the tunnel's bytes."""


def _connection_tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def _is_chunked(transfer_encoding: bytes) -> bool:
    return transfer_encoding.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


def _drop_named(headers: Headers, names: set[bytes]) -> Headers:
    return [(n, v) for n, v in headers if n.lower() not in names]


class _Reader:
    """What request and response reading share: header classification and limits."""

    __slots__ = (
        "_connection",
        "_fields",
        "_head_size",
        "_headers",
        "_in_body",
        "_in_head",
        "_keep_alive",
        "_kinds",
        "_max_fields",
        "_native",
        "_native_ready",
        "_too_large",
        "_trailers",
        "_unparsed",
        "content_length",
        "transfer_encoding",
    )

    def __init__(self, kinds: dict[bytes, int], max_fields: int) -> None:
        self._kinds = kinds
        self._too_large = (431, "request head larger than 64 KiB")
        # Header fields so far in the head (or, after it, the trailers) being read.
        self._fields = 0
        self._max_fields = max_fields
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._connection: list[bytes] | None = None
        self._head_size = 0
        self._unparsed = 0
        self._in_body = False
        self._in_head = False
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        # `_native`: this reader tries _h1native first; `_native_ready`: llhttp is between
        # messages, on a connection that stays HTTP/1.1 and alive, so it may now.
        self._native = native
        self._native_ready = native
        self._keep_alive = True

    def _reset(self) -> None:
        self._native_ready = False
        self._headers = []
        self._trailers = None
        self._connection = None
        self._fields = 0
        self._head_size = 0
        self._unparsed = 0
        self._in_head = True
        self._in_body = False
        self.content_length = None
        self.transfer_encoding = None

    def _count_unparsed(self, size: int) -> None:
        # llhttp sets no limit on a head. Complete headers are counted exactly in
        # on_header; this catches a header line that never ends, by counting reads
        # that begin and end inside the same head.
        self._unparsed += size
        if self._unparsed > 2 * MAX_HEAD_SIZE:
            raise ProtocolError(*self._too_large)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called by llhttp once per field: the common case takes one test.
        # Trailers count against the same limit as the head they follow.
        size = self._head_size = self._head_size + len(name) + len(value)
        fields = self._fields = self._fields + 1
        if size > MAX_HEAD_SIZE or fields > self._max_fields or self._in_body:
            self._unusual_header(name, value)
            return
        kind = self._kinds.get(name.lower())
        if kind is None:
            self._headers.append((name, value))
        else:
            self._special(kind, name, value)

    def _unusual_header(self, name: bytes, value: bytes) -> None:
        if self._head_size > MAX_HEAD_SIZE:
            raise ProtocolError(*self._too_large)
        if self._fields > self._max_fields:
            self._too_many()
        if self._trailers is None:
            self._trailers = []
        if name.lower() not in self._kinds:
            self._trailers.append((name, value))

    def _special(self, kind: int, name: bytes, value: bytes) -> None:
        if kind == K_CONNECTION:
            if value in _PLAIN_CONNECTION:
                return  # names no header to drop; llhttp has read what it says
            tokens = _connection_tokens(value)
            if self._connection is None:
                self._connection = tokens
            else:
                self._connection.extend(tokens)
        elif kind == K_CONTENT_LENGTH:
            self.content_length = value
        elif kind == K_TRANSFER_ENCODING:
            if self.transfer_encoding is None:
                self.transfer_encoding = value
            else:
                self.transfer_encoding += b", " + value

    def _too_many(self) -> None:
        part = "trailer" if self._in_body else "header"
        raise ProtocolError(431, f"request has more than {self._max_fields} {part} fields")

    def _headers_done(self) -> Headers:
        self._in_body = True
        self._in_head = False
        self._fields = 0  # trailers are counted apart
        headers = self._headers
        if self._connection is not None:
            named = set(self._connection) - {b"close", b"keep-alive"}
            if named:
                headers = _drop_named(headers, named)
        return headers


class RequestReader(_Reader):
    """Reads requests from a downstream connection; see the module docstring."""

    __slots__ = (
        "_expect",
        "_forwarded_for",
        "_handler",
        "_host",
        "_parser",
        "_src_service",
        "_tunnel",
        "_upgrade",
        "_upgrade_body",
        "_url",
    )

    def __init__(
        self, handler: RequestHandler, kinds: dict[bytes, int], max_fields: int = MAX_HEADERS
    ) -> None:
        super().__init__(kinds, max_fields)
        self._handler = handler
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._host: bytes | None = None
        self._expect = False
        self._src_service: bytes | None = None
        self._forwarded_for: bytes | None = None
        self._upgrade_body = False
        self._upgrade: bytes | None = None
        self._tunnel = False

    def release(self) -> None:
        """The connection is lost: let go of llhttp's parser and of the handler, both of
        which refer back to this reader, so that the reader and its connection are
        freed with the connection, not by the cycle collector. Nothing is read after.
        Once: a connection let go when it handed its transport on, then lost (a refused
        TCP splice), is released already."""
        with contextlib.suppress(AttributeError):
            del self._parser, self._handler

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises ProtocolError for a request that must be refused."""
        if self._native_ready:
            start = self._read_native(data)
            if start:
                if start == len(data):
                    return
                data = data[start:]
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._after_upgrade(data, e.args[0])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise
        except httptools.HttpParserError as e:
            # llhttp's words for the HTTP/2 preface, whole or mangled
            if str(e) in ("Pause on PRI/Upgrade", "Expected HTTP/2 Connection Preface"):
                raise Http2Preface(data) from None
            raise ProtocolError(400, f"malformed request: {_llhttp_reason(e)}") from None
        if in_head and self._in_head:
            self._count_unparsed(len(data))

    def _read_native(self, data: bytes) -> int:
        """Requests at the start of `data` that _h1native reads whole; where they end."""
        assert _native is not None
        parse = _native.parse_request
        start, size = 0, len(data)
        while self._native_ready and start < size:
            parsed = parse(data, start, self._kinds, self._max_fields, MAX_HEAD_SIZE)
            if parsed is None:
                break
            end, body_start, method, target, headers, host, length, src, forwarded = parsed
            head = RequestHead()
            head.method = method
            head.target = target
            head.headers = headers
            head.host = host
            head.src_service = src
            head.forwarded_for = forwarded
            if length is not None:
                head.content_length = length
                head.body = BODY_LENGTH
            handler = self._handler
            handler.request_head(head)
            if end > body_start:
                self._in_body = True
                handler.request_body(data[body_start:end])
                self._in_body = False
            handler.request_end(None)
            start = end
        return start

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        # llhttp stops at an Upgrade (or CONNECT) request as if the connection were
        # switching protocols. A tunnel request hands everything after it to the
        # handler from now on; an upgrade the proxy does not carry (h2c) was handed on
        # as a plain request, and what follows it is the next request.
        if self._upgrade_body:
            raise ProtocolError(400, "upgrade request with a body is not supported")
        rest = data[offset:]
        if self._tunnel:
            self._parser = _TunnelBytes(self._handler)  # type: ignore[assignment]
            if rest:
                self._handler.request_upgrade(rest)
            return
        self._parser = httptools.HttpRequestParser(self)
        if rest:
            self.feed(rest)

    def on_message_begin(self) -> None:
        self._reset()
        self._url = b""
        self._host = None
        self._expect = False
        self._src_service = None
        self._forwarded_for = None
        self._upgrade = None

    def on_url(self, url: bytes) -> None:
        self._url = url if not self._url else self._url + url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_SIZE:
            raise ProtocolError(431, "request head larger than 64 KiB")

    def _special(self, kind: int, name: bytes, value: bytes) -> None:
        if kind == K_HOST:
            if self._host is not None:
                raise ProtocolError(400, "malformed request: more than one Host header")
            self._host = value
        elif kind == K_EXPECT:
            if value.lower() == b"100-continue":
                self._expect = True
            else:
                self._headers.append((name, value))
        elif kind == K_SRC_SERVICE:
            self._src_service = value
        elif kind == K_FORWARDED_FOR:
            self._forwarded_for = (
                value if self._forwarded_for is None else self._forwarded_for + b", " + value
            )
        elif kind == K_UPGRADE:
            self._upgrade = value
        else:
            super()._special(kind, name, value)

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version == "1.1":
            http11 = True
        elif version == "1.0":
            http11 = False
        elif version == "0.9":
            raise ProtocolError(400, "malformed request: bad request line")
        else:
            raise ProtocolError(505, f"HTTP/{version} is not supported")
        method = parser.get_method()
        head = RequestHead()
        head.method = method
        head.target = self._url
        head.http11 = http11
        head.keep_alive = parser.should_keep_alive()
        head.headers = self._headers_done()
        head.host = self._host
        head.expect_continue = self._expect and http11
        head.src_service = self._src_service
        head.forwarded_for = self._forwarded_for
        te = self.transfer_encoding
        if te is not None:
            # llhttp has refused any request whose last coding is not chunked, and
            # any with Content-Length as well.
            head.transfer_encoding = te
            head.body = BODY_CHUNKED
        elif self.content_length is not None:
            head.content_length = self.content_length
            head.body = BODY_LENGTH
        if parser.should_upgrade():
            self._upgrade_body = head.body != BODY_NONE and self.content_length != b"0"
            self._tunnel_request(head)
        self._keep_alive = head.keep_alive
        self._handler.request_head(head)

    def _tunnel_request(self, head: RequestHead) -> None:
        """CONNECT, or an Upgrade with `Connection: upgrade`: a tunnel if answered so.

        h2c is not carried this way (the mesh speaks HTTP/2 itself): such a request
        goes on as a plain one. The connection is not kept alive after a tunnel
        request that is refused, since the client may already have sent tunnel bytes.
        """
        upgrade = self._upgrade
        if head.method == b"CONNECT":
            self._tunnel = True
        elif upgrade is not None and upgrade.strip().lower() != b"h2c":
            self._tunnel = True
            head.upgrade = upgrade
        else:
            return
        head.tunnel = True
        head.keep_alive = False

    def on_body(self, body: bytes) -> None:
        self._handler.request_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._native_ready = self._native and self._keep_alive
        self._handler.request_end(self._trailers)


class ResponseReader(_Reader):
    """Reads responses from an upstream connection.

    The reader must be told when a response answers HEAD (`expect_head_only`):
    llhttp cannot know it, and would wait for a body the Content-Length announces.
    """

    __slots__ = (
        "_answered",
        "_close_delimited",
        "_final",
        "_handler",
        "_head_only",
        "_parser",
        "_reason",
        "_stopped",
    )

    def __init__(self, handler: ResponseHandler) -> None:
        # A response's fields are not counted: the app's answer is the app's business,
        # and its head is still held to MAX_HEAD_SIZE.
        super().__init__(RESPONSE_KINDS, sys.maxsize)
        self._too_large = (502, "response head from upstream larger than 64 KiB")
        self._handler = handler
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        # `_answered`: a final response (not a 1xx) ended since set_handler; what comes
        # after it in the same read answers nothing (ExtraBytes). `_final`: the response
        # being read is one.
        self._answered = False
        self._final = False
        self._head_only = False
        self._stopped = False
        self._close_delimited = False

    def release(self) -> None:
        """The connection is lost: as RequestReader.release (a handler set later, a
        retry's DISCARD, is kept and harmless)."""
        with contextlib.suppress(AttributeError):
            del self._parser, self._handler

    def set_handler(self, handler: ResponseHandler, head_only: bool) -> None:
        """The next response is `handler`'s (the exchange a request was sent for)."""
        self._handler = handler
        self._head_only = head_only
        self._answered = False

    def feed(self, data: bytes) -> None:
        if self._native_ready:
            start = self._read_native(data)
            if start:
                if start == len(data):
                    return
                data = data[start:]
        if self._head_only and not self._answered:
            # llhttp stops at the end of an answer to HEAD (see on_headers_complete) and
            # what the read holds after it would be lost unseen: given to llhttp a head
            # at a time, so that what follows the answer is known (ExtraBytes, as after
            # any whole response). A head with bare LFs is llhttp's whole, as before.
            start = 0
            while (cut := data.find(b"\r\n\r\n", start) + 4) > 3 and cut < len(data):
                self._read(data[start:cut])
                start = cut
                if self._answered:
                    if data[start:].strip(b"\r\n"):
                        raise ExtraBytes
                    return
                if not self._head_only:
                    break
            if start:
                data = data[start:]
        self._read(data)

    def _read(self, data: bytes) -> None:
        """`data` through llhttp."""
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if self._stopped:
                # A complete answer to HEAD: llhttp's state is of no further use.
                self._stopped = False
                self._parser = httptools.HttpResponseParser(self)
                self._native_ready = self._native and self._keep_alive
                self._answered = True
                return
            cause = e.__context__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise
        except httptools.HttpParserUpgrade as e:
            # A 101: the handler refuses it unless its request asked for a tunnel.
            self._handler.response_upgrade(data[e.args[0] :])
            return
        except httptools.HttpParserError as e:
            raise ProtocolError(502, f"malformed response: {_llhttp_reason(e)}") from None
        if in_head and self._in_head:
            self._count_unparsed(len(data))

    def _read_native(self, data: bytes) -> int:
        """Responses at the start of `data` that _h1native reads whole; where they end."""
        assert _native is not None
        parse = _native.parse_response
        start, size = 0, len(data)
        # An answer to HEAD has no body whatever its Content-Length says: llhttp's.
        while self._native_ready and not self._head_only and start < size:
            if self._answered:
                break  # llhttp's: an empty line between messages is no message
            parsed = parse(data, start, self._kinds, MAX_HEAD_SIZE)
            if parsed is None:
                break
            end, body_start, status, reason, headers, length = parsed
            head = ResponseHead(status, reason, headers)
            head.content_length = length
            head.body = BODY_LENGTH
            self._handler.response_head(head)
            if end > body_start:
                self._in_body = True
                self._handler.response_body(data[body_start:end])
                self._in_body = False
            self._answered = True  # (before the handler: it may set the next one)
            self._handler.response_end(None)
            start = end
        return start

    def expect_connect(self) -> None:
        """The next response answers CONNECT: after a 2xx head, the rest is the tunnel's.

        llhttp cannot know what a response answers, so only the head is given to it.
        """
        self._native = self._native_ready = False
        self._parser = _ConnectResponseHead(self, self._parser)  # type: ignore[assignment]

    def on_message_begin(self) -> None:
        if self._answered:
            raise ExtraBytes
        self._reset()
        self._reason = b""
        self._close_delimited = False

    def on_status(self, reason: bytes) -> None:
        self._reason = reason if not self._reason else self._reason + reason

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        self._final = status >= 200
        head = ResponseHead(status, self._reason, self._headers_done())
        head.keep_alive = self._keep_alive = parser.should_keep_alive()
        head.content_length = self.content_length
        head.transfer_encoding = self.transfer_encoding
        if status < 200 or status in (204, 304):
            head.body = BODY_NONE
        elif self._head_only:
            head.body = BODY_NONE
            self._handler.response_head(head)
            self._in_body = False
            self._handler.response_end(None)
            self._stopped = True
            raise _StopParsing
        elif self.transfer_encoding is not None and _is_chunked(self.transfer_encoding):
            head.body = BODY_CHUNKED
        elif self.transfer_encoding is None and self.content_length is not None:
            head.body = BODY_LENGTH
        else:
            head.body = BODY_UNTIL_CLOSE
            head.keep_alive = self._keep_alive = False
            self._close_delimited = True
        self._handler.response_head(head)

    def on_body(self, body: bytes) -> None:
        self._handler.response_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._native_ready = self._native and self._keep_alive
        self._answered = self._final  # (before the handler: it may set the next one)
        self._handler.response_end(self._trailers)

    def eof(self) -> bool:
        """The upstream closed: True when that ended a close-delimited response."""
        if self._in_body and self._close_delimited:
            self._in_body = False
            self._handler.response_end(None)
            return True
        return False


class _StopParsing(Exception):
    pass


class _ConnectResponseHead:
    """Stands in for the parser until the head of a response to CONNECT is whole."""

    __slots__ = ("_buffer", "_parser", "_reader")

    def __init__(self, reader: ResponseReader, parser: httptools.HttpResponseParser) -> None:
        self._reader = reader
        self._parser = parser
        self._buffer = b""

    def feed_data(self, data: bytes) -> None:
        buffer = self._buffer + data
        reader, parser = self._reader, self._parser
        start = 0
        while True:
            end = buffer.find(b"\r\n\r\n", start)
            if end < 0:
                if len(buffer) - start > MAX_HEAD_SIZE:
                    raise ProtocolError(502, "response head from upstream larger than 64 KiB")
                self._buffer = buffer[start:]
                return
            end += 4
            reader._parser = parser  # (the reader's callbacks ask the parser)
            parser.feed_data(buffer[start:end])
            status = parser.get_status_code()
            if 100 <= status < 200 and status != 101:
                # An interim response (100, 103): the answer's head is next.
                reader._parser = self  # type: ignore[assignment]
                start = end
                continue
            if 200 <= status < 300:
                reader._handler.response_upgrade(buffer[end:])
            elif end < len(buffer):
                parser.feed_data(buffer[end:])
            return


class _TunnelBytes:
    """Stands in for the parser once a request has asked for a tunnel."""

    __slots__ = ("_handler",)

    def __init__(self, handler: RequestHandler) -> None:
        self._handler = handler

    def feed_data(self, data: bytes) -> None:
        self._handler.request_upgrade(data)


def _llhttp_reason(e: Exception) -> str:
    return str(e) or type(e).__name__


# ---- writing ----------------------------------------------------------------------


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def request_head_bytes(
    method: bytes, target: bytes, host: bytes | None, headers: Headers, extra: bytes
) -> bytes:
    """Serialise a request head; `extra` holds ready-made header lines (framing etc.)."""
    if _native is not None:  # one call, where every field is a tuple of bytes
        head: bytes | None = _native.request_head(method, target, host, headers, extra)
        if head is not None:
            return head
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    if host is not None:
        parts.append(b"host: " + host + b"\r\n")
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(extra)
    parts.append(b"\r\n")
    return b"".join(parts)


def response_head_bytes(status: int, reason: bytes, headers: Headers, extra: bytes) -> bytes:
    reason = reason or reason_phrase(status)
    if _native is not None:
        head: bytes | None = _native.response_head(status, reason, headers, extra)
        if head is not None:
            return head
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(extra)
    parts.append(b"\r\n")
    return b"".join(parts)


def request_framing(head: RequestHead) -> bytes:
    """The framing header line a forwarded request carries (requests keep their framing).

    A tunnel request carries its Upgrade instead (it has no body).
    """
    if head.body == BODY_NONE:
        if head.upgrade is not None:
            return b"connection: upgrade\r\nupgrade: " + head.upgrade + b"\r\n"
        return b""
    if head.body == BODY_CHUNKED:
        return b"transfer-encoding: " + (head.transfer_encoding or b"chunked") + b"\r\n"
    if head.body == BODY_LENGTH:
        return b"content-length: " + (head.content_length or b"0") + b"\r\n"
    return b""


def response_framing(head: ResponseHead, client_http11: bool) -> tuple[int, bytes]:
    """How a response is delimited towards the client, and the header line saying so.

    Chunked and close-delimited bodies go out chunked to an HTTP/1.1 client, which
    keeps its connection usable; an HTTP/1.0 client knows no chunked coding, so it gets
    the bare body and the connection is closed after it.
    """
    body = head.body
    if body == BODY_NONE:
        if head.content_length is not None and head.status >= 200 and head.status != 204:
            return BODY_NONE, b"content-length: " + head.content_length + b"\r\n"
        return BODY_NONE, b""
    if body == BODY_LENGTH:
        return BODY_LENGTH, b"content-length: " + (head.content_length or b"0") + b"\r\n"
    if not client_http11:
        return BODY_UNTIL_CLOSE, b""
    te = head.transfer_encoding
    if te is None or te.strip().lower() == b"chunked":
        return BODY_CHUNKED, b"transfer-encoding: chunked\r\n"
    if body == BODY_CHUNKED:
        return BODY_CHUNKED, b"transfer-encoding: " + te + b"\r\n"
    return BODY_CHUNKED, b"transfer-encoding: " + te + b", chunked\r\n"


def chunk_header(size: int) -> bytes:
    return b"%x\r\n" % size


def chunked_end(trailers: Headers | None) -> bytes:
    if not trailers:
        return _CHUNK_END
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


def error_response(
    status: int,
    reason: str,
    *,
    close: bool,
    head_only: bool = False,
    retry_after: bytes | None = None,
) -> bytes:
    """A response the proxy makes itself: the reason in `gossamer-error` and the body
    (and `retry-after`, seconds, when given)."""
    body = reason.encode("utf-8", "replace") + b"\n"
    header_value = reason.encode("ascii", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"gossamer-error: %s\r\ncontent-length: %d\r\n%s\r\n"
        % (
            status,
            reason_phrase(status),
            header_value,
            len(body),
            (b"connection: close\r\n" if close else b"")
            + (b"retry-after: " + retry_after + b"\r\n" if retry_after else b""),
        )
    )
    return head if head_only else head + body
