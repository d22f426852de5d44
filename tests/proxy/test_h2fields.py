"""`_h2native.malformed` against the Python it stands in for (decision 0115): the same
reason, or None, for every header block, well-formed or not, and generated ones."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gossamer.proxy.wire import http2
from gossamer.proxy.wire.http2 import (
    REQUEST_PSEUDO,
    RESPONSE_PSEUDO,
    TRAILER_PSEUDO,
    malformed,
    malformed_in_python,
)

Block = list[tuple[bytes, bytes]]

REQUEST: Block = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"echo.default"),
    (b":path", b"/a?b=c"),
    (b"user-agent", b"grpc-go/1.60"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
]
RESPONSE: Block = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS: Block = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
KINDS = [REQUEST_PSEUDO, RESPONSE_PSEUDO, TRAILER_PSEUDO]


def test_the_extension_is_built_and_used() -> None:
    # make test and .ci/run install libnghttp2's headers; without them this compares
    # the Python with itself.
    assert http2._malformed_in_c is not None


def same(block: Any, pseudo: frozenset[bytes]) -> str | None:
    """The reason both give (a failure of the same type for both, too)."""
    assert http2._malformed_in_c is not None
    try:
        reason = malformed(block, pseudo)
    except Exception as e:
        with pytest.raises(type(e)):
            malformed_in_python(block, pseudo)
        return type(e).__name__
    assert reason == malformed_in_python(block, pseudo), block
    return reason


CASES: list[tuple[Block, frozenset[bytes], str | None]] = [
    (REQUEST, REQUEST_PSEUDO, None),
    (RESPONSE, RESPONSE_PSEUDO, None),
    (TRAILERS, TRAILER_PSEUDO, None),
    ([], TRAILER_PSEUDO, None),
    (REQUEST[1:], REQUEST_PSEUDO, "no :method"),
    (REQUEST[:1] + REQUEST[2:], REQUEST_PSEUDO, "no :scheme or no :path"),
    ([(b":method", b"CONNECT"), (b":authority", b"a:1")], REQUEST_PSEUDO, None),
    (
        [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")],
        REQUEST_PSEUDO,
        "CONNECT with :scheme or :path",
    ),
    ([*REQUEST[:4], (b":protocol", b"websocket")], REQUEST_PSEUDO, ":protocol without CONNECT"),
    ([(b":method", b"CONNECT"), (b":protocol", b"websocket"), *REQUEST[1:4]], REQUEST_PSEUDO, None),
    ([*REQUEST[:2], REQUEST[3]], REQUEST_PSEUDO, "neither :authority nor host"),
    ([*REQUEST[:2], REQUEST[3], (b"host", b"h")], REQUEST_PSEUDO, None),
    ([*REQUEST[:4], (b"host", b"other")], REQUEST_PSEUDO, ":authority and host differ"),
    (
        [*REQUEST[:2], REQUEST[3], (b"host", b"h"), (b"host", b"h")],
        REQUEST_PSEUDO,
        "more than one host field",
    ),
    ([*REQUEST, (b":path", b"/x")], REQUEST_PSEUDO, "pseudo-header b':path' after a regular field"),
    (
        [*REQUEST[:4], (b":path", b"/x")],
        REQUEST_PSEUDO,
        "unexpected or repeated pseudo-header b':path'",
    ),
    ([*REQUEST[:3], (b":path", b"")], REQUEST_PSEUDO, "empty :path"),
    (
        [(b":status", b"200"), (b":method", b"GET")],
        RESPONSE_PSEUDO,
        "unexpected or repeated pseudo-header b':method'",
    ),
    ([(b":status", b"200")], TRAILER_PSEUDO, "unexpected or repeated pseudo-header b':status'"),
    ([(b"server", b"x")], RESPONSE_PSEUDO, "no :status"),
    ([*RESPONSE, (b"Content-Type", b"x")], RESPONSE_PSEUDO, "invalid field name b'Content-Type'"),
    ([*RESPONSE, (b"", b"x")], RESPONSE_PSEUDO, "invalid field name b''"),
    ([*RESPONSE, (b"a:b", b"x")], RESPONSE_PSEUDO, "invalid field name b'a:b'"),
    ([*RESPONSE, (b"a b", b"x")], RESPONSE_PSEUDO, "invalid field name b'a b'"),
    ([*RESPONSE, (b"\xff", b"x")], RESPONSE_PSEUDO, "invalid field name b'\\xff'"),
    (
        [*RESPONSE, (b"connection", b"close")],
        RESPONSE_PSEUDO,
        "connection-specific field b'connection'",
    ),
    (
        [*RESPONSE, (b"keep-alive", b"1")],
        RESPONSE_PSEUDO,
        "connection-specific field b'keep-alive'",
    ),
    ([*REQUEST[:4], (b"te", b"gzip")], REQUEST_PSEUDO, "te: b'gzip' (only trailers is allowed)"),
    ([*REQUEST[:4], (b"te", b"TRAILERS")], REQUEST_PSEUDO, None),
    (
        [*RESPONSE, (b"content-length", b"1x")],
        RESPONSE_PSEUDO,
        "content-length: b'1x' is not a number",
    ),
    ([*RESPONSE, (b"content-length", b"")], RESPONSE_PSEUDO, "content-length: b'' is not a number"),
    (
        [*RESPONSE, (b"content-length", b"\xd9\xa1")],
        RESPONSE_PSEUDO,
        "content-length: b'\\xd9\\xa1' is not a number",
    ),
    ([*RESPONSE, (b"content-length", b"1"), (b"content-length", b"1")], RESPONSE_PSEUDO, None),
    (
        [*RESPONSE, (b"content-length", b"1"), (b"content-length", b"2")],
        RESPONSE_PSEUDO,
        "content-length fields that differ",
    ),
    (
        [*RESPONSE, (b"x", b" lead")],
        RESPONSE_PSEUDO,
        "invalid characters or surrounding whitespace in the value of b'x'",
    ),
    (
        [*RESPONSE, (b"x", b"trail\t")],
        RESPONSE_PSEUDO,
        "invalid characters or surrounding whitespace in the value of b'x'",
    ),
    (
        [*RESPONSE, (b"x", b"a\x00b")],
        RESPONSE_PSEUDO,
        "invalid characters or surrounding whitespace in the value of b'x'",
    ),
    (
        [*RESPONSE, (b"x", b"a\r\nb: c")],
        RESPONSE_PSEUDO,
        "invalid characters or surrounding whitespace in the value of b'x'",
    ),
    (
        [(b":status", b" 200")],
        RESPONSE_PSEUDO,
        "invalid characters or surrounding whitespace in the value of b':status'",
    ),
    ([*RESPONSE, (b"x", b"in side\tok \xff")], RESPONSE_PSEUDO, None),
    ([*RESPONSE, (b"host", b"a"), (b"host", b"b")], RESPONSE_PSEUDO, None),
]


@pytest.mark.parametrize(("block", "pseudo", "reason"), CASES, ids=range(len(CASES)))
def test_each_case_has_the_same_reason(
    block: Block, pseudo: frozenset[bytes], reason: str | None
) -> None:
    assert same(block, pseudo) == reason


def test_a_block_that_is_not_a_list_of_byte_pairs_is_left_to_the_python() -> None:
    assert http2._malformed_in_c is not None
    odd: list[Any] = [
        [[b":status", b"200"]],
        [(b":status", bytearray(b"200"))],
        [(":status", "200")],
        [(b":status", b"200", b"!")],
    ]
    for block in odd:
        assert http2._malformed_in_c(block, 1) is False
        same(block, RESPONSE_PSEUDO)
    assert http2._malformed_in_c(tuple(RESPONSE), 1) is False  # type: ignore[arg-type]
    assert http2._malformed_in_c(RESPONSE, 3) is False
    assert http2._malformed_in_c(RESPONSE, -1) is False
    # Another set of pseudo-headers than the three: the Python's.
    assert malformed(RESPONSE, frozenset((b":status", b":x"))) is None


ALPHABET = [b"", b" ", b"\t", b"\x00", b"\r", b"\n", b":", b"A", b"a", b"\xff", b"0", b"-"]
NAMES = [b":method", b":scheme", b":authority", b":path", b":protocol", b":status", b"host"]
NAMES += [b"te", b"content-length", b"connection", b"upgrade", b"x", b"grpc-status"]
VALUES = [b"GET", b"CONNECT", b"http", b"/", b"", b"trailers", b"1", b"2", b"a", b"echo.default"]


def test_generated_and_mutated_blocks_have_the_same_reason() -> None:
    rng = random.Random(9113)
    reasons: set[str | None] = set()
    for _ in range(20_000):
        base = rng.choice([REQUEST, RESPONSE, TRAILERS, []])
        block = list(base)
        for _ in range(rng.randint(0, 4)):
            what = rng.random()
            at = rng.randrange(len(block) + 1)
            if what < 0.3:
                block.insert(at, (rng.choice(NAMES), rng.choice(VALUES)))
            elif what < 0.5 and block:
                del block[at % len(block)]
            elif block:
                i = at % len(block)
                name, value = block[i]
                if rng.random() < 0.5:
                    name = name[: rng.randrange(len(name) + 1)] + rng.choice(ALPHABET)
                else:
                    cut = rng.randrange(len(value) + 1)
                    value = value[:cut] + rng.choice(ALPHABET) + value[cut:]
                block[i] = (name, value)
        reasons.add(same(block, rng.choice(KINDS)))
    # The two agree (asserted in `same`) on well-formed blocks and on many kinds of fault.
    assert None in reasons
    assert len(reasons) > 20


# ---- forwardable and from_http1: the fields a block hands on ---------------------------

FIELDS: list[Any] = [
    [],
    [(b"user-agent", b"wrk"), (b"te", b"trailers"), (b"te", b"gzip"), (b"TE", b"Trailers")],
    [(b"connection", b"close"), (b"keep-alive", b"5"), (b"proxy-connection", b"x")],
    [(b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"), (b"http2-settings", b"AA")],
    [(b"Content-Type", b" text/plain \t"), (b"X-Empty", b""), (b"x-ws", b" \t ")],
    [(b"Connection", b"close"), (b"Upgrade", b"x"), (b"TE", b" trailers ")],
    [(b"x-forwarded-for", b"1.2.3.4"), (b"gossamer-src-service", b"web")],
    [(b"\xff\xc3", b"\x00\r\n"), (b"a", b"\xff ")],
]
DROPS = [frozenset(), frozenset({b"x-forwarded-for", b"gossamer-src-service"}), {b"user-agent"}]


@pytest.mark.parametrize("fields", FIELDS, ids=range(len(FIELDS)))
def test_forwardable_and_from_http1_hand_on_what_the_python_does(fields: Any) -> None:
    assert http2._forwardable_in_c is not None and http2._from_http1_in_c is not None
    for drop in DROPS:
        kept = http2.forwardable(fields, drop)  # type: ignore[arg-type]
        assert kept == http2.forwardable_in_python(fields, drop)  # type: ignore[arg-type]
        assert all(type(f) is tuple for f in kept)
    assert http2.from_http1(fields) == http2.from_http1_in_python(fields)


def test_blocks_of_other_types_are_the_pythons() -> None:
    assert http2._forwardable_in_c is not None and http2._from_http1_in_c is not None
    odd: list[Any] = [[[b"a", b"b"]], [("a", "b")], [(b"a", bytearray(b"b"))], [(b"a",)]]
    for block in odd:
        assert http2._forwardable_in_c(block, frozenset()) is False
        assert http2._from_http1_in_c(block) is False
    assert http2._forwardable_in_c([(b"a", b"b")], [b"a"]) is False  # type: ignore[arg-type]
    assert http2._from_http1_in_c(iter([(b"a", b"b")])) is False
    # and the Python reads what it can of them
    assert http2.from_http1(iter([(b"A", b" b ")])) == [(b"a", b"b")]
    assert http2.forwardable([[b"a", b"b"]]) == [(b"a", b"b")]  # type: ignore[list-item]


def test_generated_fields_are_handed_on_alike() -> None:
    rng = random.Random(8222)
    names = [b"te", b"TE", b"connection", b"Connection", b"upgrade", b"x-a", b"X-A", b"host"]
    names += [b"keep-alive", b"http2-settings", b"transfer-encoding", b"proxy-connection"]
    values = [b"trailers", b"TRAILERS", b" trailers", b"gzip", b"", b" ", b"\t", b"a b", b" x "]
    for _ in range(5000):
        fields = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randint(0, 8))]
        drop = rng.choice(DROPS)
        assert http2.forwardable(fields, drop) == http2.forwardable_in_python(fields, drop)  # type: ignore[arg-type]
        assert http2.from_http1(fields) == http2.from_http1_in_python(fields)
