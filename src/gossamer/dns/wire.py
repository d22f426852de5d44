"""DNS messages, sans-IO (RFC 1035): read a query's question, write an answer.

Only what the mesh resolver needs: one question per query; answers of type A; empty
answers (NODATA) and errors. Everything else is forwarded untouched, so this module
never has to understand it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, REFUSED = 0, 1, 2, 3, 5
_HEADER = struct.Struct("!HHHHHH")
_QR, _AA, _RD, _RA = 0x8000, 0x0400, 0x0100, 0x0080


class MalformedQuery(ValueError):
    """Not a DNS query this resolver can read."""


@dataclass(frozen=True)
class Question:
    id: int
    flags: int
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    raw: bytes  # the question section as it came: an answer repeats it


def parse_query(data: bytes) -> Question:
    if len(data) < _HEADER.size:
        raise MalformedQuery("shorter than a DNS header")
    qid, flags, qdcount, _, _, _ = _HEADER.unpack_from(data)
    if flags & _QR:
        raise MalformedQuery("a response, not a query")
    if qdcount != 1:
        raise MalformedQuery(f"{qdcount} questions; one is supported")
    labels: list[str] = []
    at = _HEADER.size
    while True:
        if at >= len(data):
            raise MalformedQuery("the name runs past the message")
        length = data[at]
        if length & 0xC0:
            raise MalformedQuery("a compressed name in a question")
        at += 1
        if length == 0:
            break
        label = data[at : at + length]
        if len(label) != length:
            raise MalformedQuery("the name runs past the message")
        labels.append(label.decode("ascii", "replace").lower())
        at += length
    if at + 4 > len(data):
        raise MalformedQuery("no type and class after the name")
    qtype, qclass = struct.unpack_from("!HH", data, at)
    return Question(qid, flags, ".".join(labels), qtype, qclass, data[_HEADER.size : at + 4])


def answer(q: Question, addresses: list[str], ttl: int = 5, rcode: int = NOERROR) -> bytes:
    """A response to `q`: an A record for each address (none: NODATA, or `rcode`)."""
    flags = _QR | _AA | (q.flags & _RD) | _RA | rcode
    records = b"".join(
        struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, ttl, 4) + ipaddress.IPv4Address(a).packed
        for a in addresses
    )
    return _HEADER.pack(q.id, flags, 1, len(addresses), 0, 0) + q.raw + records


def error(data: bytes, rcode: int) -> bytes | None:
    """An error response echoing a query's id and question where they can be read."""
    if len(data) < _HEADER.size:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    try:
        raw = parse_query(data).raw
        count = 1
    except MalformedQuery:
        raw, count = b"", 0
    return _HEADER.pack(qid, _QR | (flags & _RD) | _RA | rcode, count, 0, 0, 0) + raw
