"""Adversarial tests of how HTTP/2 streams end on the default paths every proxy runs,
after decision 0111 changed them: a finished StreamPair's halves point to the `_ENDED`
sentinel (StreamPair._unlink), a carried half's events reach its carrier once per read
(http2.carry), and HTTP/2 from a peer to an HTTP/1.1 app (proxy.inbound.h2to1) has a
response timeout (AppPool.carried, sweep_carried).

Real data planes over real mTLS, with curl and h2load as clients. Multiplexing of
HTTP/1.1 stays off here (the default): what reaches the peer as HTTP/2 is HTTP/2 from the
app. A strict xfail is a defect found here: it turns into a plain test once fixed.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import h2.config
import h2.connection
import h2.events
import pytest

from gossamer.proxy.wire import http2
from gossamer.translate.snapshot import ServicePort, ServiceView
from tests.adversarial.test_h1to2_attacks import ScriptedApp
from tests.proxy import conftest as proxy_conftest
from tests.proxy.conftest import EchoApp, Mesh, curl, server_snapshot

mesh = proxy_conftest.mesh  # the fixture: a client proxy and two echo workloads


@pytest.fixture(autouse=True)
def per_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP/1.1 between the proxies a connection per request (the default), whatever the
    environment says; set before the mesh makes its proxies."""
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "0")


async def h2_get(mesh: Mesh, path: str, limit: float) -> tuple[int, str]:
    """GET over HTTP/2 (h2c prior knowledge) through the client proxy, as an app's
    HTTP/2 client would: (curl's exit code, 'HTTP-version status')."""
    rc, out, _ = await curl(
        "--http2-prior-knowledge",
        "-m",
        f"{limit:g}",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        "-H",
        "Host: echo",
        f"{mesh.proxy_url}{path}",
        timeout=limit + 5,
    )
    return rc, out.decode()


@pytest.mark.asyncio
async def test_an_http2_request_to_an_app_whose_port_moved_still_times_out(
    mesh: Mesh,
) -> None:
    """HTTP/2 from a peer to an HTTP/1.1 app: the request went out, the app never
    answers, and meanwhile a snapshot moves the workload's port to another app port.
    The old AppPool is retired (DataPlane._retire), and its `carried` streams are swept
    by nobody, so the server proxy's response timeout never fires: the client waits on
    (here until curl gives up). An HTTP/1.1 request in the same place gets its 504
    (ServerConnection.sweep runs per connection)."""
    for w in mesh.workloads:
        w.proxy.config.response_timeout = 1.0
    moved = EchoApp("moved")
    port = await moved.start()
    try:
        call = asyncio.ensure_future(h2_get(mesh, "/hang", 4.0))
        await asyncio.sleep(0.5)  # the request is with the app
        for w in mesh.workloads:
            w.proxy.apply_snapshot(server_snapshot(mesh.pki, w.name, port))
        rc, got = await call
    finally:
        await moved.close()
    assert (rc, got) == (0, "2 504")


