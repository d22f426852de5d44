"""Hostile input against the native HPACK codec (`_h2native`, decision 0097), in process
and through a real proxy.

In process, the codec is compared with hpack (the reference h2 used before it) on
random and mutated header blocks, and run under AddressSanitizer: this file compiles
`_h2native.c` with -fsanitize=address into a temporary directory and imports it in a
child process with libasan preloaded and PYTHONMALLOC=malloc (so that Python's own
allocator does not hide a use after free). A defect found here is a test marked
xfail(strict=True) with the defect in its reason: it passes while the defect is there
and fails once it is fixed, so the mark must then go.

Through a proxy: a raw HTTP/2 client writes each hostile block in a HEADERS frame to
the outbound h2c listener of a proxy on the native codec; the proxy must end that
connection with GOAWAY (COMPRESSION_ERROR, or ENHANCE_YOUR_CALM for an HPACK bomb)
and go on serving other connections. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

import hpack
import pytest
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame, SettingsFrame

from gossamer.proxy.wire import h2codec
from tests.proxy.conftest import Pki
from tests.proxy.test_e2e_upgrade import two_proxies
from tests.proxy.test_h2_hardening import RawH2, echo_mesh, open_to, request

if h2codec.NATIVE is None:
    # Not a skip: these tests are about the extension (as tests/proxy/test_h2codec.py).
    pytest.fail(
        f"the native HTTP/2 codec is not built: install {h2codec.BUILD_DEPS}", pytrace=False
    )

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src/gossamer/proxy/wire/_h2native.c"
NATIVE = h2codec.NATIVE

COMPRESSION_ERROR = 9
ENHANCE_YOUR_CALM = 11


# ---- the AddressSanitizer build --------------------------------------------------------


def _libasan() -> str:
    out = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.path.isabs(out):
        pytest.fail("gcc has no libasan here: install libasan (Debian: libasan8)", pytrace=False)
    return out


@pytest.fixture(scope="module")
def asan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(directory holding _h2native built with ASan, libasan's path)."""
    out = tmp_path_factory.mktemp("h2native-asan")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    subprocess.run(
        [
            "gcc", "-shared", "-fPIC", "-g", "-O1", "-fsanitize=address",
            "-fno-omit-frame-pointer", f"-I{sysconfig.get_paths()['include']}",
            str(SOURCE), "-lnghttp2", "-o", str(out / f"_h2native{suffix}"),
        ],
        check=True,
    )  # fmt: skip
    yield out, _libasan()


