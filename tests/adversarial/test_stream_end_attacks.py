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

import pytest

from gossamer.proxy.wire import http2
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
@pytest.mark.xfail(
    strict=True,
    reason="h2to1: a stream whose app pool a snapshot retired (the app's port moved) never "
    "gets its 504: DataPlane._sweep calls sweep_carried on self._apps only",
)
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


@pytest.mark.asyncio
async def test_h2load_through_two_proxies_leaves_no_stream_and_the_sentinel_unchanged(
    mesh: Mesh,
) -> None:
    """h2load sends 400 requests on 4 connections of 25 streams each through both
    proxies (HTTP/2 to the peer, h2to1 to the app): all succeed, every stream is
    forgotten on both sides (`halves`, `carried`), and the shared `_ENDED` pair that
    finished halves point to is still a pair with nothing on it."""
    host, port = mesh.outbound
    proc = await asyncio.create_subprocess_exec(
        "h2load",
        "-n400",
        "-c4",
        "-m25",
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