async def h2load(mesh: Mesh, requests: int, connections: int, streams: int) -> bytes:
    """Run h2load against the client proxy's outbound listener (`:authority: echo`),
    bounded to 30 s; what it printed."""
    host, port = mesh.outbound
    proc = await asyncio.create_subprocess_exec(
        "h2load",
        f"-n{requests}",
        f"-c{connections}",
        f"-m{streams}",
        "-H",
        ":authority: echo",
        f"http://{host}:{port}/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out


@pytest.mark.asyncio
async def test_h2load_through_two_proxies_leaves_no_stream_and_the_sentinel_unchanged(
    mesh: Mesh,
) -> None:
    """h2load sends 400 requests on 4 connections of 25 streams each through both
    proxies (HTTP/2 to the peer, h2to1 to the app): all succeed, every stream is
    forgotten on both sides (`halves`, `carried`), and the shared `_ENDED` pair that
    finished halves point to is still a pair with nothing on it."""
    out = await h2load(mesh, 400, 4, 25)
    assert b"400 succeeded, 0 failed, 0 errored" in out, out.decode()[-600:]
    for _ in range(200):
        servers = [c for w in mesh.workloads for c in w.proxy.h2_connections]
        if not any(c.halves for c in servers) and not any(
            a.carried for w in mesh.workloads for a in w.proxy._apps.values()
        ):
            break
        await asyncio.sleep(0.01)
    assert not any(c.halves for c in mesh.client.peer_links.conns.values())
    assert not any(c.halves for w in mesh.workloads for c in w.proxy.h2_connections)
    assert not any(a.carried for w in mesh.workloads for a in w.proxy._apps.values())
    ended = http2._ENDED
    assert ended.done and ended.status == 0 and ended.on_done is None
    for half in (ended.down, ended.up):
        assert not half.pending and half.conn is None and half.carrier is None


async def h2_call(
    address: tuple[str, int], method: bytes, path: bytes, body: bytes, patience: float
) -> int | None:
    """One request over HTTP/2 (h2c prior knowledge) on a connection of its own: its
    status, or None when no answer came within `patience` seconds (the client then
    leaves, as a gRPC client whose deadline passed does)."""
    reader, writer = await asyncio.open_connection(*address)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    headers = [(b":method", method), (b":scheme", b"http"), (b":authority", b"echo")]
    conn.send_headers(1, [*headers, (b":path", path)], end_stream=not body)
    if body:
        conn.send_data(1, body, end_stream=True)
    writer.write(conn.data_to_send())

    async def answer() -> int:
        status = 0
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers or [])[b":status"])
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return status
            writer.write(conn.data_to_send())
        return status

    try:
        return await asyncio.wait_for(answer(), patience)
    except TimeoutError:
        return None
    finally:
        writer.transport.abort()


@pytest.mark.asyncio
async def test_http2_clients_that_give_up_cost_the_other_callers_of_the_shared_link_nothing(
    mesh: Mesh,
) -> None:
    """150 HTTP/2 clients, each on a connection of its own (under any per-connection
    guard on the client proxy), ask for a slow answer and leave after 0.3 s, as gRPC
    clients with a deadline do; other clients POST to the same peer meanwhile. The client
    proxy cancels each stream on its one connection to the peer, and the peer's
    rapid-reset guard (H2Connection._premature_reset: half of 100 or more streams reset
    within PREMATURE_RESET_LIFETIME) may count the client proxy, which carries every
    workload's calls, as one attacker and drain the link they share with GOAWAY
    ENHANCE_YOUR_CALM. The calls in flight on it finish, and one that crossed the GOAWAY
    was refused unprocessed and is sent again on a new link (RFC 9113 8.1.4; decision
    0112): every POST is answered 200, where those were once cut."""
    only = ServiceView(
        "echo", "default", (ServicePort(80, "http", None, (mesh.workloads[0].endpoint(),)),)
    )
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(only,)))
    mesh.workloads[0].app.delay = 0.5
    assert await h2_call(mesh.outbound, b"GET", b"/", b"", 10.0) == 200
    (link,) = mesh.client.peer_links.conns.values()
    leaving, posts = [], []
    for i in range(150):
        leaving.append(asyncio.ensure_future(h2_call(mesh.outbound, b"GET", b"/hang", b"", 0.3)))
        if i % 5 == 0:
            posts.append(asyncio.ensure_future(h2_call(mesh.outbound, b"POST", b"/p", b"x", 20.0)))
        await asyncio.sleep(0.005)
    assert set(await asyncio.gather(*leaving)) == {None}
    statuses = await asyncio.gather(*posts)
    assert Counter(statuses) == {200: len(posts)}
    assert link.draining or link.closed  # the guard took it: the case this is about