def run_asan(
    asan: tuple[Path, str], code: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a child with the ASan build imported as N (and hpack imported)."""
    directory, libasan = asan
    lines = ["import sys", f"sys.path.insert(0, {str(directory)!r})", "import _h2native as N"]
    prelude = "\n".join([*lines, "import hpack", ""])
    env = {
        **os.environ,
        "LD_PRELOAD": libasan,
        "PYTHONMALLOC": "malloc",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
    }
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def run_plain(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a child with the installed extension imported as N."""
    prelude = "from gossamer.proxy.wire import _h2native as N\nimport hpack\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


# ---- defects found here, fixed in 3a5e597 (strict xfails until then) -----------------

# A headers list whose first field is an iterable that empties the list while the
# encoder reads it: Encoder_encode kept PySequence_Fast_ITEMS(list) and its length from
# before the loop, and read the freed item array afterwards (it now reads a tuple copy).
LIST_EMPTIED_DURING_ENCODE = """
headers = []
class Field:
    def __iter__(self):
        headers.clear()
        return iter([b"x-a", b"1"])
headers.extend([Field()] + [(b"x-%d" % i, b"v") for i in range(10)])
try:
    N.Encoder().encode(headers)
except Exception as e:
    print("refused:", type(e).__name__, e)
"""


def test_a_headers_list_mutated_while_it_is_encoded_is_not_read_after_it_is_freed(
    asan: tuple[Path, str],
) -> None:
    done = run_asan(asan, LIST_EMPTIED_DURING_ENCODE)
    assert "AddressSanitizer" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_name_and_a_value_both_not_utf8_are_an_hpack_decoding_error() -> None:
    # Literal without indexing, new name b"\xff", value b"\xff". The value was decoded
    # while the name's UnicodeDecodeError was still set: SystemError.
    with pytest.raises(HPACKDecodingError, match="UTF-8"):
        NATIVE.decoder().decode(b"\x00\x01\xff\x01\xff", raw=False)


@pytest.mark.parametrize(
    "code",
    [
        "N.Decoder.__new__(N.Decoder).decode(b'\\x82')",
        "N.Encoder.__new__(N.Encoder).encode([(b'a', b'b')])",
        "N.Decoder.__new__(N.Decoder).max_allowed_table_size = 10",
        "N.Encoder.__new__(N.Encoder).header_table_size = 10",
        "class D(N.Decoder):\n    def __init__(self): pass\nD().decode(b'\\x82')",
    ],
    ids=["decode", "encode", "decoder table size", "encoder table size", "subclass"],
)
def test_an_encoder_or_decoder_whose_init_did_not_run_raises_rather_than_crashes(
    code: str,
) -> None:
    # The deflater and inflater were made in __init__: NULL (a segfault) without it.
    body = textwrap.indent(code, "    ")
    done = run_plain(f"try:\n{body}\nexcept Exception as e:\n    print(type(e).__name__)\n")
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


# ---- what holds ---------------------------------------------------------------------

# Differential fuzzing as h2 calls the decoder (raw=True): blocks hpack's encoder makes,
# table size changes among them, half of them mutated (bytes flipped, inserted, cut,
# runs repeated). Wherever hpack decodes a block, the native decoder must give the same
# fields of the same types; wherever hpack refuses one, the native one must refuse it
# with an hpack exception, never anything else.
FUZZ = """
import random
from hpack.exceptions import HPACKError, HPACKDecodingError
rnd = random.Random({seed})
NAMES = [b":method", b":path", b"content-type", b"x-a", b"cookie", b"authorization",
         b"x-" + b"n" * 50]
def fields():
    out = []
    for _ in range(rnd.randint(0, 10)):
        v = bytes(rnd.randint(0, 255) for _ in range(rnd.choice([0, 1, 5, 40, 300])))
        f = (rnd.choice(NAMES), v)
        out.append(hpack.NeverIndexedHeaderTuple(*f) if rnd.random() < .1 else f)
    return out
def mutate(b):
    b = bytearray(b)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.random()
        if not b or op < .3:
            b.insert(rnd.randint(0, len(b)), rnd.randint(0, 255))
        elif op < .6:
            b[rnd.randrange(len(b))] = rnd.randint(0, 255)
        elif op < .8:
            del b[rnd.randrange(len(b)):]
        else:
            i = rnd.randrange(len(b)); b[i:i] = b[i:i + rnd.randint(1, 8)] * rnd.randint(1, 50)
    return bytes(b)
problems = []
counts = dict(same=0, both_refused=0)
enc, hd, nd = hpack.Encoder(), hpack.Decoder(), N.Decoder()
for it in range({iterations}):
    if rnd.random() < .05:
        enc.header_table_size = rnd.choice([0, 64, 256, 4096])
    block = enc.encode(fields())
    mutated = rnd.random() < .5
    if mutated:
        block = mutate(block)
    try:
        h, herr = hd.decode(block, raw=True), None
    except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
        h, herr = None, e
    try:
        n, nerr = nd.decode(block, raw=True), None
    except HPACKDecodingError as e:
        n, nerr = None, e
    except BaseException as e:
        problems.append(("not an hpack error", repr(e), block.hex()[:120]))
        n, nerr = None, e
    if herr is None and nerr is None:
        if h != n or [type(x) for x in h] != [type(x) for x in n]:
            problems.append(("different fields", block.hex()[:120], repr(h)[:120], repr(n)[:120]))
        else:
            counts["same"] += 1
        continue
    if herr is None and not mutated:
        problems.append(("refused a block hpack made", repr(nerr), block.hex()[:120]))
    elif nerr is None:
        problems.append(("took a block hpack refuses", repr(herr), block.hex()[:120]))
    else:
        counts["both_refused"] += 1
    enc, hd, nd = hpack.Encoder(), hpack.Decoder(), N.Decoder()
print(counts)
for p in problems[:10]:
    print("PROBLEM", p)
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_random_and_mutated_blocks_decode_as_hpack_decodes_them_under_asan(
    asan: tuple[Path, str], seed: int
) -> None:
    done = run_asan(asan, FUZZ.format(seed=seed, iterations=4000))
    assert "AddressSanitizer" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PROBLEM" not in done.stdout, done.stdout
    assert "'same': 0" not in done.stdout and "'both_refused': 0" not in done.stdout, done.stdout


# The encoder under ASan: up to 300 fields a block (past the 64 kept on the stack), values
# up to 20 KB, sensitive triples and never-indexed tuples, str and bytes, and the peer's
# table size changing between blocks, each block decoded by hpack as sent.
ENCODER_FUZZ = """
import random
rnd = random.Random({seed})
TEXT = bytes(rnd.randint(32, 126) for _ in range(40000))
enc, dec = N.Encoder(), hpack.Decoder()
dec.max_header_list_size = 1 << 30
for it in range({iterations}):
    for _ in range(rnd.choice([0, 0, 0, 1, 2])):
        size = rnd.choice([0, 1, 100, 4096, 65536])
        enc.header_table_size = size
        dec.max_allowed_table_size = max(dec.max_allowed_table_size, size)
    fields, want = [], []
    for _ in range(rnd.choice([0, 1, 5, 63, 64, 65, 300])):
        name = b"x-%d" % rnd.randrange(100)
        start = rnd.randrange(len(TEXT) - 20000)
        value = TEXT[start : start + rnd.choice([0, 3, 100] * 20 + [20000])]
        kind = rnd.random()
        if kind < .1:
            fields.append(hpack.NeverIndexedHeaderTuple(name, value))
        elif kind < .2:
            fields.append((name, value, True))
        elif kind < .3:
            fields.append((name.decode(), value.decode()))
        else:
            fields.append((name, value))
        want.append((name, value))
    got = dec.decode(enc.encode(fields), raw=True)
    if got != want:
        print("PROBLEM", it, len(fields))
        break
print("done")
"""


def test_the_encoder_round_trips_big_and_many_field_blocks_under_asan(
    asan: tuple[Path, str],
) -> None:
    done = run_asan(asan, ENCODER_FUZZ.format(seed=7, iterations=100))
    assert "AddressSanitizer" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "done", done.stdout


# Blocks that must be refused, each under ASan and followed by a good block on the same
# decoder (refused too: the table is no longer the peer's).
HOSTILE_BLOCKS = {
    "prefix integer overflow in an index": b"\xff" + b"\xff" * 9 + b"\x0f",
    "prefix integer overflow in a size update": b"\x3f" + b"\xff" * 10 + b"\x00",
    "size update over the setting": b"\x3f\xe2\x1f\x82",
    "second size update over the setting": b"\x3f\xe1\x1f\x3f\xe2\x1f\x82",
    "size update after a field": b"\x82\x3f\x01",
    "literal length beyond the block": b"\x00\x7f\xff\xff\xff\x0fx-a\x01b",
    "huffman length beyond the block": b"\x00\x83\xff\xff",
    "huffman EOS": b"\x00\x03x-a\x84\xff\xff\xff\xff",
    "huffman padding over 7 bits": b"\x00\x03x-a\x82\x1f\xff",
    "index 0": b"\x80",
    "index past both tables": b"\xff\xff\x7f",
    "name index past both tables": b"\x7f\x20\x01a",
    "cut in a name": b"\x00\x05x-",
    "empty name index literal cut": b"\x40",
}


def test_hostile_blocks_are_refused_cleanly_under_asan(asan: tuple[Path, str]) -> None:
    code = f"""
    blocks = {HOSTILE_BLOCKS!r}
    good = hpack.Encoder().encode([(b":method", b"GET")])
    for name, block in blocks.items():
        for raw in (True, False):
            d = N.Decoder()
            try:
                d.decode(block, raw=raw)
                print("ACCEPTED", name)
            except hpack.HPACKDecodingError:
                pass
            try:
                d.decode(good)
                print("ACCEPTED AFTER ERROR", name)
            except hpack.HPACKDecodingError:
                pass
    print("done")
    """
    done = run_asan(asan, code)
    assert "AddressSanitizer" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "done", done.stdout


def bomb(references: int) -> bytes:
    """A 4000-byte value put in the dynamic table, then referenced `references` times."""
    first = hpack.Encoder().encode([(b"x-bomb", b"a" * 4000)])
    assert first[0] & 0xC0 == 0x40  # literal with incremental indexing
    return first + b"\xbe" * references


@pytest.mark.parametrize("limit", [0, 1, 4100, 65536])
def test_an_hpack_bomb_stops_at_max_header_list_size(limit: int) -> None:
    dec = NATIVE.decoder()
    dec.max_header_list_size = limit
    with pytest.raises(OversizedHeaderListError):
        dec.decode(bomb(100_000))  # 400 MB decoded from 104 KB


def rss_kib() -> int:
    """This process's resident memory now (not its high-water mark)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() // 1024


def test_the_decoder_and_encoder_hold_no_references_and_no_memory_per_call() -> None:
    block = hpack.Encoder().encode(
        [(b":method", b"GET"), (b"x-a", b"v" * 100), hpack.NeverIndexedHeaderTuple(b"x-s", b"s")]
    )
    fields = [(b"x-a", "välue"), (bytearray(b"x-b"), memoryview(b"v")), (b"x-c", b"c", True)]
    dec, enc = NATIVE.decoder(), NATIVE.encoder()
    dec.decode(block, raw=True)
    enc.encode(fields)
    refs = [sys.getrefcount(o) for o in (block, *fields, *fields[0])]
    before = rss_kib()
    for _ in range(100_000):
        dec.decode(block, raw=True)
        dec.decode(memoryview(block))
        enc.encode(fields)
    for _ in range(20_000):
        broken = NATIVE.decoder()
        for _ in range(2):
            with pytest.raises(HPACKDecodingError):
                broken.decode(b"\x00\x01\xff\x01a")  # not UTF-8; then: an earlier bad block
    grown_kib = rss_kib() - before
    assert [sys.getrefcount(o) for o in (block, *fields, *fields[0])] == refs
    # One leaked field tuple a call would be tens of MB; allow the allocator its slack.
    assert grown_kib < 8 * 1024, f"max RSS grew {grown_kib} KiB over 300k calls"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"a",)],
        [(b"a", 1)],
        [(None, b"b")],
        [("a\ud800", "b")],
        5,
        [5],
    ],
    ids=["1-tuple", "int value", "None name", "surrogate", "int", "int field"],
)
def test_odd_encoder_inputs_are_refused_with_a_python_error(headers: object) -> None:
    enc = NATIVE.encoder()
    with pytest.raises((TypeError, ValueError, UnicodeEncodeError)):
        enc.encode(headers)
    # and the encoder goes on encoding, its table still the decoder's
    dec = hpack.Decoder()
    assert dec.decode(enc.encode([(b"x-a", b"1")]), raw=True) == [(b"x-a", b"1")]


