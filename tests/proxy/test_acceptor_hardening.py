"""What an unauthenticated connection may cost the inbound listener: no TLS state before
its first byte, a deadline from accept to a finished handshake, a cap on handshakes at
once, file descriptors kept for upstreams and the admin listener, and freed heap given
back after a burst.

Real sockets against `InboundAcceptor` in this event loop; the memory itself is
measured against a real `gossamer run` process in tests/e2e/test_hardening.py. Every
wait is bounded; every socket is closed in `finally`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gossamer.identity import CertificateAuthority, SpiffeId, generate_private_key, make_csr
from gossamer.identity.tls import client_context, server_context
from gossamer.proxy.dataplane import TRIM_AFTER, TRIM_INTERVAL, DataPlane, HeapTrim
from gossamer.proxy.wire.acceptor import FdBudget, InboundAcceptor
from gossamer.proxy.wire.limits import downstream_fd_ceiling, upstream_fd_ceiling
from tests.proxy.conftest import fast_config, parse_responses, raw_exchange
from tests.proxy.test_acceptor import Greeter

TD = "cluster.local"
WAIT = 5.0  # the longest any test here waits for something that should happen


def _credentials(ca: CertificateAuthority, sa: str) -> tuple[str, bytes]:
    key = generate_private_key()
    identity = SpiffeId(TD, "shop", sa)
    return ca.sign_csr(make_csr(key, identity), identity).chain_pem, key


@dataclass
class Listener:
    """An inbound accept loop made by `start`, with a client it trusts."""

    tmp: Path
    good: ssl.SSLContext | None = None
    acceptors: list[InboundAcceptor] = field(default_factory=list)
    socks: list[socket.socket] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    spawned: int = 0  # tasks started: one per connection that got TLS (or plaintext) state
    _server: ssl.SSLContext | None = None

    def start(self, **options: Any) -> tuple[InboundAcceptor, tuple[str, int]]:
        if self._server is None:
            ca = CertificateAuthority.load_or_create(self.tmp / "ca", TD)
            bundle = ca.trust_bundle_pem()
            self._server = server_context(*_credentials(ca, "echo"), bundle)
            self.good = client_context(*_credentials(ca, "client"), bundle)
        loop = asyncio.get_running_loop()
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        self.socks.append(sock)

        def spawn(coro: Any) -> asyncio.Task[Any]:
            self.spawned += 1
            task = loop.create_task(coro)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return task

        permissive = options.pop("permissive", False)
        acceptor = InboundAcceptor(
            loop, sock, tls_factory=lambda: Greeter(b"tls"),
            plain_factory=lambda: Greeter(b"plain"), context=self._server, spawn=spawn,
            **options,
        )  # fmt: skip
        acceptor.permissive = permissive
        acceptor.start()
        self.acceptors.append(acceptor)
        return acceptor, sock.getsockname()[:2]


@pytest_asyncio.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    made = Listener(tmp_path)
    try:
        yield made
    finally:
        for acceptor in made.acceptors:
            acceptor.close()
        for task in list(made.tasks):
            task.cancel()
        await asyncio.gather(*made.tasks, return_exceptions=True)
        for sock in made.socks:
            sock.close()


@pytest.fixture
def clients() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def idle(stack: ExitStack, address: tuple[str, int], n: int) -> list[socket.socket]:
    """`n` connections that say nothing (closed with the test)."""
    out = []
    for _ in range(n):
        s = stack.enter_context(socket.create_connection(address, timeout=WAIT))
        s.setblocking(False)
        out.append(s)
    return out


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(int(WAIT / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {WAIT}s: {what}")


async def closed_by_server(s: socket.socket) -> bool:
    """Whether the listener closes `s` (EOF or reset) within WAIT."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(WAIT):
            while True:
                data = await loop.sock_recv(s, 4096)
                if not data:
                    return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def greeting(address: tuple[str, int], ctx: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection(*address, ssl=ctx)
    try:
        return await asyncio.wait_for(reader.readline(), WAIT)
    finally:
        writer.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("permissive", [False, True], ids=["STRICT", "PERMISSIVE"])
async def test_idle_connections_get_no_tls_state_until_their_first_byte(
    listener: Listener, clients: ExitStack, permissive: bool
) -> None:
    acceptor, address = listener.start(permissive=permissive)
    idle(clients, address, 50)
    await until(lambda: acceptor.in_handshake == 50, "50 connections accepted")
    # Only watched sockets so far: no TLS protocol, no task, no OpenSSL buffers.
    assert listener.spawned == 0
    assert await greeting(address, listener.good) == b"tls\n"
    assert listener.spawned == 1


@pytest.mark.asyncio
async def test_connections_beyond_the_handshake_limit_are_closed_and_counted(
    listener: Listener, clients: ExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gossamer.proxy")
    acceptor, address = listener.start(max_handshakes=5)
    waiting = idle(clients, address, 5)
    await until(lambda: acceptor.in_handshake == 5, "5 connections accepted")
    over = idle(clients, address, 3)
    for s in over:
        assert await closed_by_server(s)
    assert acceptor.refused_busy == 3
    assert acceptor.in_handshake == 5
    assert "5 connections are in the TLS handshake already (at most 5 at once)" in caplog.text
    # Once they go, a mesh client gets its turn.
    for s in waiting:
        s.close()
    await until(lambda: acceptor.in_handshake == 0, "the idle connections gone")
    assert await greeting(address, listener.good) == b"tls\n"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("permissive", "first_bytes"),
    [
        (False, b""),
        (False, b"\x16\x03\x01"),
        (True, b""),
        (True, b"\x16\x03\x01"),
    ],
    ids=[
        "STRICT, says nothing",
        "STRICT, half a TLS record",
        "PERMISSIVE, says nothing",
        "PERMISSIVE, half a TLS record",
    ],
)
async def test_a_handshake_not_finished_by_the_deadline_is_closed(
    listener: Listener,
    clients: ExitStack,
    caplog: pytest.LogCaptureFixture,
    permissive: bool,
    first_bytes: bytes,
) -> None:
    caplog.set_level(logging.WARNING, logger="gossamer.proxy")
    # The first-byte timeout is longer than the deadline: the deadline covers both.
    acceptor, address = listener.start(
        permissive=permissive, handshake_timeout=0.3, first_byte_timeout=30.0
    )
    [s] = idle(clients, address, 1)
    if first_bytes:
        s.send(first_bytes)
    assert await closed_by_server(s)
    await until(lambda: acceptor.in_handshake == 0, "the handshake slot given back")
    assert acceptor.timed_out == 1
    assert "refused the TLS handshake: no TLS handshake within 0.3s" in caplog.text


@pytest.mark.asyncio
async def test_a_quiet_plaintext_client_still_goes_to_the_quiet_protocol(
    listener: Listener, clients: ExitStack
) -> None:
    """PERMISSIVE: a client waiting for the server to speak first is plaintext, not a
    stalled handshake; the first-byte timeout hands it on, the deadline does not close it."""
    acceptor, address = listener.start(
        permissive=True, handshake_timeout=30.0, first_byte_timeout=0.2,
        quiet_factory=lambda: Greeter(b"quiet"),
    )  # fmt: skip
    [s] = idle(clients, address, 1)
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(s, 100), WAIT) == b"quiet\n"
    await until(lambda: acceptor.in_handshake == 0, "the handshake slot given back")
    assert acceptor.timed_out == 0