@pytest.mark.asyncio
async def test_an_apps_103_early_hints_reaches_an_http2_client(mesh: Mesh) -> None:
    """An HTTP/2 client (curl, h2c prior knowledge) through two proxies to an HTTP/1.1
    app that sends 103 Early Hints before its 200: the server proxy's h2to1 takes the 103
    as `interim` and sends nothing (H1Exchange.response_head returns for a status under
    200), so the client sees only the 200. An HTTP/1.1 client on the same mesh gets both
    (the per-connection path passes every 1xx on)."""
    app = ScriptedApp(
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    )
    port = await app.start()
    try:
        for w in mesh.workloads:
            w.proxy.apply_snapshot(server_snapshot(mesh.pki, w.name, port))
        rc, out, err = await curl(
            "-v", "--http2-prior-knowledge", "-H", "Host: echo", f"{mesh.proxy_url}/"
        )
    finally:
        await app.close()
    assert (rc, out) == (0, b"ok"), err
    got = [line for line in err.decode().splitlines() if line.startswith("< ")]
    assert got[0].startswith("< HTTP/2 103"), got
    assert "< link: </style.css>; rel=preload" in got


@pytest.mark.asyncio
async def test_a_burst_of_http2_streams_to_a_new_peer_link_is_not_refused(mesh: Mesh) -> None:
    """h2load opens one connection to the client proxy and sends 150 requests on it at
    once, to a peer the client proxy has no connection to yet. They are all attached to
    the new link before the peer's SETTINGS (MAX_CONCURRENT_STREAMS 256) are read; the
    engine holds the peer to RFC 9113's initial assumption of 100, so StreamPair.attach's
    send_headers fails past it and each of those streams is answered 503 "cannot open a
    stream" (gRPC: UNAVAILABLE) at once. On a warm link all 150 go."""
    only = ServiceView(
        "echo", "default", (ServicePort(80, "http", None, (mesh.workloads[0].endpoint(),)),)
    )
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(only,)))
    mesh.workloads[0].app.delay = 0.3  # so that they are all in flight together
    for app_pool in mesh.workloads[0].proxy._apps.values():
        app_pool.timeout = 10.0  # past the echo app's listen backlog (100), on any loop
    out = await h2load(mesh, 150, 1, 150)
    assert b"status codes: 150 2xx, 0 3xx, 0 4xx, 0 5xx" in out, out.decode()[-600:]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "field",
    [b"x-sloppy: v \r\n", b"x-sloppy:\tv\t\r\n", b"Host: a\r\nHost: b\r\nx-sloppy: v\r\n"],
    ids=["a trailing space", "tabs around", "two host fields"],
)
async def test_an_http1_apps_sloppy_header_neither_fails_the_call_nor_ends_the_shared_link(
    mesh: Mesh, field: bytes
) -> None:
    """An HTTP/1.1 app's response field with whitespace after its value (which HTTP/1.1
    parsers keep and RFC 9110 5.5 says is not part of it), or a response with two Host
    fields, called by an HTTP/2 client: the server proxy's h2to1 made HEADERS with it,
    which the client proxy found malformed (RFC 9113 8.2.1) and answered by ending the
    whole link to that peer with PROTOCOL_ERROR, every other caller's streams with it;
    the client got a 502. Now h2to1 sends the value without the whitespace
    (`http2.from_http1`), a Host field in a response is not checked as a request's is,
    and a malformed block is a stream error only."""
    only = ServiceView(
        "echo", "default", (ServicePort(80, "http", None, (mesh.workloads[0].endpoint(),)),)
    )
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(only,)))
    app = ScriptedApp(b"HTTP/1.1 200 OK\r\n" + field + b"content-length: 2\r\n\r\nok")
    port = await app.start()
    try:
        w = mesh.workloads[0]
        w.proxy.apply_snapshot(server_snapshot(mesh.pki, w.name, port))
        links = []
        for _ in range(2):
            rc, out, err = await curl(
                "-v", "--http2-prior-knowledge", "-H", "Host: echo", f"{mesh.proxy_url}/"
            )
            assert (rc, out) == (0, b"ok"), err
            assert "< x-sloppy: v\r" in err.decode() or "< x-sloppy: v\n" in err.decode(), err
            links.append(list(mesh.client.peer_links.conns.values()))
    finally:
        await app.close()
    assert app.requests == 2
    first, second = links
    assert len(first) == 1 and first == second and not first[0].closed  # the same link