def test_generators_dicts_tuples_and_views_encode_as_hpack_reads_them() -> None:
    dec = hpack.Decoder()
    enc = NATIVE.encoder()
    assert dec.decode(enc.encode(f for f in [(b"x-a", b"1")]), raw=True) == [(b"x-a", b"1")]
    assert dec.decode(enc.encode({"x-b": "2"}), raw=True) == [(b"x-b", b"2")]
    assert dec.decode(enc.encode(((b"x-c", b"3", False),)), raw=True) == [(b"x-c", b"3")]
    got = dec.decode(enc.encode([(bytearray(b"x-d"), memoryview(b"4"), True)]), raw=True)
    assert got == [(b"x-d", b"4")] and isinstance(got[0], hpack.NeverIndexedHeaderTuple)


@pytest.mark.parametrize("size", [-1, 2**32, 2**63])
def test_table_sizes_out_of_range_are_refused_and_change_nothing(size: int) -> None:
    dec, enc = NATIVE.decoder(), NATIVE.encoder()
    with pytest.raises((ValueError, OverflowError)):
        dec.max_allowed_table_size = size
    with pytest.raises((ValueError, OverflowError)):
        enc.header_table_size = size
    assert dec.max_allowed_table_size == 4096 and enc.header_table_size == 4096
    assert dec.decode(enc.encode([(b"x-a", b"1")]), raw=True) == [(b"x-a", b"1")]


