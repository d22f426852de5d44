"""HTTP/1.1 requests the proxy must not forward as they came: no Host, an absolute-form
target whose authority is not the Host, too many header fields.

Raw requests over mTLS to a real inbound listener (as a peer proxy would send them)
and to a real outbound listener, in front of the echo app, which counts what reaches
it; the header cap is also checked on the reader alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from gossamer.identity.tls import client_context
from gossamer.proxy.wire.http1 import ProtocolError, RequestHead, RequestReader, ResponseReader
from gossamer.proxy.wire.limits import MAX_HEADERS
from gossamer.proxy.wire.tls import ALPN_H1, sni_for
from tests.proxy.conftest import Mesh, Pki, Workload, parse_responses, start_workload


@pytest_asyncio.fixture
async def echo(pki: Pki) -> AsyncIterator[Workload]:
    workload = await start_workload(pki, "echo-1")
    try:
        yield workload
    finally:
        await workload.proxy.close()
        await workload.app.close()


async def to_inbound(pki: Pki, echo: Workload, request: bytes) -> bytes:
    """Send `request` to the echo workload's inbound as a peer proxy would (mTLS,
    its SNI, ALPN gossamer/h1) and read until the proxy closes."""
    creds = pki.issue("default", "web")
    ctx = client_context(creds.chain_pem, creds.key_pem, creds.bundle_pem, alpn_protocols=[ALPN_H1])
    assert echo.proxy.inbound_address is not None
    reader, writer = await asyncio.open_connection(
        *echo.proxy.inbound_address, ssl=ctx, server_hostname=sni_for(8080, "echo-1", "default")
    )
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.transport.abort()


def fields(n: int) -> bytes:
    return b"".join(b"x-field-%03d: v\r\n" % i for i in range(n))


# ---- Host ------------------------------------------------------------------------------

REFUSED = [
    (
        b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 request without a Host header",
    ),
    (
        b"GET http://admin.internal/a HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
        "the request target names 'admin.internal' but the Host header says 'echo'",
    ),
    (
        b"GET http://echo:8080/a HTTP/1.1\r\nHost: echo:9090\r\nConnection: close\r\n\r\n",
        "the request target names 'echo:8080' but the Host header says 'echo:9090'",
    ),
    (
        b"GET http://echo/a HTTP/1.1\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 request without a Host header",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    REFUSED,
    ids=[
        "HTTP/1.1 without Host",
        "absolute-form naming another host",
        "absolute-form naming another port",
        "absolute-form without Host",
    ],
)
async def test_the_inbound_refuses_a_request_whose_host_it_cannot_trust(
    pki: Pki, echo: Workload, request_bytes: bytes, reason: str
) -> None:
    ((status, headers, _),) = parse_responses(await to_inbound(pki, echo, request_bytes))
    assert status == 400
    assert reason in headers["gossamer-error"]
    assert echo.app.requests == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /a HTTP/1.0\r\n\r\n",
        b"GET http://echo/a HTTP/1.1\r\nHost: ECHO:80\r\nConnection: close\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
    ],
    ids=["HTTP/1.0 without Host", "absolute-form agreeing with Host", "origin-form with Host"],
)
async def test_the_inbound_forwards_requests_with_a_host_it_can_trust(
    pki: Pki, echo: Workload, request_bytes: bytes
) -> None:
    answer = await to_inbound(pki, echo, request_bytes)
    assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")), answer[:200]
    assert echo.app.requests == 1


# ---- header fields ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_inbound_answers_431_to_too_many_header_fields(pki: Pki, echo: Workload) -> None:
    head = b"GET /a HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n"
    ok = await to_inbound(pki, echo, head + fields(MAX_HEADERS - 2) + b"\r\n")
    assert ok.startswith(b"HTTP/1.1 200")
    ((status, headers, _),) = parse_responses(
        await to_inbound(pki, echo, head + fields(MAX_HEADERS - 1) + b"\r\n")
    )
    assert status == 431
    assert headers["gossamer-error"] == f"request has more than {MAX_HEADERS} header fields"
    assert echo.app.requests == 1


@pytest.mark.asyncio
async def test_the_outbound_answers_431_to_too_many_header_fields(mesh: Mesh) -> None:
    reader, writer = await asyncio.open_connection(*mesh.outbound)
    try:
        writer.write(
            b"GET /a HTTP/1.1\r\nHost: echo\r\n" + fields(MAX_HEADERS) + b"\r\n"
            b"GET /b HTTP/1.1\r\nHost: echo\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.transport.abort()
    ((status, headers, _),) = parse_responses(answer)  # and the connection is closed
    assert status == 431
    assert headers["gossamer-error"] == f"request has more than {MAX_HEADERS} header fields"
    assert sum(w.app.requests for w in mesh.workloads) == 0


class Heads:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []

    def request_head(self, head: RequestHead) -> None:
        self.heads.append(head)

    def request_body(self, data: bytes) -> None:
        pass

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        pass

    def request_upgrade(self, data: bytes) -> None:
        pass


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n" + fields(MAX_HEADERS) + b"\r\n",
            f"request has more than {MAX_HEADERS} header fields",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
            + fields(MAX_HEADERS + 1)
            + b"\r\n",
            f"request has more than {MAX_HEADERS} trailer fields",
        ),
    ],
    ids=["header fields", "trailer fields"],
)
def test_a_request_with_too_many_fields_is_refused_with_431(message: bytes, reason: str) -> None:
    reader = RequestReader(Heads(), {})
    with pytest.raises(ProtocolError) as refused:
        reader.feed(message)
    assert (refused.value.status, refused.value.reason) == (431, reason)


def test_fields_up_to_the_limit_are_read_and_counted_per_request() -> None:
    handler = Heads()
    reader = RequestReader(handler, {})
    one = b"GET / HTTP/1.1\r\n" + fields(MAX_HEADERS) + b"\r\n"
    reader.feed(one + one)  # the count starts again with each request
    assert [len(h.headers) for h in handler.heads] == [MAX_HEADERS, MAX_HEADERS]


def test_a_response_is_held_to_the_head_size_not_the_field_count() -> None:
    got: list[int] = []

    class Handler:
        def response_head(self, head: object) -> None:
            got.append(len(getattr(head, "headers", [])))

        def response_body(self, data: bytes) -> None:
            pass

        def response_end(self, trailers: object) -> None:
            pass

        def response_upgrade(self, data: bytes) -> None:
            pass

    ResponseReader(Handler()).feed(
        b"HTTP/1.1 204 No Content\r\n" + fields(2 * MAX_HEADERS) + b"\r\n"
    )
    assert got == [2 * MAX_HEADERS]
