"""End to end: curl → client proxy (outbound) → mTLS → echo proxy (inbound) → echo app.

All in this test's event loop, on ephemeral ports, with certificates from a real
gossamer.identity CA.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.forward.connect import PeerPool
from gossamer.translate.snapshot import Endpoint, ServicePort, ServiceView
from tests.proxy.conftest import (
    Mesh,
    Pki,
    curl,
    fast_config,
    parse_responses,
    raw_exchange,
    server_snapshot,
)


@pytest.fixture(autouse=True, params=["streams", "connections"])
def carriage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs twice: HTTP/1.1 carried between the proxies with a connection
    per request (the default), and as streams on one HTTP/2 connection per peer
    (GOSSAMER_MULTIPLEX_HTTP1=1, proxy.outbound.h1to2). Set before the mesh fixture
    makes its proxies."""
    monkeypatch.setenv("GOSSAMER_MULTIPLEX_HTTP1", "1" if request.param == "streams" else "0")
    return str(request.param)


def peer_ssl_objects(mesh: Mesh, carriage: str) -> list[object]:
    """The TLS objects of the client proxy's open connections to its peers."""
    if carriage == "streams":
        links = mesh.client.peer_links.conns.values()
        return [c.transport.get_extra_info("ssl_object") for c in links if c.transport]
    pools = [pool for pool, _ in mesh.client._peers.values()]
    return [u.transport.get_extra_info("ssl_object") for pool in pools for u in pool.idle]


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def echo_json(out: bytes) -> dict[str, object]:
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def headers_of(body: dict[str, object]) -> dict[str, str]:
    pairs = body["headers"]
    assert isinstance(pairs, list)
    return {k.lower(): v for k, v in pairs}


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name) : line.rindex("}") + 1]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def admin_get(dp: DataPlane, path: str) -> tuple[int, bytes]:
    assert dp.admin_address is not None
    data = await raw_exchange(
        dp.admin_address,
        f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode(),
    )
    ((status, _, body),) = parse_responses(data)
    return status, body


# ---- routing ------------------------------------------------------------------------


HOSTS = ["echo", "echo:80", "echo.default", "echo.default.svc", "echo.default.svc.cluster.local:80"]


@pytest.mark.asyncio
@pytest.mark.parametrize("host", HOSTS)
async def test_curl_reaches_an_echo_workload_by_any_host_form(mesh: Mesh, host: str) -> None:
    rc, out, err = await curl("-H", f"Host: {host}", f"{mesh.proxy_url}/hello?x=1")
    assert rc == 0, err
    body = echo_json(out)
    assert body["instance"] in ("echo-1", "echo-2")
    assert body["path"] == "/hello?x=1"
    assert headers_of(body)["host"] == host


@pytest.mark.asyncio
async def test_curl_through_the_proxy_as_http_proxy_sends_origin_form(mesh: Mesh) -> None:
    rc, out, err = await curl("--proxy", mesh.proxy_url, "http://echo.default/a/b?c=d")
    assert rc == 0, err
    body = echo_json(out)
    assert body["path"] == "/a/b?c=d"
    assert headers_of(body)["host"] == "echo.default"


@pytest.mark.asyncio
async def test_requests_are_spread_over_both_workloads_on_pooled_connections(mesh: Mesh) -> None:
    urls = [f"{mesh.proxy_url}/{i}" for i in range(40)]
    rc, out, err = await curl("-H", "Host: echo", *urls)
    assert rc == 0, err
    seen = re.findall(rb'"instance": "(echo-\d)"', out)
    assert len(seen) == 40
    assert set(seen) == {b"echo-1", b"echo-2"}
    # Keep-alive connections were reused, not opened per request.
    assert sum(w.app.connections for w in mesh.workloads) < 10


@pytest.mark.asyncio
async def test_the_app_sees_forwarded_for_but_no_hop_by_hop_or_gossamer_headers(mesh: Mesh) -> None:
    rc, out, err = await curl(
        "-H", "Host: echo",
        "-H", "Connection: keep-alive, X-Hop",
        "-H", "X-Hop: secret",
        "-H", "Keep-Alive: timeout=5",
        "-H", "TE: trailers",
        "-H", "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "-H", "gossamer-src-service: forged",
        "-H", "X-Forwarded-For: 192.0.2.1",
        "-H", "Forwarded: for=192.0.2.1",
        "-H", "X-End-To-End: kept",
        f"{mesh.proxy_url}/",
    )  # fmt: skip
    assert rc == 0, err
    headers = headers_of(echo_json(out))
    for name in ("x-hop", "keep-alive", "te", "proxy-authorization", "gossamer-src-service"):
        assert name not in headers
    assert headers["x-forwarded-for"] == "192.0.2.1, 127.0.0.1"
    assert headers["forwarded"] == "for=192.0.2.1"
    assert headers["x-end-to-end"] == "kept"


