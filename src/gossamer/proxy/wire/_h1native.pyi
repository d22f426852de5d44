# The C extension _h1native.c (built where a C compiler and Python's headers are;
# without it, llhttp reads every HTTP/1.1 message: decision 0115).

K_DROP: int
K_CONNECTION: int
K_CONTENT_LENGTH: int
K_TRANSFER_ENCODING: int
K_HOST: int
K_EXPECT: int
K_SRC_SERVICE: int
K_FORWARDED_FOR: int
K_UPGRADE: int

def parse_request(
    data: bytes, start: int, kinds: dict[bytes, int], max_fields: int, max_head: int, /
) -> (
    tuple[
        int,
        int,
        bytes,
        bytes,
        list[tuple[bytes, bytes]],
        bytes | None,
        bytes | None,
        bytes | None,
        bytes | None,
    ]
    | None
): ...
def parse_response(
    data: bytes, start: int, kinds: dict[bytes, int], max_head: int, /
) -> tuple[int, int, int, bytes, list[tuple[bytes, bytes]], bytes] | None: ...
def request_head(
    method: bytes,
    target: bytes,
    host: bytes | None,
    headers: list[tuple[bytes, bytes]],
    extra: bytes,
    /,
) -> bytes | None: ...
def response_head(
    status: int, reason: bytes, headers: list[tuple[bytes, bytes]], extra: bytes, /
) -> bytes | None: ...
