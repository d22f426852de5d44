"""Which HPACK codec the proxy's HTTP/2 connections use (decision 0097).

``native``: `_h2native`, a C extension on libnghttp2's HPACK, built by ``pip install``
when a C compiler, Python's headers and libnghttp2's are present (setup.py).
``python``: h2's own, the pure-Python ``hpack``. Both have the interface h2 uses
(``hpack.Encoder``/``hpack.Decoder``) and raise hpack's exceptions on a bad block, so
h2 and `proxy.wire.http2` treat a peer's bad input the same way over either.

``GOSSAMER_H2_CODEC=python|native`` forces one; unset, the native one is used when it
was built. The choice is made once, when the proxy imports its HTTP/2 layer, and said
in one log line; forcing ``native`` where it was not built is an error that says what
to install.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import hpack

from gossamer.errors import GossamerError

log = logging.getLogger("gossamer.proxy")

ENV: Final = "GOSSAMER_H2_CODEC"
NAMES: Final = ("python", "native")
BUILD_DEPS: Final = (
    "a C compiler, Python's headers and libnghttp2's (Debian: gcc python3-dev libnghttp2-dev)"
)


class HpackEncoder(Protocol):
    header_table_size: int

    def encode(self, headers: Any, huffman: bool = True) -> bytes: ...


class HpackDecoder(Protocol):
    max_header_list_size: int
    max_allowed_table_size: int

    def decode(self, data: bytes, raw: bool = False) -> Any: ...


class CodecUnavailable(GossamerError):
    """The native codec was asked for and is not built here."""


@dataclass(frozen=True)
class Codec:
    """A pair of HPACK encoder and decoder factories, and what to call them."""

    name: str
    description: str
    encoder: Callable[[], HpackEncoder]
    decoder: Callable[[], HpackDecoder]


PYTHON: Final = Codec(
    "python", f"pure Python (hpack {hpack.__version__})", hpack.Encoder, hpack.Decoder
)


def _load_native() -> tuple[Codec | None, str]:
    """The native codec, or None and why it cannot be had."""
    try:
        from gossamer.proxy.wire import _h2native
    except ImportError as err:
        return None, f"the extension gossamer.proxy.wire._h2native is not built ({err})"
    return (
        Codec(
            "native",
            f"native (libnghttp2 {_h2native.NGHTTP2_VERSION} HPACK)",
            _h2native.Encoder,
            _h2native.Decoder,
        ),
        "",
    )


NATIVE, _NATIVE_MISSING = _load_native()


def choose(wanted: str | None) -> Codec:
    """The codec for GOSSAMER_H2_CODEC's value (None or empty: the best one built)."""
    wanted = (wanted or "").strip().lower()
    if wanted not in ("", *NAMES):
        raise CodecUnavailable(f"{ENV}={wanted!r}: expected one of {', '.join(NAMES)}")
    if wanted == "python":
        return PYTHON
    if NATIVE is not None:
        return NATIVE
    if wanted == "native":
        raise CodecUnavailable(
            f"{ENV}=native, but {_NATIVE_MISSING}: install {BUILD_DEPS} and run "
            "`pip install -e .` again, or unset it to use the pure-Python codec"
        )
    return PYTHON


def _announce(codec: Codec) -> None:
    if codec is NATIVE or os.environ.get(ENV):
        log.info("HTTP/2 codec: %s", codec.description)
    else:
        log.warning(
            "HTTP/2 codec: %s, slower: %s; install %s and reinstall Gossamer for the native one",
            codec.description,
            _NATIVE_MISSING,
            BUILD_DEPS,
        )


active: Codec = choose(os.environ.get(ENV))
_announce(active)


def use(name: str) -> Codec:
    """Make new connections use the named codec (tests run the HTTP/2 suites over each)."""
    global active
    active = choose(name)
    return active


def install(conn: Any) -> None:
    """Give an h2 connection the active codec in place of the one h2 made for it."""
    codec = active
    if codec is PYTHON:
        return  # h2 made hpack's own
    decoder = codec.decoder()
    decoder.max_header_list_size = conn.decoder.max_header_list_size
    conn.encoder = codec.encoder()
    conn.decoder = decoder
