"""The proxy's client for the control plane: one-shot HTTPS calls and a WebSocket.

Written on asyncio streams rather than aiohttp because the proxy lives beside every
workload: this is all it needs of HTTP, at a fraction of the memory. Not on the hot
path — it carries certificates, registrations and snapshots, never requests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import ssl
import struct
from typing import Any, Final

MAX_MESSAGE: Final = 64 * 1024 * 1024  # a snapshot for a very large interest set
MAX_HEAD: Final = 64 * 1024
_WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TEXT, _BINARY, _CLOSE, _PING, _PONG, _CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


class ControlPlaneUnavailable(OSError):
    """The control plane could not be reached, or broke the protocol mid-way."""


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ControlPlaneUnavailable("response head too large") from None
    except asyncio.IncompleteReadError:
        raise ControlPlaneUnavailable("connection closed before a response") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ControlPlaneUnavailable(f"malformed status line {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


class ControlPlaneClient:
    def __init__(self, host: str, port: int, timeout: float = 15.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def _authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def _open(self, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(
                self.host, self.port, ssl=ctx, server_hostname=self.host, limit=MAX_HEAD
            )
        except ssl.SSLError as err:
            raise ControlPlaneUnavailable(f"TLS with the control plane failed: {err}") from err

    async def request(
        self, method: str, path: str, ctx: ssl.SSLContext, body: Any = None
    ) -> tuple[int, Any]:
        """One request on its own connection; the answer's JSON (or text)."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._authority()}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n"
            + ("Content-Type: application/json\r\n" if body is not None else "")
            + "Accept: application/json\r\n\r\n"
        )
        async with asyncio.timeout(self.timeout):
            reader, writer = await self._open(ctx)
            try:
                writer.write(head.encode() + payload)
                status, headers = await _read_head(reader)
                if "content-length" in headers:
                    data = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    data = await _read_chunked(reader)
                else:
                    data = await reader.read(MAX_MESSAGE)
            except asyncio.IncompleteReadError:
                raise ControlPlaneUnavailable("connection closed mid-response") from None
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
        text = data.decode("utf-8", "replace")
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    async def websocket(self, path: str, ctx: ssl.SSLContext) -> WebSocket:
        key = base64.b64encode(os.urandom(16)).decode()
        async with asyncio.timeout(self.timeout):
            reader, writer = await self._open(ctx)
            ws = WebSocket(reader, writer)
            try:
                writer.write(
                    (
                        f"GET {path} HTTP/1.1\r\nHost: {self._authority()}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                    ).encode()
                )
                status, headers = await _read_head(reader)
                accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest())
                if status != 101 or headers.get("sec-websocket-accept") != accept.decode():
                    raise ControlPlaneUnavailable(f"discovery stream refused ({status})")
            except BaseException:
                ws.closed = True  # nothing to say goodbye to: just let the socket go
                await ws.close()
                raise
        return ws


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readline()
        if len(out) > MAX_MESSAGE:
            raise ControlPlaneUnavailable("response too large")


class WebSocket:
    """RFC 6455, client side: text messages, pings answered, close handled."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.closed = False  # no more frames are sent
        self._released = False  # the socket has been closed
        self.close_code: int | None = None
        self._send_lock = asyncio.Lock()

    def get_extra_info(self, name: str) -> Any:
        return self._writer.get_extra_info(name)

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        # Client frames are masked (RFC 6455 §5.3): XOR with the key, four bytes at a time.
        repeated = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
            n, "big"
        )
        async with self._send_lock:
            self._writer.write(header + mask + masked)
            await self._writer.drain()

    async def send_json(self, message: Any) -> None:
        if self.closed:
            raise ControlPlaneUnavailable("discovery stream is closed")
        await self._send_frame(_TEXT, json.dumps(message).encode())

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        b1, b2 = await self._reader.readexactly(2)
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self._reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self._reader.readexactly(8))
        if n > MAX_MESSAGE:
            raise ControlPlaneUnavailable(f"discovery message of {n} bytes is too large")
        mask = await self._reader.readexactly(4) if b2 & 0x80 else None
        payload = await self._reader.readexactly(n)
        if mask is not None:  # servers must not mask, but undo it if one does
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(b1 & 0x80), b1 & 0x0F, payload

    async def receive(self, silence: float | None = None) -> str | None:
        """The next text message, or None once the stream has closed cleanly.

        `silence`: TimeoutError when that many seconds pass without any frame — a ping
        counts, so a quiet but live stream never times out."""
        parts: list[bytes] = []
        try:
            while True:
                async with asyncio.timeout(silence):
                    fin, opcode, payload = await self._read_frame()
                if opcode == _PING:
                    await self._send_frame(_PONG, payload)
                elif opcode == _PONG:
                    continue
                elif opcode == _CLOSE:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                    await self.close()
                    return None
                else:
                    parts.append(payload)
                    if sum(map(len, parts)) > MAX_MESSAGE:
                        raise ControlPlaneUnavailable("discovery message too large")
                    if fin:
                        return b"".join(parts).decode()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as err:
            self.closed = True
            raise ControlPlaneUnavailable(f"discovery stream broke: {err}") from err

    async def close(self) -> None:
        """Say goodbye if the stream still works; always release the socket."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
                await self._send_frame(_CLOSE, struct.pack("!H", 1000))
        if self._released:
            return
        self._released = True
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
            await self._writer.wait_closed()