def test_a_peer_table_size_of_four_gib_does_not_make_the_encoder_grow_past_4_kib() -> None:
    # SETTINGS_HEADER_TABLE_SIZE is the peer's to choose, up to 2**32-1.
    enc, dec = NATIVE.encoder(), hpack.Decoder()
    enc.header_table_size = 2**32 - 1
    dec.max_allowed_table_size = 2**32 - 1
    rnd = random.Random(3)
    for _ in range(200):
        fields = [(b"x-%d" % rnd.randrange(10**6), b"v" * 200) for _ in range(20)]
        assert dec.decode(enc.encode(fields), raw=True) == fields
    assert dec.header_table_size <= 4096


# ---- through a proxy on the native codec --------------------------------------------


@pytest.fixture
def native_codec() -> Iterator[None]:
    before = h2codec.active
    h2codec.use("native")
    try:
        yield
    finally:
        h2codec.active = before


async def send_block(raw: RawH2, stream_id: int, block: bytes) -> None:
    frame = HeadersFrame(stream_id, block)
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    await raw.send(frame.serialize())


E2E_BLOCKS = {
    **{k: HOSTILE_BLOCKS[k] for k in (
        "prefix integer overflow in an index", "size update over the setting",
        "size update after a field", "huffman EOS", "index past both tables",
        "literal length beyond the block",
    )},
    "hpack bomb": bomb(2000),
}  # fmt: skip


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_a_proxy_on_the_native_codec_ends_each_hostile_block_with_goaway_and_serves_on(
    pki: Pki, native_codec: None
) -> None:
    async with echo_mesh(pki) as (client, server, _app):
        for name, block in E2E_BLOCKS.items():
            raw = await open_to(pki, client, server, "outbound")
            try:
                # A good request first, so the hostile block meets a live table.
                assert await raw.get(1, request()) == 200, name
                await send_block(raw, 3, block)
                assert await raw.closed(), f"{name}: connection still open"
                expected = ENHANCE_YOUR_CALM if name == "hpack bomb" else COMPRESSION_ERROR
                assert raw.goaway is not None and raw.goaway[0] == expected, (name, raw.goaway)
            finally:
                await raw.close()
        # 200 more hostile connections, then another client is still served.
        for i in range(200):
            raw = await open_to(pki, client, server, "outbound")
            try:
                await send_block(raw, 1, list(E2E_BLOCKS.values())[i % len(E2E_BLOCKS)])
                assert await raw.closed()
            finally:
                await raw.close()
        raw = await open_to(pki, client, server, "outbound")
        try:
            assert await raw.get(1, request()) == 200
        finally:
            await raw.close()


