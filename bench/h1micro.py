#!/usr/bin/env python3
"""The CPU an HTTP/1.1 keep-alive request costs two Gossamer proxies, in one process.

The whole of bench/run.py's gossamer path, without wrk, nginx or other processes: a
client proxy (outbound) and a server proxy (inbound) as `DataPlane`s in one uvloop
loop, mTLS 1.3 between them over loopback with certificates from a gossamer.identity
CA, a minimal keep-alive backend answering what nginx answers in the benchmark, and a
closed-loop client on `--connections` keep-alive connections sending what wrk sends.
The same requests are also made from the client to the backend directly; the
difference, divided by the number of requests, is what the two proxies spent on each
(real sockets, TLS, parsing, the exchange, routing, balancing, metrics). Process CPU
time, min and median of ``--repeat``: far steadier on a shared machine than the
end-to-end benchmark, which it does not replace. Halved, it is comparable to
bench/run.py's CPU per request per proxy, though not equal: there the proxies run on
two cores and wake once per read.

    .venv/bin/python bench/h1micro.py --requests 20000 --connections 16
    PYTHONPATH=/elsewhere/src .venv/bin/python bench/h1micro.py   # another version
    .venv/bin/python bench/h1micro.py --profile /tmp/h1.prof      # cProfile of the proxied runs
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

try:
    import httptools
    import uvloop

    from gossamer.identity.ca import CertificateAuthority
    from gossamer.identity.csr import generate_private_key, make_csr
    from gossamer.identity.spiffe import SpiffeId
    from gossamer.proxy.dataplane import Credentials, DataPlane, DataPlaneConfig
    from gossamer.translate.snapshot import (
        Endpoint,
        LocalPort,
        ProxySelf,
        ServicePort,
        ServiceView,
        Snapshot,
    )
except ModuleNotFoundError as err:
    sys.exit(f"h1micro: {err}; run it with the project's environment: .venv/bin/python")

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "bench"
LOCAL = ("127.0.0.1", 0)
# What wrk sends in bench/run.py, and what nginx answers it.
REQUEST = b"GET / HTTP/1.1\r\nHost: echo.bench\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 05 Dec 2026 06:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n"
)


class Backend(asyncio.Protocol):
    """Answers each request head (no bodies: GETs) with RESPONSE."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        heads = data.count(b"\r\n\r\n")
        self.pending = data[data.rfind(b"\r\n\r\n") + 4 :] if heads else data
        if heads:
            self.transport.write(RESPONSE * heads)