@pytest.mark.asyncio
async def test_connections_past_the_descriptor_ceiling_are_closed_at_accept(
    listener: Listener, clients: ExitStack
) -> None:
    budget = FdBudget(1 << 20)
    acceptor, address = listener.start(fds=budget)
    idle(clients, address, 3)
    await until(lambda: acceptor.in_handshake == 3, "3 connections accepted")
    budget.downstream = 0  # as if every descriptor were nearly the last
    for s in idle(clients, address, 3):
        assert await closed_by_server(s)
    assert budget.refused == {"inbound": 3}
    assert acceptor.in_handshake == 3  # those already in are not touched


@pytest.mark.parametrize(
    ("limit", "downstream", "upstream"),
    [(256, 192, 240), (1024, 768, 960), (65536, 49152, 61440)],
)
def test_descriptor_ceilings_leave_room_for_upstreams_and_the_admin_listener(
    limit: int, downstream: int, upstream: int
) -> None:
    assert (downstream_fd_ceiling(limit), upstream_fd_ceiling(limit)) == (downstream, upstream)
    budget = FdBudget(limit)
    assert budget.admit(downstream - 1, "outbound")
    assert not budget.admit(downstream, "outbound")
    assert budget.refused == {"outbound": 1}


def test_freed_heap_is_given_back_after_a_burst_and_not_more_often() -> None:
    trims: list[int] = []
    heap = HeapTrim(lambda: trims.append(1))
    assert not heap.note(TRIM_AFTER - 1, 0.0)
    assert heap.note(TRIM_AFTER, 0.0)
    assert not heap.note(3 * TRIM_AFTER, TRIM_INTERVAL / 2)  # too soon
    assert heap.note(3 * TRIM_AFTER, TRIM_INTERVAL)
    assert not heap.note(3 * TRIM_AFTER + 1, 10 * TRIM_INTERVAL)  # nothing new since
    assert len(trims) == heap.trims == 2
    assert not HeapTrim(None).note(10 * TRIM_AFTER, 0.0)  # no malloc_trim: nothing


