"""A small client for etcd's v3 API through its JSON gateway (`POST /v3/...`).

Why the gateway rather than gRPC: the `etcd3` package does not import with protobuf 4+,
the maintained forks pin old protobuf or grpcio, and generating stubs from etcd's
.proto files would vendor gogoproto and googleapis annotations for six calls. etcd 3.4
serves the same API as JSON over HTTP on its client port (`/v3/kv/range`, `/v3/kv/txn`,
`/v3/watch`, `/v3/lease/...`), so a request is a dict and the only dependency is
aiohttp, which the control plane already uses. Keys and values are base64; 64-bit
numbers come back as strings and fields equal to zero are left out.

Every call fails over between the cluster's members: a member that cannot be reached,
or that answers "no leader" / "leader changed" while the cluster elects, is left for
the next one, with a short back-off, until `deadline` seconds have passed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from gossamer.errors import StoreError

__all__ = ["Endpoint", "EtcdGateway", "b64", "parse_endpoints", "prefix_end", "unb64"]

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]

# etcd's own words for a cluster that is between leaders or briefly overloaded: worth
# asking again (perhaps another member) rather than failing the caller.
_TRANSIENT = (
    "no leader",
    "leader changed",
    "request timed out",
    "too many requests",
    "not capable",
    "stopped",
    "connection refused",
    "unavailable",
)


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range_end that makes a range cover every key starting with `prefix`."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return b64(bytes(raw))
        raw.pop()
    return b64(b"\x00")  # every key


def parse_endpoints(text: str) -> list[Endpoint]:
    """'h1:2379,h2:2379' into [(h1, 2379), (h2, 2379)]; StoreError naming the bad part."""
    endpoints: list[Endpoint] = []
    for part in text.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StoreError(
                f"etcd endpoint {part.strip()!r} is not HOST:PORT: write the members' "
                "client addresses like etcd://10.0.0.1:2379,10.0.0.2:2379"
            )
        endpoints.append((host.strip("[]"), int(port)))
    return endpoints


class _Transient(Exception):
    """This member could not answer now; another (or the same one later) may."""


class EtcdGateway:
    """Calls etcd's JSON gateway on whichever member answers.

    Synchronous calls (`call`) use one keep-alive connection per thread; asynchronous
    ones (`acall`, `watch`) use an aiohttp session the caller owns, because a session
    belongs to one event loop.
    """

    def __init__(
        self, endpoints: Sequence[Endpoint], *, timeout: float = 5.0, deadline: float = 20.0
    ) -> None:
        if not endpoints:
            raise StoreError("no etcd endpoints given")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.deadline = deadline
        self._preferred = 0
        self._local = threading.local()
        # Every thread's connections, so close() can close those of threads that
        # called once and went away.
        self._all: list[http.client.HTTPConnection] = []
        self._all_lock = threading.Lock()

    def describe(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.endpoints)

    # -- synchronous ---------------------------------------------------------------

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        give_up = time.monotonic() + self.deadline
        attempt = 0
        last = ""
        while True:
            index = (self._preferred + attempt) % len(self.endpoints)
            try:
                answer = self._post(index, path, payload)
                self._preferred = index
                return answer
            except _Transient as e:
                last = str(e)
            attempt += 1
            if time.monotonic() >= give_up:
                raise self._unreachable(path, last)
            if attempt % len(self.endpoints) == 0:
                time.sleep(_backoff(attempt // len(self.endpoints)))

    def _post(self, index: int, path: str, payload: bytes) -> dict[str, Any]:
        connections: dict[int, http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "connections", {}
        )
        host, port = self.endpoints[index]
        conn = connections.get(index)
        if conn is None:
            conn = connections[index] = http.client.HTTPConnection(host, port, timeout=self.timeout)
            with self._all_lock:
                self._all.append(conn)
        try:
            conn.request("POST", path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            del connections[index]
            with self._all_lock, contextlib.suppress(ValueError):
                self._all.remove(conn)
            raise _Transient(f"{host}:{port}: {e}") from None
        return _answer(host, port, path, status, raw)

    def close(self) -> None:
        with self._all_lock:
            everyone, self._all = self._all, []
        for conn in everyone:
            conn.close()
        self._local.__dict__.get("connections", {}).clear()

    # -- asynchronous --------------------------------------------------------------

    async def acall(
        self, session: aiohttp.ClientSession, path: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.deadline
        attempt = 0
        last = ""
        while True:
            index = (self._preferred + attempt) % len(self.endpoints)
            host, port = self.endpoints[index]
            try:
                async with session.post(
                    f"http://{host}:{port}{path}",
                    json=body,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as response:
                    raw = await response.read()
                    answer = _answer(host, port, path, response.status, raw)
                self._preferred = index
                return answer
            except _Transient as e:
                last = str(e)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                last = f"{host}:{port}: {e or type(e).__name__}"
            attempt += 1
            if loop.time() >= give_up:
                raise self._unreachable(path, last)
            if attempt % len(self.endpoints) == 0:
                await asyncio.sleep(_backoff(attempt // len(self.endpoints)))

    async def watch(
        self, session: aiohttp.ClientSession, create_request: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Open one watch stream on the first member that accepts it and yield each
        `result`. Ends (without raising) when the stream ends or breaks: the caller
        reads what it missed and watches again, from another member if need be."""
        for attempt in range(len(self.endpoints)):
            index = (self._preferred + attempt) % len(self.endpoints)
            host, port = self.endpoints[index]
            try:
                async with session.post(
                    f"http://{host}:{port}/v3/watch",
                    json={"create_request": create_request},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
                ) as response:
                    if response.status != 200:
                        continue
                    while True:
                        line = await response.content.readline()
                        if not line:
                            return
                        message = json.loads(line)
                        if "result" not in message:
                            return  # an error message ends the stream
                        yield message["result"]
            except (aiohttp.ClientError, OSError, ValueError) as e:
                log.info("etcd watch on %s:%d ended: %s", host, port, e)
                continue

    def _unreachable(self, path: str, last: str) -> StoreError:
        return StoreError(
            f"etcd ({self.describe()}) did not answer {path} within {self.deadline:g} s "
            f"(last: {last}): check the members are running and reachable, and that "
            "a majority of them are up"
        )


def _answer(host: str, port: int, path: str, status: int, raw: bytes) -> dict[str, Any]:
    try:
        answer: dict[str, Any] = json.loads(raw) if raw else {}
    except ValueError:
        raise _Transient(f"{host}:{port} answered {path} with HTTP {status}, not JSON") from None
    if status == 200 and "error" not in answer:
        return answer
    message = str(answer.get("error") or answer.get("message") or raw[:200])
    if status >= 500 or any(word in message for word in _TRANSIENT):
        raise _Transient(f"{host}:{port}: {message}")
    raise StoreError(f"etcd {host}:{port} refused {path}: {message}")


def _backoff(round_: int) -> float:
    """gRPC's connection back-off: 1 s base, x1.6 a round, 20% jitter; capped low here
    because a store call has a caller waiting."""
    delay = min(0.05 * 1.6**round_, 1.0)
    return delay * random.uniform(0.8, 1.2)