# ---- bodies -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_large_upload_streams_to_the_app(mesh: Mesh, tmp_path: Path) -> None:
    data = os.urandom(6 * 1024 * 1024)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)
    rc, out, err = await curl(
        "-H", "Host: echo", "--data-binary", f"@{upload}", f"{mesh.proxy_url}/upload"
    )  # fmt: skip
    assert rc == 0, err
    body = echo_json(out)
    assert body["body_length"] == len(data)
    assert body["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert "content-length" in headers_of(body)


@pytest.mark.asyncio
async def test_a_chunked_upload_streams_back_chunked(mesh: Mesh, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)
    rc, out, err = await curl(
        "-H", "Host: echo",
        "-H", "Transfer-Encoding: chunked",
        "--data-binary", f"@{upload}",
        "--dump-header", str(tmp_path / "headers"),
        f"{mesh.proxy_url}/stream",
    )  # fmt: skip
    assert rc == 0, err
    assert out == data
    assert "transfer-encoding: chunked" in (tmp_path / "headers").read_text().lower()


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/bytes", "/chunked"])
async def test_a_large_download_streams_to_the_client(mesh: Mesh, path: str) -> None:
    n = 8 * 1024 * 1024
    rc, out, err = await curl("-H", "Host: echo", f"{mesh.proxy_url}{path}?n={n}")
    assert rc == 0, err
    assert out == b"x" * n


@pytest.mark.asyncio
async def test_a_close_delimited_response_reaches_an_http11_client_chunked(mesh: Mesh) -> None:
    data = await raw_exchange(
        mesh.outbound, b"GET /close HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n"
    )
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"15\r\nclosed-delimited body\r\n0\r\n\r\n"


# ---- HTTP/1.x semantics -------------------------------------------------------------


@pytest.mark.asyncio
async def test_pipelined_requests_are_answered_in_order(mesh: Mesh) -> None:
    requests = (
        b"".join(b"GET /%d HTTP/1.1\r\nHost: echo\r\n\r\n" % i for i in range(5))
        + b"GET /last HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n"
    )
    responses = parse_responses(await raw_exchange(mesh.outbound, requests))
    assert [json.loads(b)["path"] for _, _, b in responses] == [
        *(f"/{i}" for i in range(5)),
        "/last",
    ]
    assert responses[-1][1]["connection"] == "close"


@pytest.mark.asyncio
async def test_http10_gets_a_closed_connection_and_no_chunking(mesh: Mesh) -> None:
    data = await raw_exchange(mesh.outbound, b"GET /chunked?n=10 HTTP/1.0\r\nHost: echo\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"x" * 10


@pytest.mark.asyncio
async def test_http10_keep_alive_is_honoured(mesh: Mesh) -> None:
    reader, writer = await asyncio.open_connection(*mesh.outbound)
    try:
        for _ in range(2):
            writer.write(b"GET /bytes?n=3 HTTP/1.0\r\nHost: echo\r\nConnection: keep-alive\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"connection: keep-alive" in head.lower()
            assert await reader.readexactly(3) == b"xxx"
    finally:
        writer.transport.abort()


@pytest.mark.asyncio
async def test_head_responses_have_no_body_and_the_connection_stays_usable(mesh: Mesh) -> None:
    requests = (
        b"HEAD /h HTTP/1.1\r\nHost: echo\r\n\r\n"
        b"GET /g HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n"
    )
    data = await raw_exchange(mesh.outbound, requests)
    first, _, rest = data.partition(b"\r\n\r\n")
    assert b"content-length:" in first.lower()
    assert rest.startswith(b"HTTP/1.1 200")
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["path"] == "/g"


@pytest.mark.asyncio
async def test_connection_close_is_honoured(mesh: Mesh) -> None:
    data = await raw_exchange(
        mesh.outbound, b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n"
    )
    ((status, headers, _),) = parse_responses(data)
    assert (status, headers["connection"]) == (200, "close")


MALFORMED = [
    ("bad request line", b"GET /\r\n\r\n", 400),
    (
        "conflicting content lengths",
        b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
    ),
    (
        "content length with transfer encoding",
        b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("no host", b"GET / HTTP/1.1\r\n\r\n", 400),
    (
        "oversized headers",
        b"GET / HTTP/1.1\r\nHost: echo\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n",
        431,
    ),
    ("binary garbage", b"\x00\x01\x02\x03\r\n\r\n", 400),
    ("an https URL", b"GET https://echo/ HTTP/1.1\r\nHost: echo\r\n\r\n", 400),
    (
        "a bad chunk after a good head",
        b"POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
        400,
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("data", "status"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
async def test_a_malformed_request_gets_an_error_and_a_closed_connection(
    mesh: Mesh, data: bytes, status: int
) -> None:
    reply = await raw_exchange(mesh.outbound, data)  # returns only once the proxy closes
    ((got, headers, _),) = parse_responses(reply)
    assert got == status
    assert headers["gossamer-error"]
    assert headers["connection"] == "close"


@pytest.mark.asyncio
async def test_a_malformed_request_after_a_good_one_is_answered_after_it(mesh: Mesh) -> None:
    data = b"GET /ok HTTP/1.1\r\nHost: echo\r\n\r\nGET /\r\n\r\n"
    responses = parse_responses(await raw_exchange(mesh.outbound, data))
    assert [s for s, _, _ in responses] == [200, 400]


# ---- failures -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_unknown_host_asks_the_control_plane_once_then_says_no_route(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    mesh.client.config.interest_timeout = 0.3
    for _ in range(2):
        rc, out, err = await curl("-i", "-H", "Host: nothing.default", f"{mesh.proxy_url}/")
        assert rc == 0, err
        assert out.startswith(b"HTTP/1.1 503")
        assert b"gossamer-error: no route for host nothing.default" in out
    assert mesh.interests_asked == ["nothing.default"]
    logged = [r for r in caplog.records if r.name == "gossamer.proxy"]
    assert any("no route for host nothing.default" in r.getMessage() for r in logged)


@pytest.mark.asyncio
async def test_a_host_the_control_plane_then_knows_is_routed_without_waiting_out(
    mesh: Mesh,
) -> None:
    mesh.client.config.interest_timeout = 10.0
    request = asyncio.ensure_future(curl("-H", "Host: late.default", f"{mesh.proxy_url}/x"))
    for _ in range(100):
        if mesh.interests_asked:
            break
        await asyncio.sleep(0.01)
    assert mesh.interests_asked == ["late.default"]
    echo = mesh.client_snapshot().services[0]
    late = ServiceView("late", "default", echo.ports)
    mesh.client.apply_snapshot(
        mesh.client_snapshot(services=(echo, late), interests=("late.default",))
    )
    rc, out, err = await asyncio.wait_for(request, 5)
    assert rc == 0, err
    assert echo_json(out)["path"] == "/x"


@pytest.mark.asyncio
async def test_a_service_the_control_plane_says_does_not_exist_fails_at_once(mesh: Mesh) -> None:
    mesh.client.apply_snapshot(mesh.client_snapshot(interests=("gone.default",)))
    _, out, _ = await curl("-i", "-H", "Host: gone.default", f"{mesh.proxy_url}/")
    assert out.startswith(b"HTTP/1.1 503")
    assert b"gossamer-error: no route for host gone.default" in out
    assert mesh.interests_asked == []


@pytest.mark.asyncio
async def test_a_service_without_endpoints_says_so(mesh: Mesh) -> None:
    empty = ServiceView("echo", "default", (ServicePort(80, "http", None, ()),))
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(empty,)))
    _, out, _ = await curl("-i", "-H", "Host: echo", f"{mesh.proxy_url}/")
    assert out.startswith(b"HTTP/1.1 503")
    assert b"gossamer-error: no endpoints for echo.default:80" in out


@pytest.mark.asyncio
async def test_a_peer_with_the_wrong_identity_is_refused(mesh: Mesh) -> None:
    impostor = "spiffe://cluster.local/ns/default/sa/payments"
    endpoint = mesh.workloads[0].endpoint(identity=impostor)
    svc = ServiceView("echo", "default", (ServicePort(80, "http", None, (endpoint,)),))
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(svc,)))
    _, out, _ = await curl("-i", "-H", "Host: echo", f"{mesh.proxy_url}/")
    assert out.startswith(b"HTTP/1.1 502")
    expected = (
        f"gossamer-error: TLS identity mismatch (expected {impostor}, "
        f"got {mesh.workloads[0].identity})"
    )
    assert expected.encode() in out


@pytest.mark.asyncio
async def test_a_refused_endpoint_is_taken_out_and_no_request_fails(mesh: Mesh) -> None:
    dead = Endpoint(
        "dead-1", "default", "127.0.0.1", closed_port(), 8080, mesh.workloads[0].identity
    )
    good = mesh.workloads[0].endpoint()
    svc = ServiceView("echo", "default", (ServicePort(80, "http", None, (dead, good)),))
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(svc,)))
    urls = [f"{mesh.proxy_url}/{i}" for i in range(30)]
    rc, out, err = await curl("--fail-with-body", "-H", "Host: echo", *urls)
    assert rc == 0, err
    assert re.findall(rb'"instance": "(echo-\d)"', out) == [b"echo-1"] * 30
    load = mesh.client._peers[dead][1]
    assert load.failures >= 1
    assert load.retry_at > asyncio.get_running_loop().time()


@pytest.mark.asyncio
async def test_the_only_endpoint_refusing_gives_connect_refused(mesh: Mesh) -> None:
    port = closed_port()
    dead = Endpoint("dead-1", "default", "127.0.0.1", port, 8080, mesh.workloads[0].identity)
    svc = ServiceView("echo", "default", (ServicePort(80, "http", None, (dead,)),))
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(svc,)))
    _, out, _ = await curl("-i", "-H", "Host: echo", f"{mesh.proxy_url}/")
    assert out.startswith(b"HTTP/1.1 502")
    assert f"gossamer-error: connect refused by 127.0.0.1:{port}".encode() in out


