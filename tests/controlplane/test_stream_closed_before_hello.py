"""A proxy that opens its discovery stream and goes away before its hello (it gave up,
on a loaded host) is no error: the control plane logs one line, not a traceback from
answering a closed stream, and serves the next stream as usual."""

# The fixture `control_plane` comes from tests.e2e.conftest.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from gossamer.identity import tls as identity_tls
from gossamer.xds.bootstrap import EnvoyWorkload, join, register
from tests.e2e.conftest import ControlPlaneProcess, control_plane  # noqa: F401


def test_a_stream_closed_before_its_hello_leaves_no_traceback(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    token = cp.cli("token", "create", "-n", "shop", "--service-account", "web", check=True)
    (tmp_path / "web").mkdir()
    files = join(cp.discovery, token.stdout.strip(), tmp_path / "web")
    register(cp.discovery, files, EnvoyWorkload("web-1", "shop", "web", ("127.0.0.1", 1)))
    ctx = identity_tls.client_context(
        files.chain.read_bytes(), files.key.read_bytes(), files.bundle.read_bytes()
    )
    url = f"https://{cp.discovery}/v1/discovery"

    async def scenario() -> str:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(10):
                async with session.ws_connect(url, ssl=ctx) as ws:
                    await ws.close()  # before any hello
            async with session.ws_connect(url, ssl=ctx) as ws:
                await ws.send_json({"type": "hello", "workload": "web-1", "namespace": "shop"})
                first = await ws.receive_json(timeout=30)
        # aiohttp closes TLS transports a moment after the session: let them finish.
        await asyncio.sleep(0.25)
        return str(first.get("type"))

    assert asyncio.run(scenario()) == "snapshot"
    log = cp.log.read_text()
    assert "closed before its hello" in log
    assert "Traceback" not in log, log[-3000:]
    assert "Error handling request" not in log
