"""The inbound accept loop: refused handshakes say why; PERMISSIVE tells TLS from plaintext."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio

from gossamer.identity import CertificateAuthority, SpiffeId, generate_private_key, make_csr
from gossamer.identity.tls import client_context, server_context
from gossamer.proxy.wire.acceptor import InboundAcceptor, refusal_reason

TD = "cluster.local"


class Greeter(asyncio.Protocol):
    """Answers every connection with one line naming how it arrived."""

    def __init__(self, label: bytes) -> None:
        self.label = label

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are alike to asyncio's, not subclasses.
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(self.label + b"\n")
        writer.close()


@dataclass
class Listener:
    address: tuple[str, int]
    acceptor: InboundAcceptor
    good: ssl.SSLContext  # a client the listener trusts
    foreign: ssl.SSLContext  # a client with a certificate from another CA
    anonymous: ssl.SSLContext  # a client with no certificate


def _credentials(ca: CertificateAuthority, sa: str) -> tuple[str, bytes]:
    key = generate_private_key()
    identity = SpiffeId(TD, "shop", sa)
    return ca.sign_csr(make_csr(key, identity), identity).chain_pem, key


@pytest_asyncio.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", TD)
    other = CertificateAuthority.load_or_create(tmp_path / "other", TD)
    bundle = ca.trust_bundle_pem()
    server = server_context(*_credentials(ca, "echo"), bundle)
    loop = asyncio.get_running_loop()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any) -> asyncio.Task[Any]:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    acceptor = InboundAcceptor(
        loop, sock, tls_factory=lambda: Greeter(b"tls"), plain_factory=lambda: Greeter(b"plain"),
        context=server, handshake_timeout=5.0, spawn=spawn,
    )  # fmt: skip
    acceptor.start()
    try:
        yield Listener(
            sock.getsockname()[:2],
            acceptor,
            client_context(*_credentials(ca, "client"), bundle),
            client_context(*_credentials(other, "client"), bundle),
            client_context(None, None, bundle),
        )
    finally:
        acceptor.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()


async def greeting(address: tuple[str, int], ctx: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection(*address, ssl=ctx)
    try:
        if ctx is None:
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_a_mesh_client_completes_the_handshake(listener: Listener) -> None:
    assert await greeting(listener.address, listener.good) == b"tls\n"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("foreign", "does not chain to a root in this proxy's trust bundle"),
        ("anonymous", "the client presented no certificate"),
    ],
    ids=["a certificate from another root", "no certificate"],
)
async def test_a_refused_handshake_is_logged_with_its_reason(
    listener: Listener, client: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gossamer.proxy")
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        line = await greeting(listener.address, getattr(listener, client))
        if not line:  # TLS 1.3: the client may learn of the refusal only when reading
            raise ConnectionError("closed")
    for _ in range(50):
        if reason in caplog.text:
            break
        await asyncio.sleep(0.02)
    assert "refused the TLS handshake" in caplog.text
    assert reason in caplog.text


@pytest.mark.asyncio
async def test_strict_mode_refuses_plaintext_and_says_so(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gossamer.proxy")
    assert await greeting(listener.address, None) == b""
    for _ in range(50):
        if "plaintext HTTP, not TLS" in caplog.text:
            break
        await asyncio.sleep(0.02)
    assert "plaintext HTTP, not TLS (mTLS mode is STRICT)" in caplog.text


@pytest.mark.asyncio
async def test_permissive_mode_serves_plaintext_and_tls_on_one_port(listener: Listener) -> None:
    listener.acceptor.permissive = True
    assert await greeting(listener.address, None) == b"plain\n"
    assert await greeting(listener.address, listener.good) == b"tls\n"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TimeoutError(), "no TLS handshake in time"),
        (ssl.SSLError(1, "x"), "TLS error"),
    ],
    ids=["a timeout", "an unknown TLS error"],
)
def test_refusal_reasons_name_the_cause(error: BaseException, reason: str) -> None:
    assert reason in refusal_reason(error)
