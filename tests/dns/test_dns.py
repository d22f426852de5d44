"""The mesh resolver's parts: the wire format against dnspython (an independent
implementation), which names are services, their virtual IPs, and how a query goes."""

from __future__ import annotations

import asyncio
import ipaddress

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from gossamer.dns.names import mesh_name, virtual_ip
from gossamer.dns.server import MeshResolver
from gossamer.dns.wire import MalformedQuery, answer, parse_query

CIDR = ipaddress.IPv4Network("240.240.0.0/16")


def test_a_query_is_read_and_answered_as_dnspython_expects() -> None:
    query = dns.message.make_query("Echo.Shop.", "A", want_dnssec=True)  # with EDNS
    q = parse_query(query.to_wire())
    assert (q.id, q.name, q.qtype) == (query.id, "echo.shop", 1)
    reply = dns.message.from_wire(answer(q, ["240.240.1.2"], ttl=5))
    assert reply.id == query.id and reply.rcode() == dns.rcode.NOERROR
    assert reply.question[0].name.to_text() == "Echo.Shop."
    (rrset,) = reply.answer
    assert [r.to_text() for r in rrset] == ["240.240.1.2"] and rrset.ttl == 5
    empty = dns.message.from_wire(answer(q, []))
    assert empty.answer == [] and empty.rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize(
    "data",
    [b"\x00\x01", dns.message.make_response(dns.message.make_query("a.", "A")).to_wire()],
    ids=["shorter than a header", "a response"],
)
def test_what_is_not_a_query_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedQuery):
        parse_query(data)


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("echo", ("echo", "shop")),
        ("echo.web", ("echo", "web")),
        ("echo.web.svc", ("echo", "web")),
        ("echo.web.svc.cluster.local.", ("echo", "web")),
        ("echo.web.mesh", ("echo", "web")),
        ("www.example.com", None),
        ("echo.web.svc.other.domain", None),
    ],
    ids=[
        "NAME",
        "NAME.NS",
        "NAME.NS.svc",
        "NAME.NS.svc.cluster.local",
        "NAME.NS.mesh",
        "three labels",
        "another cluster domain",
    ],
)
def test_names_resolve_the_kubernetes_way(qname: str, expected: tuple[str, str] | None) -> None:
    assert mesh_name(qname, "shop") == expected


def test_a_virtual_ip_is_stable_and_inside_the_range() -> None:
    first = virtual_ip("echo", "shop", CIDR)
    assert first == virtual_ip("echo", "shop", CIDR)
    assert first != virtual_ip("echo", "web", CIDR)
    addresses = {ipaddress.IPv4Address(virtual_ip(f"s{i}", "ns", CIDR)) for i in range(500)}
    assert all(a in CIDR and a not in (CIDR.network_address, CIDR.broadcast_address)
               for a in addresses)  # fmt: skip


def test_the_resolver_answers_services_and_forwards_the_rest() -> None:
    async def exists(name: str, namespace: str) -> bool:
        return (name, namespace) == ("echo", "shop")

    resolver = MeshResolver(lambda: "shop", CIDR, exists, upstream=None)

    def ask(name: str, kind: str) -> dns.message.Message:
        query = dns.message.make_query(name, kind)
        raw = asyncio.run(resolver.resolve(query.to_wire()))
        assert raw is not None
        return dns.message.from_wire(raw)

    (rrset,) = ask("echo", "A").answer
    assert [r.to_text() for r in rrset] == [virtual_ip("echo", "shop", CIDR)]
    assert ask("echo.shop", "AAAA").answer == []  # the name exists; no IPv6 address
    # Not a service, and no resolver to forward to: SERVFAIL, said so in the counts.
    assert ask("nowhere.example.com", "A").rcode() == dns.rcode.SERVFAIL
    assert resolver.counts == {"mesh": 2, "failed": 1}