def test_the_c_library_gives_back_memory_where_it_can() -> None:
    heap = HeapTrim.from_libc()
    if heap.trim is None:
        pytest.skip("this C library has no malloc_trim")
    assert heap.note(TRIM_AFTER, 0.0)


# ---- the data plane's listeners --------------------------------------------------------


async def admin_get(dp: DataPlane, path: str) -> tuple[int, bytes]:
    assert dp.admin_address is not None
    answer = await raw_exchange(
        dp.admin_address, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
    )
    ((status, _, body),) = parse_responses(answer)
    return status, body


@pytest.mark.asyncio
async def test_past_the_descriptor_ceiling_the_outbound_refuses_and_admin_answers() -> None:
    # As if RLIMIT_NOFILE were 16: every descriptor is past the outbound's ceiling.
    dp = DataPlane(fast_config(fd_limit=16), on_interest=lambda key: None)
    try:
        await dp.start()
        assert dp.outbound_address is not None
        try:
            answer = await raw_exchange(
                dp.outbound_address, b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n"
            )
        except ConnectionResetError:  # closed with the request unread: a reset
            answer = b""
        assert answer == b""  # closed at once, nothing answered
        assert (await admin_get(dp, "/live")) == (200, b"live\n")
        _, metrics = await admin_get(dp, "/metrics")
        assert (
            b'gossamer_connections_refused_total{listener="outbound",reason="fd_limit"} 1\n'
            in metrics
        )
    finally:
        await dp.close()


@pytest.mark.asyncio
async def test_at_the_admin_limit_the_connection_idle_longest_makes_room(
    clients: ExitStack,
) -> None:
    """A new admin connection at the limit takes the place of the one idle longest:
    clients holding every connection, even asking something now and then, cannot keep a
    readiness probe out (it was refused, with the held ones kept)."""
    dp = DataPlane(fast_config(max_admin_connections=2), on_interest=lambda key: None)
    try:
        await dp.start()
        assert dp.admin_address is not None
        loop = asyncio.get_running_loop()
        held = idle(clients, dp.admin_address, 2)
        await until(lambda: len(dp._admin_connections) == 2, "2 admin connections")
        # The second asks something: the first is the one idle longest.
        await loop.sock_sendall(held[1], b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await loop.sock_recv(held[1], 4096)).startswith(b"HTTP/1.1 200")
        status, _ = await admin_get(dp, "/live")  # the liveness probe
        assert status == 200
        assert await closed_by_server(held[0])
        # The one that asked lately is still open and answers.
        await loop.sock_sendall(held[1], b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await loop.sock_recv(held[1], 4096)).startswith(b"HTTP/1.1 200")
        await until(lambda: len(dp._admin_connections) == 1, "the probe's connection closed")
        _, metrics = await admin_get(dp, "/metrics")  # under the limit: nobody evicted
        assert b"gossamer_admin_connections_evicted_total 1\n" in metrics
        assert (
            b'gossamer_connections_refused_total{listener="admin",reason="connection_limit"} 0\n'
            in metrics
        )
    finally:
        await dp.close()