@pytest.mark.e2e
@pytest.mark.parametrize("table_size", [0, 1, 2**32 - 1])
@pytest.mark.asyncio
async def test_the_native_encoder_follows_the_clients_header_table_size_setting(
    pki: Pki, native_codec: None, table_size: int
) -> None:
    async with echo_mesh(pki) as (client, server, _app):
        raw = await open_to(pki, client, server, "outbound")
        try:
            # hpack's decoder refuses a block after which the table is larger than it
            # allows: each answer proves the proxy's encoder signalled the new size.
            raw.decoder.max_allowed_table_size = table_size
            await raw.send(
                SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: table_size}).serialize()
            )
            for stream_id in (1, 3, 5):
                path = b"/anything/%d" % stream_id
                assert await raw.get(stream_id, request(path, b"GET", (b"x-a", b"v" * 300))) == 200
            assert raw.decoder.header_table_size <= min(table_size, 4096)
            assert raw.goaway is None
        finally:
            await raw.close()


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_a_continuation_flood_is_cut_before_it_is_decoded(
    pki: Pki, native_codec: None
) -> None:
    async with echo_mesh(pki) as (client, server, _app):
        raw = await open_to(pki, client, server, "outbound")
        try:
            head = HeadersFrame(1, raw.encoder.encode(request()))
            await raw.send(head.serialize())  # no END_HEADERS
            chunk = ContinuationFrame(1, b"\x82" * 16_000).serialize() * 10
            for _ in range(100):  # at most 16 MB
                if not await raw.send(chunk):
                    break
            assert await raw.closed()
            assert raw.goaway is not None
        finally:
            await raw.close()
        raw = await open_to(pki, client, server, "outbound")
        try:
            assert await raw.get(1, request()) == 200
        finally:
            await raw.close()


