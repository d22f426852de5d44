"""Which HTTP/2 codec the proxy's connections use (decisions 0097 and 0102).

``native``: `_h2native`, a C extension on libnghttp2's HPACK, built by ``pip install``
when a C compiler, Python's headers and libnghttp2's are present (setup.py).
``python``: h2's own, the pure-Python ``hpack``. Both have the interface h2 uses
(``hpack.Encoder``/``hpack.Decoder``) and raise hpack's exceptions on a bad block, so
h2 and `proxy.wire.http2` treat a peer's bad input the same way over either.
``session``: not h2 at all but libnghttp2's whole connection (``nghttp2_session``: frames,
HPACK, stream states, flow control), `_h2native.Session`, which has the part of h2's
H2Connection that `proxy.wire.http2` uses and makes h2's events (decision 0102).

``GOSSAMER_H2_CODEC=python|native|session`` forces one; unset, the session engine is
used where the extension was built (it passes every HTTP/2 suite the others do, at a
fifth of a hop's CPU: decision 0102), pure Python where it was not. The choice is made
once, when the proxy imports its HTTP/2 layer, and said in one log line; forcing
``native`` or ``session`` where it was not built is an error that says what to install.
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
NAMES: Final = ("python", "native", "session")
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
    # The whole connection in C (`_h2native.Session`), or None: h2's, with this HPACK.
    session: Callable[..., Any] | None = None


PYTHON: Final = Codec(
    "python", f"pure Python (hpack {hpack.__version__})", hpack.Encoder, hpack.Decoder
)


def _load_native() -> tuple[Codec | None, Codec | None, str]:
    """The native codec and the session engine, or None and why they cannot be had."""
    try:
        from gossamer.proxy.wire import _h2native
    except ImportError as err:
        return None, None, f"the extension gossamer.proxy.wire._h2native is not built ({err})"
    version = _h2native.NGHTTP2_VERSION
    return (
        Codec(
            "native", f"native (libnghttp2 {version} HPACK)", _h2native.Encoder, _h2native.Decoder
        ),
        Codec(
            "session",
            f"session (libnghttp2 {version} nghttp2_session)",
            _h2native.Encoder,
            _h2native.Decoder,
            _h2native.Session,
        ),
        "",
    )


NATIVE, SESSION, _NATIVE_MISSING = _load_native()


def choose(wanted: str | None) -> Codec:
    """The codec for GOSSAMER_H2_CODEC's value (None or empty: the best one built)."""
    wanted = (wanted or "").strip().lower()
    if wanted not in ("", *NAMES):
        raise CodecUnavailable(f"{ENV}={wanted!r}: expected one of {', '.join(NAMES)}")
    if wanted == "python":
        return PYTHON
    if wanted == "native" and NATIVE is not None:
        return NATIVE
    if SESSION is not None:
        return SESSION
    if wanted in ("native", "session"):
        raise CodecUnavailable(
            f"{ENV}={wanted}, but {_NATIVE_MISSING}: install {BUILD_DEPS} and run "
            "`pip install -e .` again, or unset it to use the pure-Python codec"
        )
    return PYTHON


def _announce(codec: Codec) -> None:
    if codec is NATIVE or codec is SESSION or os.environ.get(ENV):
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
    if codec is PYTHON or codec.session is not None:
        return  # h2 made hpack's own (a session engine has no h2 connection)
    decoder = codec.decoder()
    decoder.max_header_list_size = conn.decoder.max_header_list_size
    conn.encoder = codec.encoder()
    conn.decoder = decoder