@pytest.mark.asyncio
async def test_an_app_that_is_not_listening_is_named(mesh: Mesh, pki: Pki) -> None:
    port = closed_port()
    server = mesh.workloads[0].proxy
    server.apply_snapshot(server_snapshot(pki, "echo-1", port))
    svc = ServiceView(
        "echo", "default", (ServicePort(80, "http", None, (mesh.workloads[0].endpoint(),)),)
    )
    mesh.client.apply_snapshot(mesh.client_snapshot(services=(svc,)))
    _, out, _ = await curl("-i", "-H", "Host: echo", f"{mesh.proxy_url}/")
    assert out.startswith(b"HTTP/1.1 502")
    assert f"gossamer-error: app not listening on 127.0.0.1:{port}".encode() in out


@pytest.mark.asyncio
async def test_an_app_that_never_answers_times_out(mesh: Mesh) -> None:
    for w in mesh.workloads:
        w.proxy.config.response_timeout = 0.2
    _, out, _ = await curl("-i", "-H", "Host: echo", f"{mesh.proxy_url}/hang")
    assert out.startswith(b"HTTP/1.1 504")
    assert b"gossamer-error: upstream timeout: app on 127.0.0.1:" in out


# ---- TLS ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_connection_between_proxies_is_tls13_with_alpn(mesh: Mesh, carriage: str) -> None:
    rc, _, err = await curl("-H", "Host: echo.default", f"{mesh.proxy_url}/")
    assert rc == 0, err
    (ssl_object,) = peer_ssl_objects(mesh, carriage)
    assert ssl_object.version() == "TLSv1.3"  # type: ignore[attr-defined]
    alpn = "gossamer/h2" if carriage == "streams" else "gossamer/h1"
    assert ssl_object.selected_alpn_protocol() == alpn  # type: ignore[attr-defined]
    pools = [pool for pool, _ in mesh.client._peers.values()]
    assert all(isinstance(pool, PeerPool) for pool in pools)
    assert ssl_object.server_hostname in {  # type: ignore[attr-defined]
        f"p8080.{pool.endpoint.workload}.default.gossamer" for pool in pools
    }