class HostileH2App:
    """An h2c app that answers every request with the same hostile response header block."""

    def __init__(self, block: bytes) -> None:
        self.block = block
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readexactly(24)  # the client preface
            writer.write(SettingsFrame(0).serialize())
            while True:
                frame, length = Frame.parse_frame_header(memoryview(await reader.readexactly(9)))
                frame.parse_body(memoryview(await reader.readexactly(length)))
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    writer.write(SettingsFrame(0, flags=["ACK"]).serialize())
                elif isinstance(frame, HeadersFrame):
                    answer = HeadersFrame(frame.stream_id, self.block)
                    answer.flags.add("END_HEADERS")
                    answer.flags.add("END_STREAM")
                    writer.write(answer.serialize())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


GRPC_CALL = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"echo"),
    (b":path", b"/pkg.Echo/Unary"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "name", ["prefix integer overflow in an index", "huffman EOS", "hpack bomb"]
)
@pytest.mark.asyncio
async def test_a_hostile_upstream_response_block_fails_the_call_not_the_proxy(
    pki: Pki, native_codec: None, name: str
) -> None:
    app = HostileH2App(E2E_BLOCKS[name])
    port = await app.start()
    try:
        async with two_proxies(pki, port, "grpc") as (client, _server):
            assert client.outbound_address is not None
            for attempt in range(3):
                raw = await RawH2.open(client.outbound_address)
                try:
                    await raw.send(raw.headers(1, GRPC_CALL, end_stream=False))
                    await raw.send(raw.data(1, b"\x00\x00\x00\x00\x00", end_stream=True))
                    assert await raw.settled(1), f"{name}: call {attempt} never ended"
                    fields = dict(raw.heads.get(1, []))
                    failed = (
                        1 in raw.resets
                        or fields.get(b"grpc-status", b"0") != b"0"
                        or (fields.get(b":status", b"200") != b"200")
                    )
                    assert failed, (name, fields)
                finally:
                    await raw.close()
            assert app.connections >= 1
    finally:
        await app.close()
