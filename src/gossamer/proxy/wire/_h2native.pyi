# The C extension _h2native.c (built only where libnghttp2's headers are; see h2codec).
from typing import Any

NGHTTP2_VERSION: str

class Encoder:
    header_table_size: int
    def encode(self, headers: Any, huffman: bool = True) -> bytes: ...

class Decoder:
    max_header_list_size: int
    max_allowed_table_size: int
    @property
    def header_table_size(self) -> int: ...
    def __init__(self, max_header_list_size: int = 65536) -> None: ...
    def decode(self, data: bytes | memoryview, raw: bool = False) -> list[Any]: ...