@pytest.mark.asyncio
async def test_concurrent_requests_share_one_connection_to_a_peer(
    mesh: Mesh, carriage: str
) -> None:
    """Streams: 20 requests at once from 20 client connections reach one endpoint over
    a single mTLS connection; without, over as many connections as were in flight."""
    mesh.client.apply_snapshot(
        mesh.client_snapshot(
            services=(
                ServiceView(
                    "echo",
                    "default",
                    (ServicePort(80, "http", None, (mesh.workloads[0].endpoint(),)),),
                ),
            )
        )
    )
    mesh.workloads[0].app.delay = 0.2  # so that all 20 are in flight together
    results = await asyncio.gather(
        *[curl("-H", "Host: echo", f"{mesh.proxy_url}/?i={i}") for i in range(20)]
    )
    assert all(rc == 0 for rc, _, _ in results), [err for _, _, err in results]
    served = mesh.workloads[0].proxy
    peers = len(peer_ssl_objects(mesh, carriage))
    if carriage == "streams":
        assert peers == 1
        assert len(served.h2_connections) == 1
    else:
        assert peers > 1
        assert not served.h2_connections


async def s_client(port: int, *args: str, send: bytes) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
        "-servername", "p8080.echo-1.default.gossamer", "-alpn", "gossamer/h1",
        "-ign_eof", *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(send), 10)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode("latin-1")


