"""The mesh resolver and its UDP and TCP listeners.

A query for a service's name (`names.mesh_name`) that the control plane confirms is
answered with the service's virtual IP; anything else goes to the host's own resolver
(the first `nameserver` of /etc/resolv.conf) and its answer comes back as it was. The
proxy's own queries are not captured (its uid or gid), so forwarding does not loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from gossamer.dns.names import mesh_name, virtual_ip
from gossamer.dns.wire import (
    CLASS_IN,
    FORMERR,
    SERVFAIL,
    TYPE_A,
    MalformedQuery,
    answer,
    error,
    parse_query,
)

log = logging.getLogger("gossamer.dns")

FORWARD_TIMEOUT = 2.0
TTL = 5  # seconds: a service's address never changes, but its existence may


def host_resolver(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, int] | None:
    """The first nameserver of the host's resolv.conf, or None."""
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            return parts[1], 53
    return None


class MeshResolver:
    """Answers one DNS message (a bare NAME is a service in `own_namespace()`, the
    asking workload's namespace); `counts` says how each query went (mesh, forwarded,
    failed, malformed), for the proxy's metrics."""

    def __init__(
        self,
        own_namespace: Callable[[], str],
        cidr: ipaddress.IPv4Network,
        exists: Callable[[str, str], Awaitable[bool]],
        upstream: tuple[str, int] | None,
        cluster_domain: str = "cluster.local",
    ) -> None:
        self.own_namespace = own_namespace
        self.cidr = cidr
        self.exists = exists
        self.upstream = upstream
        self.cluster_domain = cluster_domain
        self.counts: Counter[str] = Counter()

    async def resolve(self, data: bytes) -> bytes | None:
        try:
            q = parse_query(data)
        except MalformedQuery:
            self.counts["malformed"] += 1
            return error(data, FORMERR)
        service = mesh_name(q.name, self.own_namespace(), self.cluster_domain)
        if q.qclass == CLASS_IN and service is not None and await self.exists(*service):
            self.counts["mesh"] += 1
            if q.qtype != TYPE_A:  # the name exists, with no address of this type
                return answer(q, [], TTL)
            return answer(q, [virtual_ip(*service, self.cidr)], TTL)
        reply = await self.forward(data)
        if reply is None:
            self.counts["failed"] += 1
            return error(data, SERVFAIL)
        self.counts["forwarded"] += 1
        return reply

    async def forward(self, data: bytes) -> bytes | None:
        if self.upstream is None:
            return None
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Once(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, addr: object) -> None:
                if not got.done() and reply[:2] == data[:2]:
                    got.set_result(reply)

        try:
            transport, _ = await loop.create_datagram_endpoint(Once, remote_addr=self.upstream)
        except OSError as err:
            log.warning("cannot reach the host's resolver %s: %s", self.upstream, err)
            return None
        try:
            transport.sendto(data)
            return await asyncio.wait_for(got, FORWARD_TIMEOUT)
        except (TimeoutError, OSError):
            log.warning("the host's resolver %s did not answer", self.upstream)
            return None
        finally:
            transport.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(
        self, resolver: MeshResolver, spawn: Callable[[Coroutine[Any, Any, None]], object]
    ) -> None:
        self.resolver = resolver
        self.spawn = spawn
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        async def reply() -> None:
            out = await self.resolver.resolve(data)
            if out is not None and self.transport is not None:
                self.transport.sendto(out, addr)

        self.spawn(reply())


async def _tcp_client(
    resolver: MeshResolver, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        while True:
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
            out = await resolver.resolve(await reader.readexactly(size))
            if out is None:
                break
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
    writer.close()


async def serve(
    resolver: MeshResolver,
    address: tuple[str, int],
    spawn: Callable[[Coroutine[Any, Any, None]], object],
    udp_sock: socket.socket | None = None,
    tcp_sock: socket.socket | None = None,
) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
    """Listen for DNS on UDP and TCP at `address`, or on the sockets given (bound by a
    process this one takes over from); close both to stop."""
    loop = asyncio.get_running_loop()
    if udp_sock is not None:
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(resolver, spawn), sock=udp_sock)
    else:
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(resolver, spawn), local_addr=address
        )

    def client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Awaitable[None]:
        return _tcp_client(resolver, r, w)

    if tcp_sock is not None:
        tcp = await asyncio.start_server(client, sock=tcp_sock)
    else:
        tcp = await asyncio.start_server(client, address[0], address[1])
    return udp, tcp