class Client(asyncio.Protocol):
    """One keep-alive connection sending REQUEST each time the previous answer ends."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() != 200:
            self.run.failed(f"status {self.parser.get_status_code()}")
        self.run.answered(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.run.done.done():
            self.run.failed(f"connection lost: {exc}")

    def send(self) -> None:
        self.transport.write(REQUEST)


class Run:
    """`requests` requests over the clients, closed loop."""

    def __init__(self, requests: int) -> None:
        self.left = requests
        self.outstanding = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self, clients: list[Client]) -> None:
        for c in clients:
            self._next(c)

    def _next(self, c: Client) -> None:
        if self.left > 0:
            self.left -= 1
            self.outstanding += 1
            c.send()

    def answered(self, c: Client) -> None:
        self.outstanding -= 1
        self._next(c)
        if self.outstanding == 0 and not self.done.done():
            self.done.set_result(None)

    def failed(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(why))


def _credentials(ca: CertificateAuthority, service_account: str) -> Credentials:
    spiffe = SpiffeId(TRUST_DOMAIN, NAMESPACE, service_account)
    key_pem = generate_private_key()
    issued = ca.sign_csr(make_csr(key_pem, spiffe), spiffe)
    return Credentials.from_pem(
        issued.chain_pem.encode(), key_pem, issued.trust_bundle_pem.encode()
    )


def _config() -> DataPlaneConfig:
    return DataPlaneConfig(outbound=LOCAL, inbound=LOCAL, admin=LOCAL)


async def _mesh(
    ca: CertificateAuthority, app_port: int
) -> tuple[DataPlane, DataPlane, tuple[str, int]]:
    """The server proxy in front of the backend and the client proxy routing to it."""
    server = DataPlane(_config(), on_interest=lambda key: None)
    client = DataPlane(_config(), on_interest=lambda key: None)
    await server.start()
    await client.start()
    server.set_credentials(_credentials(ca, "echo"))
    echo_identity = str(SpiffeId(TRUST_DOMAIN, NAMESPACE, "echo"))
    server.apply_snapshot(
        Snapshot(
            proxy=ProxySelf(
                workload="echo-1",
                namespace=NAMESPACE,
                service_account="echo",
                identity=echo_identity,
                ports=(LocalPort(80, app_port, "http"),),
                services=("echo",),
            ),
            trust_domain=TRUST_DOMAIN,
            trust_bundle="",
            version="1",
        )
    )
    client.set_credentials(_credentials(ca, "web"))
    assert server.inbound_address is not None and client.outbound_address is not None
    endpoint = Endpoint(
        workload="echo-1",
        namespace=NAMESPACE,
        address="127.0.0.1",
        inbound_port=server.inbound_address[1],
        target_port=80,
        identity=echo_identity,
    )
    client.apply_snapshot(
        Snapshot(
            proxy=ProxySelf(
                workload="web-1",
                namespace=NAMESPACE,
                service_account="web",
                identity=str(SpiffeId(TRUST_DOMAIN, NAMESPACE, "web")),
                services=("web",),
            ),
            trust_domain=TRUST_DOMAIN,
            trust_bundle="",
            services=(
                ServiceView("echo", NAMESPACE, (ServicePort(80, "http", None, (endpoint,)),)),
            ),
            version="1",
        )
    )
    for _ in range(200):
        if server.ready and client.ready:
            break
        await asyncio.sleep(0.01)
    # As `gossamer proxy` does once ready (cli/proxy.py): what start-up allocated is
    # kept out of the collector's way, and the young generation collected less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    return server, client, client.outbound_address


async def _measure(address: tuple[str, int], connections: int, requests: int) -> float:
    """CPU seconds for `requests` requests to `address` on fresh keep-alive connections
    (opened, and one request each answered, before the clock starts)."""
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    try:
        warm = Run(connections)
        for _ in range(connections):
            _, c = await loop.create_connection(lambda: Client(warm), *address)
            clients.append(c)
        warm.start(clients)
        await asyncio.wait_for(warm.done, 30)
        run = Run(requests)
        for c in clients:
            c.run = run
        started = time.process_time()
        run.start(clients)
        await asyncio.wait_for(run.done, 300)
        return time.process_time() - started
    finally:
        for c in clients:
            c.transport.close()


async def bench(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(Backend, *LOCAL)
    app_port = backend.sockets[0].getsockname()[1]
    direct_address = ("127.0.0.1", app_port)
    profiler = None
    with tempfile.TemporaryDirectory(prefix="h1micro-ca-") as tmp:
        ca = CertificateAuthority.load_or_create(Path(tmp), TRUST_DOMAIN)
        server, client, proxied_address = await _mesh(ca, app_port)
        try:
            # Pooled connections between the proxies, and the first-request paths, warm.
            await _measure(proxied_address, args.connections, args.connections * 20)
            direct: list[float] = []
            proxied: list[float] = []
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
            for _ in range(args.repeat):
                direct.append(await _measure(direct_address, args.connections, args.requests))
                if profiler is not None:
                    profiler.enable()
                proxied.append(await _measure(proxied_address, args.connections, args.requests))
                if profiler is not None:
                    profiler.disable()
        finally:
            await client.close()
            await server.close()
            backend.close()
            await backend.wait_closed()
    if profiler is not None:
        profiler.dump_stats(args.profile)
    return direct, proxied


def _raise_mmap_threshold() -> None:
    """Free one large mmapped block, as a proxy's start-up does, so that glibc raises its
    mmap threshold above uvloop's 256 KiB TLS read buffer: the proxies measured here then
    allocate that buffer as `gossamer proxy` processes do (on the heap), whichever
    version is measured. Without it, each TLS read here costs an mmap, mremap and
    munmap (about 20 us per request per proxy) that the real proxies do not pay
    (decision 0103)."""
    block = bytearray(4 << 20)
    del block


def main() -> int:
    p = argparse.ArgumentParser(
        prog="bench/h1micro.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--requests", type=int, default=20_000, help="requests per measurement")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections (wrk -c)")
    p.add_argument("--repeat", type=int, default=5, help="measurements of each")
    p.add_argument("--profile", metavar="FILE", help="write a cProfile of the proxied runs")
    args = p.parse_args()
    _raise_mmap_threshold()
    direct, proxied = uvloop.run(bench(args))
    us = 1e6 / args.requests
    hops = [(p_ - d) * us / 2 for d, p_ in zip(direct, proxied, strict=True)]
    print(
        f"{args.requests:,} requests on {args.connections} keep-alive connections, "
        f"{args.repeat} runs: per proxy {min(hops):.1f} us CPU per request (min), "
        f"{statistics.median(hops):.1f} (median); client+backend alone "
        f"{min(direct) * us:.1f} us, through both proxies {min(proxied) * us:.1f} us (min)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