REQUEST = b"GET /tls HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n"


@pytest.mark.asyncio
async def test_s_client_with_a_mesh_certificate_gets_an_answer_over_tls13(
    mesh: Mesh, pki: Pki, tmp_path: Path
) -> None:
    creds = pki.issue("default", "web")
    (tmp_path / "cert.pem").write_bytes(creds.chain_pem)
    (tmp_path / "key.pem").write_bytes(creds.key_pem)
    (tmp_path / "ca.pem").write_bytes(creds.bundle_pem)
    port = mesh.workloads[0].endpoint().inbound_port
    _, out = await s_client(
        port,
        "-cert", str(tmp_path / "cert.pem"),
        "-cert_chain", str(tmp_path / "cert.pem"),
        "-key", str(tmp_path / "key.pem"),
        "-CAfile", str(tmp_path / "ca.pem"),
        send=REQUEST,
    )  # fmt: skip
    assert "TLSv1.3" in out
    assert "HTTP/1.1 200 OK" in out
    assert '"instance": "echo-1"' in out


@pytest.mark.asyncio
async def test_s_client_presenting_only_its_leaf_is_verified_through_our_intermediate(
    mesh: Mesh, pki: Pki, tmp_path: Path
) -> None:
    creds = pki.issue("default", "web")
    (tmp_path / "chain.pem").write_bytes(creds.chain_pem)
    (tmp_path / "key.pem").write_bytes(creds.key_pem)
    port = mesh.workloads[0].endpoint().inbound_port
    _, out = await s_client(
        port, "-cert", str(tmp_path / "chain.pem"), "-key", str(tmp_path / "key.pem"), send=REQUEST
    )
    assert "HTTP/1.1 200 OK" in out


@pytest.mark.asyncio
async def test_s_client_without_a_certificate_gets_no_response(mesh: Mesh) -> None:
    port = mesh.workloads[0].endpoint().inbound_port
    _, out = await s_client(port, send=REQUEST)
    assert "HTTP/1.1" not in out
    assert '"instance"' not in out


@pytest.mark.asyncio
async def test_s_client_with_a_certificate_from_another_root_gets_no_response(
    mesh: Mesh, other_pki: Pki, tmp_path: Path
) -> None:
    creds = other_pki.issue("default", "web")
    (tmp_path / "cert.pem").write_bytes(creds.chain_pem)
    (tmp_path / "key.pem").write_bytes(creds.key_pem)
    port = mesh.workloads[0].endpoint().inbound_port
    cert = str(tmp_path / "cert.pem")
    _, out = await s_client(
        port, "-cert", cert, "-cert_chain", cert, "-key", str(tmp_path / "key.pem"), send=REQUEST
    )
    assert "HTTP/1.1" not in out
    assert '"instance"' not in out


