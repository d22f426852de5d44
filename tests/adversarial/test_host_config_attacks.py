"""The host config file (decisions 0106, 0107) attacked: what a hostile or broken file, or a
path swapped under the host proxy, can make it do.

The host proxy reads the file on its event loop (`ConfigFile.changed` every poll,
`ConfigFile.read` at start and on each reload), where every uid workload's data plane
runs too: a read that never returns stops them all. The tests read from a thread with
a bounded wait, and unblock it in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gossamer.errors import InvalidResource
from gossamer.host.config import ConfigFile
from gossamer.resources.host import load_host_configuration


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A named pipe where the config file should be (a path swapped for one, or a
    symlink to one); any reader still blocked on it is let go at the end."""
    path = tmp_path / "host.yaml"
    os.mkfifo(path)
    try:
        yield path
    finally:
        # Opening the write end frees a reader blocked in open(); closing it, in read().
        with contextlib.suppress(OSError):  # ENXIO: no reader left
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def _returns_within(call: Callable[[], object], seconds: float) -> bool:
    """Whether `call` returns (or raises) within `seconds`, run on a daemon thread."""
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except Exception:
            pass
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


FIFO_REASON = (
    "ConfigFile.changed and ConfigFile.read open the path with read_bytes(), blocking: a "
    "config path that is (or links to) a FIFO blocks the host proxy's event loop for ever "
    "(and /dev/zero is read whole before MAX_CONFIG_BYTES is checked); the same holds for a "
    "netns path opened with os.open in HostProxy._start_configured"
)


@pytest.mark.xfail(strict=True, reason=FIFO_REASON)
def test_polling_a_config_path_swapped_for_a_fifo_returns(fifo: Path) -> None:
    config = ConfigFile(fifo)
    assert _returns_within(config.changed, 3.0)


@pytest.mark.xfail(strict=True, reason=FIFO_REASON)
def test_reading_a_config_path_that_is_a_fifo_is_an_error_not_a_hang(fifo: Path) -> None:
    config = ConfigFile(fifo)
    assert _returns_within(config.read, 3.0)


# ---- what held ------------------------------------------------------------------------------

BOMB = (
    b'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    + b"".join(
        b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((98 + i,) * 2 + (97 + i,) * 9)
        for i in range(8)
    )
    + b"kind: HostConfiguration\n"
)
HELD = [
    ("an alias bomb", BOMB, "aliases expand it to"),
    ("nesting 5,000 deep", b"kind: HostConfiguration\nx: " + b"[" * 5000 + b"]" * 5000, "deeper"),
    ("a python tag", b"kind: !!python/object/apply:os.system ['id']\n", "could not determine"),
    ("a duplicate key", b"kind: HostConfiguration\nkind: Other\n", "duplicate key"),
]


@pytest.mark.parametrize(("text", "error"), [h[1:] for h in HELD], ids=[h[0] for h in HELD])
def test_a_hostile_yaml_file_is_refused_at_once_naming_why(text: bytes, error: str) -> None:
    # Refused before the work it asks for (the bomb would be 490 million values).
    with pytest.raises(InvalidResource, match=error):
        load_host_configuration(text, "host.yaml")
