"""The admin listener's connection limit (proxy.observe.admin), one module alone: who
makes room for a new connection at the limit. End to end: test_acceptor_hardening."""

from __future__ import annotations

from gossamer.proxy.observe.admin import AdminConnection, Page


class Transport:
    """What AdminConnection asks of a transport, recording the abort."""

    def __init__(self) -> None:
        self.aborted = False
        self.buffered = 0  # bytes of an answer the client has not read yet

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def write(self, data: bytes) -> None:
        pass


def _page(method: bytes, path: bytes) -> Page:
    return 200, "text/plain", b"ok\n"


class Counts:
    def __init__(self) -> None:
        self.refused = 0
        self.evicted = 0

    def refuse(self) -> None:
        self.refused += 1

    def evict(self) -> None:
        self.evicted += 1


def _connect(
    registry: set[AdminConnection], counts: Counts, answered_at: float = 0.0
) -> tuple[AdminConnection, Transport]:
    conn = AdminConnection(
        _page, registry, max_connections=2, on_refused=counts.refuse, on_evicted=counts.evict
    )
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.answered_at = answered_at
    return conn, transport


def _streaming(conn: AdminConnection) -> None:
    conn.on_lost = lambda: None  # what a /tap stream sets while it holds the connection


def test_the_connection_idle_longest_makes_room() -> None:
    registry: set[AdminConnection] = set()
    counts = Counts()
    _, older_t = _connect(registry, counts, answered_at=100.0)
    newer, newer_t = _connect(registry, counts, answered_at=200.0)

    third, third_t = _connect(registry, counts)

    assert older_t.aborted and not newer_t.aborted and not third_t.aborted
    assert registry == {newer, third}
    assert (counts.evicted, counts.refused) == (1, 0)


def test_a_streaming_connection_is_not_taken_however_long_it_has_been() -> None:
    registry: set[AdminConnection] = set()
    counts = Counts()
    tap, tap_t = _connect(registry, counts, answered_at=1.0)
    _streaming(tap)
    idle, idle_t = _connect(registry, counts, answered_at=500.0)

    _, third_t = _connect(registry, counts)

    assert idle_t.aborted and not tap_t.aborted and not third_t.aborted
    assert tap in registry and idle not in registry
    assert counts.evicted == 1


def test_when_every_connection_streams_the_new_one_is_refused() -> None:
    registry: set[AdminConnection] = set()
    counts = Counts()
    held = [_connect(registry, counts) for _ in range(2)]
    for conn, _ in held:
        _streaming(conn)

    third, third_t = _connect(registry, counts)

    assert third_t.aborted and third not in registry
    assert not any(t.aborted for _, t in held)
    assert (counts.evicted, counts.refused) == (0, 1)


def test_a_connection_still_sending_an_answer_is_taken_last() -> None:
    """A scraper still reading a large answer it asked long ago is not cut off while a
    connection with nothing left to send is there to take."""
    registry: set[AdminConnection] = set()
    counts = Counts()
    _, scraper_t = _connect(registry, counts, answered_at=1.0)
    scraper_t.buffered = 1_000_000
    _, idle_t = _connect(registry, counts, answered_at=500.0)

    _connect(registry, counts)

    assert idle_t.aborted and not scraper_t.aborted
    assert counts.evicted == 1


def test_when_every_connection_is_still_sending_the_one_idle_longest_goes() -> None:
    registry: set[AdminConnection] = set()
    counts = Counts()
    _, older_t = _connect(registry, counts, answered_at=1.0)
    _, newer_t = _connect(registry, counts, answered_at=500.0)
    older_t.buffered = newer_t.buffered = 1_000_000

    _, third_t = _connect(registry, counts)

    assert older_t.aborted and not newer_t.aborted and not third_t.aborted
    assert (counts.evicted, counts.refused) == (1, 0)