@pytest.mark.asyncio
async def test_renewed_credentials_serve_new_connections(
    mesh: Mesh, pki: Pki, carriage: str
) -> None:
    rc, _, err = await curl("-H", "Host: echo", f"{mesh.proxy_url}/before")
    assert rc == 0, err
    renewed = pki.issue("default", "echo", fresh=True)
    for w in mesh.workloads:
        w.proxy.set_credentials(renewed)
    mesh.client.set_credentials(pki.issue("default", "web", fresh=True))
    for pool, _ in mesh.client._peers.values():
        for upstream in list(pool.idle):
            upstream.close()
    for link in list(mesh.client.peer_links.conns.values()):
        link.close()
    await asyncio.sleep(0.05)
    rc, out, err = await curl("-H", "Host: echo", f"{mesh.proxy_url}/renewed")
    assert rc == 0, err
    assert echo_json(out)["path"] == "/renewed"
    # The inbound listener presented the renewed certificate on the new connection.
    (ssl_object,) = peer_ssl_objects(mesh, carriage)
    der = ssl_object.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    leaf = x509.load_pem_x509_certificates(renewed.chain_pem)[0]
    assert der == leaf.public_bytes(serialization.Encoding.DER)


# ---- metrics and admin --------------------------------------------------------------


@pytest.mark.asyncio
async def test_metrics_count_requests_with_their_labels_on_both_sides(mesh: Mesh) -> None:
    n = 12
    rc, _, err = await curl("-H", "Host: echo", *[f"{mesh.proxy_url}/{i}" for i in range(n)])
    assert rc == 0, err
    await curl("-H", "Host: echo", f"{mesh.proxy_url}/bytes?n=1", "-X", "PUT", "-o", "/dev/null")
    status, body = await admin_get(mesh.client, "/metrics")
    assert status == 200
    text = body.decode()
    outbound = {
        "direction": "outbound",
        "src_namespace": "default",
        "src_service": "web",
        "dst_namespace": "default",
        "dst_service": "echo",
        "tls": "true",
    }
    assert metric(text, "gossamer_requests_total", **outbound, code="200") == n + 1
    assert metric(text, "gossamer_request_duration_seconds_count", **outbound, code="200") == n + 1
    assert metric(text, "gossamer_request_duration_seconds_bucket", **outbound, le="+Inf") == n + 1
    assert metric(text, "gossamer_request_duration_seconds_bucket", **outbound, le="10") == n + 1
    inbound = 0.0
    for w in mesh.workloads:
        _, body = await admin_get(w.proxy, "/metrics")
        inbound += metric(
            body.decode(),
            "gossamer_requests_total",
            direction="inbound",
            src_namespace="default",
            src_service="web",
            dst_namespace="default",
            dst_service="echo",
            code="200",
            tls="true",
        )
    assert inbound == n + 1


@pytest.mark.asyncio
async def test_errors_are_counted_too(mesh: Mesh) -> None:
    mesh.client.apply_snapshot(mesh.client_snapshot(interests=("gone.default",)))
    await curl("-H", "Host: gone.default", f"{mesh.proxy_url}/")
    _, body = await admin_get(mesh.client, "/metrics")
    assert metric(body.decode(), "gossamer_requests_total", direction="outbound", code="503") == 1


@pytest.mark.asyncio
async def test_admin_reports_readiness_liveness_and_config(mesh: Mesh, pki: Pki) -> None:
    assert await admin_get(mesh.client, "/ready") == (200, b"ready\n")
    assert await admin_get(mesh.client, "/live") == (200, b"live\n")
    status, body = await admin_get(mesh.client, "/config")
    config = json.loads(body)
    assert status == 200
    assert config["snapshot"]["proxy"]["workload"] == "web-1"
    assert config["addresses"]["outbound"] == list(mesh.outbound)
    mesh.client.add_readiness_check(lambda: "control plane unreachable")
    mesh.client.add_config_section("agent", lambda: {"control_plane": "down"})
    assert await admin_get(mesh.client, "/ready") == (503, b"control plane unreachable\n")
    _, body = await admin_get(mesh.client, "/config")
    assert json.loads(body)["agent"] == {"control_plane": "down"}


@pytest.mark.asyncio
async def test_a_fresh_proxy_is_not_ready_and_says_why() -> None:
    dp = DataPlane(fast_config(), on_interest=lambda key: None)
    try:
        await dp.start()
        assert not dp.ready
        status, body = await admin_get(dp, "/ready")
        assert status == 503
        assert b"no configuration from the control plane yet" in body
        assert b"no certificate yet" in body
    finally:
        await dp.close()
