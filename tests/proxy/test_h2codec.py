"""The HPACK codecs of proxy/wire/h2codec.py: the native one against hpack, its refusals,
and the fallback to the pure-Python one where the extension was not built.

The native codec (`_h2native`, libnghttp2's HPACK) must decode what hpack encodes and
the other way round, keep never-indexed fields never indexed, and refuse a bad block
with the hpack exception h2 turns into the right GOAWAY (an HPACK bomb or an oversized
header list: OversizedHeaderListError, ENHANCE_YOUR_CALM; anything else undecodable:
an HPACKDecodingError, COMPRESSION_ERROR). The HTTP/2 suites themselves run over each
codec and the nghttp2_session engine (tests/proxy/conftest.py), the default where the
extension is built (decision 0102).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import hpack
import pytest
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)

from gossamer.proxy.wire import h2codec, http1

if h2codec.NATIVE is None:
    # Not a skip: make test builds the extension, and these tests are about it.
    pytest.fail(
        f"the native HTTP/2 codec is not built: install {h2codec.BUILD_DEPS} and run "
        "`pip install -e .` again",
        pytrace=False,
    )
NATIVE = h2codec.NATIVE
from gossamer.proxy.wire import _h2native  # noqa: E402  (built: checked just above)

ROOT = Path(__file__).resolve().parents[2]

GRPC_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"echo.default.svc.cluster.local"),
    (b":path", b"/pkg.Echo/Unary"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"grpc-timeout", b"99m"),
]


def random_blocks(seed: int, count: int) -> list[list[tuple[bytes, bytes]]]:
    rnd = random.Random(seed)
    names = [b":method", b":path", b"content-type", b"x-request-id", b"grpc-timeout", b"x-a"]
    blocks = []
    for _ in range(count):
        block: list[tuple[bytes, bytes]] = []
        for _ in range(rnd.randint(0, 12)):
            value = bytes(rnd.randint(32, 126) for _ in range(rnd.randint(0, 40)))
            field = (rnd.choice(names), value)
            block.append(hpack.NeverIndexedHeaderTuple(*field) if rnd.random() < 0.1 else field)
        blocks.append(block)
    return blocks


@pytest.mark.parametrize(
    ("encoder", "decoder"),
    [(NATIVE.encoder, hpack.Decoder), (hpack.Encoder, NATIVE.decoder)],
    ids=["native encodes, hpack decodes", "hpack encodes, native decodes"],
)
def test_a_thousand_blocks_in_a_row_decode_as_they_were_encoded(
    encoder: type, decoder: type
) -> None:
    enc, dec = encoder(), decoder()
    for block in random_blocks(17, 1000):
        decoded = dec.decode(enc.encode(block), raw=True)
        assert decoded == block
        for sent, got in zip(block, decoded, strict=True):
            # (hpack sends a never-indexed field the static table holds whole, such as
            # content-type with no value, as a reference to it: non-empty values only.)
            if isinstance(sent, hpack.NeverIndexedHeaderTuple) and sent[1]:
                assert isinstance(got, hpack.NeverIndexedHeaderTuple), sent


def test_decoded_fields_are_hpack_header_tuples_as_h2_expects() -> None:
    dec = NATIVE.decoder()
    fields = dec.decode(hpack.Encoder().encode(GRPC_REQUEST), raw=True)
    assert all(type(f) is hpack.HeaderTuple for f in fields)
    assert fields[0].indexable


def test_str_fields_are_utf8_and_raw_false_gives_str() -> None:
    block = NATIVE.encoder().encode([("x-name", "välue")])
    assert NATIVE.decoder().decode(block) == [("x-name", "välue")]


def test_a_dict_and_sensitive_triples_are_taken_as_hpack_takes_them() -> None:
    enc = NATIVE.encoder()
    assert hpack.Decoder().decode(enc.encode({b"x-a": b"1"}), raw=True) == [(b"x-a", b"1")]
    (got,) = hpack.Decoder().decode(enc.encode([(b"x-secret", b"s", True)]), raw=True)
    assert isinstance(got, hpack.NeverIndexedHeaderTuple)


def test_a_headers_list_emptied_while_it_is_encoded_is_encoded_as_it_was() -> None:
    # The encoder reads its own copy: a field's __iter__ that clears the list cannot
    # free what it reads (an adversarial test found a use-after-free here).
    headers: list[object] = []

    class Field:
        def __iter__(self) -> Iterator[bytes]:
            headers.clear()
            return iter([b"x-a", b"1"])

    headers.extend([Field(), *[(b"x-%d" % i, b"v") for i in range(10)]])
    block = NATIVE.encoder().encode(headers)
    assert hpack.Decoder().decode(block, raw=True) == [
        (b"x-a", b"1"),
        *[(b"x-%d" % i, b"v") for i in range(10)],
    ]


def test_a_name_and_value_both_not_utf8_are_an_hpack_decoding_error() -> None:
    with pytest.raises(HPACKDecodingError, match="UTF-8"):
        NATIVE.decoder().decode(b"\x00\x01\xff\x01\xff", raw=False)


def test_an_encoder_and_decoder_work_though_init_never_ran() -> None:
    decoder = _h2native.Decoder.__new__(_h2native.Decoder)
    assert decoder.decode(b"\x82", raw=True) == [(b":method", b"GET")]
    encoder = _h2native.Encoder.__new__(_h2native.Encoder)
    assert hpack.Decoder().decode(encoder.encode([(b"a", b"b")]), raw=True) == [(b"a", b"b")]


def test_a_header_list_over_the_limit_is_oversized() -> None:
    dec = NATIVE.decoder()
    dec.max_header_list_size = 100
    with pytest.raises(OversizedHeaderListError, match="larger than 100"):
        dec.decode(hpack.Encoder().encode([(b"x-a", b"v" * 40), (b"x-b", b"v" * 40)]))


def test_an_hpack_bomb_is_refused_before_it_is_decoded_whole() -> None:
    # One 4 KB field in the table, then a block of a thousand one-byte references to it:
    # 4 MB decoded from about 1 KB.
    enc, dec = hpack.Encoder(), NATIVE.decoder()
    dec.decode(enc.encode([(b"x-bomb", b"a" * 4000)]))
    bomb = enc.encode([(b"x-bomb", b"a" * 4000)] * 1000)
    assert len(bomb) < 2000
    with pytest.raises(OversizedHeaderListError):
        dec.decode(bomb)


@pytest.mark.parametrize(
    "block",
    [
        b"\x82\x86\x84\xbe",  # index 62, and the dynamic table is empty
        b"\x80",  # index 0
        b"\x82\x20",  # a table size update after a field
        b"\x00\x03x-a\x84\xff\xff\xff\xff",  # Huffman with EOS in it
        b"\x00\x03x-a\x83\x1c\x64\x00",  # Huffman padding that is not EOS's prefix
        hpack.Encoder().encode(GRPC_REQUEST)[:-3],  # cut short
        b"\xff\xff\xff\xff\xff\xff\x0f",  # an index too large for any integer
    ],
    ids=[
        "an index beyond both tables",
        "index 0",
        "a table size update after a field",
        "EOS in a Huffman string",
        "Huffman padding of zeros",
        "a truncated block",
        "an integer overflow",
    ],
)
def test_an_undecodable_block_is_an_hpack_decoding_error(block: bytes) -> None:
    dec = NATIVE.decoder()
    with pytest.raises(HPACKDecodingError):
        dec.decode(block)
    # The table may now differ from the peer's: every later block is refused too.
    with pytest.raises(HPACKDecodingError, match="earlier bad header block"):
        dec.decode(hpack.Encoder().encode(GRPC_REQUEST))


def test_a_table_size_update_over_the_setting_is_an_invalid_table_size() -> None:
    dec = NATIVE.decoder()
    with pytest.raises(InvalidTableSizeError, match="4097 > 4096"):
        dec.decode(b"\x3f\xe2\x1f")


def test_a_smaller_table_setting_is_followed_by_both_ends() -> None:
    # This end's SETTINGS_HEADER_TABLE_SIZE, acknowledged: hpack's encoder signals the
    # new size in its next block, and the native decoder holds it to it.
    enc, dec = hpack.Encoder(), NATIVE.decoder()
    dec.decode(enc.encode(GRPC_REQUEST))
    dec.max_allowed_table_size = 256
    enc.header_table_size = 256
    assert dec.decode(enc.encode(GRPC_REQUEST), raw=True) == GRPC_REQUEST
    assert dec.header_table_size == 256
    # The peer's setting, on the native encoder: its next block starts with the update.
    nenc, hdec = NATIVE.encoder(), hpack.Decoder()
    hdec.decode(nenc.encode(GRPC_REQUEST))
    nenc.header_table_size = 0
    block = nenc.encode(GRPC_REQUEST)
    assert block[0] & 0xE0 == 0x20
    assert hdec.decode(block, raw=True) == GRPC_REQUEST
    assert hdec.header_table_size == 0


def test_the_codec_named_in_the_environment_is_chosen() -> None:
    assert h2codec.choose("python") is h2codec.PYTHON
    assert h2codec.choose("native") is NATIVE
    assert h2codec.choose("session") is h2codec.SESSION
    assert h2codec.choose(None) is h2codec.SESSION  # the best one built (decision 0102)
    with pytest.raises(h2codec.CodecUnavailable, match="expected one of python, native, session"):
        h2codec.choose("nghttp2")


# ---- without the extension -----------------------------------------------------------

# Imports the proxy's data plane as `gossamer proxy` does (logging set up first), in a
# process where importing the extension fails as it does where it was never built.
WITHOUT_EXTENSION = """
import importlib.abc, logging, sys
class NotBuilt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("gossamer.proxy.wire._h2native", "gossamer.proxy.wire._h1native"):
            raise ImportError(f"No module named {name!r}")
        return None
