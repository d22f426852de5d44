"""Handing a host proxy's workloads to the next process: its listening sockets, the
workloads' leases and network namespaces, over the registration socket (SCM_RIGHTS).

The new process (`gossamer host --take-over`) connects to the running one's socket and
asks `{"handover": true}`. The running one sends one message per workload (its
registration, and as descriptors its lease, its listeners and its network namespace),
each acknowledged, then `{"done": true}` with the registration socket itself. From the
moment it has sent them it accepts nothing more and stops talking to the control plane
for those workloads; the kernel queues new connections on the shared listening sockets
until the new process accepts them: none is refused, none goes uncaptured (the capture
rules never change). The old process then drains: it closes each connection once no
request is in flight on it, and exits when none is left or the drain deadline passes.
See docs/decisions/0067-host-proxy-handover.md.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from typing import Any, Final

MAX_MESSAGE: Final = 64 * 1024
MAX_FDS: Final = 8
TIMEOUT: Final = 30.0


class HandoverError(OSError):
    """The handover broke off; the message says where."""


class Channel:
    """JSON lines with descriptors over a unix stream socket, blocking (run in a thread).

    Each message is acknowledged before the next is sent, so one recvmsg never carries
    two messages' descriptors."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(TIMEOUT)

    def send(self, message: dict[str, Any], fds: Sequence[int] = (), *, ack: bool = True) -> None:
        data = json.dumps(message).encode() + b"\n"
        try:
            sent = socket.send_fds(self.sock, [data], list(fds))
            if sent < len(data):
                self.sock.sendall(data[sent:])
            if ack and self.receive()[0] != {"ack": True}:
                raise HandoverError("the other process did not acknowledge a message")
        except TimeoutError:
            raise HandoverError(f"no answer within {TIMEOUT:.0f}s") from None

    def receive(self) -> tuple[Any, list[int]]:
        data = b""
        fds: list[int] = []
        try:
            while not data.endswith(b"\n"):
                chunk, got, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
                fds.extend(got)
                if not chunk:
                    raise HandoverError("the other process closed the handover")
                data += chunk
                if len(data) > MAX_MESSAGE:
                    raise HandoverError("a handover message is too large")
        except TimeoutError:
            for fd in fds:
                os.close(fd)
            raise HandoverError(f"no message within {TIMEOUT:.0f}s") from None
        try:
            return json.loads(data), fds
        except ValueError:
            for fd in fds:
                os.close(fd)
            raise HandoverError("a handover message is not JSON") from None

    def ack(self) -> None:
        self.sock.sendall(b'{"ack": true}\n')