if sys.argv[1] == "block":
    sys.meta_path.insert(0, NotBuilt())
logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
import gossamer
import gossamer.proxy.dataplane
from gossamer.proxy.wire import h2codec, http1
print("gossamer from", gossamer.__file__)
print("codec", h2codec.active.name)
print("http1 native", http1.native)
"""


def _proxy_import(
    block: bool, codec: str | None, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (h2codec.ENV, http1.READER_ENV, "PYTHONPATH")
    }
    if codec is not None:
        env[h2codec.ENV] = codec
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTENSION, "block" if block else "as-is"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _codec_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "HTTP/2 codec" in line]


def test_without_the_extension_the_proxy_says_so_once_and_uses_pure_python() -> None:
    done = _proxy_import(block=True, codec=None)
    assert done.returncode == 0, done.stderr
    assert "codec python" in done.stdout
    assert "http1 native False" in done.stdout  # llhttp reads every HTTP/1.1 message
    (line,) = _codec_lines(done.stderr)
    assert line.startswith("WARNING gossamer.proxy: HTTP/2 codec: pure Python")
    assert "libnghttp2-dev" in line
    # And the HTTP/1.1 reader is llhttp alone, said once too.
    assert "http1 native False" in done.stdout
    (line,) = [x for x in done.stderr.splitlines() if "HTTP/1.1 reader" in x]
    assert line.startswith("WARNING gossamer.proxy: HTTP/1.1 reader: llhttp alone (the extension")


def test_with_the_extension_the_proxy_says_it_uses_the_session_engine() -> None:
    done = _proxy_import(block=False, codec=None)
    assert done.returncode == 0, done.stderr
    assert "codec session" in done.stdout
    (line,) = _codec_lines(done.stderr)
    assert line.startswith("INFO gossamer.proxy: HTTP/2 codec: session (libnghttp2 ")
    assert line.endswith(" nghttp2_session)")


def test_forcing_the_native_codec_with_the_extension_uses_it() -> None:
    done = _proxy_import(block=False, codec="native")
    assert done.returncode == 0, done.stderr
    assert "codec native" in done.stdout
    (line,) = _codec_lines(done.stderr)
    assert line.startswith("INFO gossamer.proxy: HTTP/2 codec: native (libnghttp2 ")


def test_forcing_the_session_engine_without_the_extension_is_a_clear_error() -> None:
    done = _proxy_import(block=True, codec="session")
    assert done.returncode != 0
    assert "CodecUnavailable: GOSSAMER_H2_CODEC=session, but the extension" in done.stderr
    assert "libnghttp2-dev" in done.stderr


def test_forcing_the_native_codec_without_the_extension_is_a_clear_error() -> None:
    done = _proxy_import(block=True, codec="native")
    assert done.returncode != 0
    assert "CodecUnavailable: GOSSAMER_H2_CODEC=native, but the extension" in done.stderr
    assert "libnghttp2-dev" in done.stderr


def test_forcing_the_python_codec_with_the_extension_uses_python() -> None:
    done = _proxy_import(block=False, codec="python")
    assert done.returncode == 0, done.stderr
    assert "codec python" in done.stdout
    (line,) = _codec_lines(done.stderr)
    assert line == f"INFO gossamer.proxy: HTTP/2 codec: pure Python (hpack {hpack.__version__})"


@pytest.mark.e2e
def test_an_install_built_without_a_compiler_has_no_extension_and_falls_back(
    tmp_path: Path,
) -> None:
    # pip builds Gossamer as it would on a machine without gcc: the extension's build
    # fails, the wheel is built all the same, and the proxy from it uses pure Python.
    env = {**os.environ, "CC": "/bin/false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("gossamer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gossamer/proxy/wire/h2codec.py" in names
    assert not [n for n in names if "native" in n and n.endswith(".so")]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    done = _proxy_import(block=False, codec=None, pythonpath=site)
    assert done.returncode == 0, done.stderr
    assert f"gossamer from {site}" in done.stdout
    assert "codec python" in done.stdout
    (line,) = _codec_lines(done.stderr)
    assert line.startswith("WARNING gossamer.proxy: HTTP/2 codec: pure Python")
