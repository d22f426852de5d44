"""Where the control plane keeps mesh resources: one protocol, several backends."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from gossamer.errors import StoreError
from gossamer.store.base import ApplyResult, Compacted, Store, WatchEvent
from gossamer.store.etcd import EtcdStore
from gossamer.store.sqlite import SqliteStore, make_dirs

__all__ = [
    "ApplyResult",
    "Compacted",
    "EtcdStore",
    "SqliteStore",
    "Store",
    "WatchEvent",
    "make_dirs",
    "open_store",
    "system_store_for",
]

_SUPPORTED = (
    "sqlite:///ABSOLUTE/PATH, or a plain file path (SQLite); "
    "etcd://HOST:PORT[,HOST:PORT...][/prefix] (etcd)"
)


def open_store(url: str, *, expect_existing: bool = False) -> Store:
    """Open the store named by `url`: a file path, `sqlite:///abs/path`, or
    `etcd://H1:P1,H2:P2[/prefix]` (a Store on those etcd members, under that key prefix).

    `expect_existing`: the caller knows the store has been used before, so an empty one
    is lost data and refused (see SqliteStore). Raises StoreError for a URL it cannot
    use, listing the supported forms.
    """
    if "://" not in url:
        if not url:
            raise StoreError(f"no store given: use {_SUPPORTED}")
        return SqliteStore(Path(url).expanduser(), expect_existing=expect_existing)
    parts = urlsplit(url)
    if parts.scheme == "etcd":
        return EtcdStore.from_url(url)
    if parts.scheme != "sqlite":
        raise StoreError(
            f"unsupported store URL {url!r} (scheme {parts.scheme!r}): supported are {_SUPPORTED}"
        )
    if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
        raise StoreError(
            f"store URL {url!r} must name an absolute path with three slashes, "
            "like sqlite:///var/lib/gossamer/store.db"
        )
    return SqliteStore(unquote(parts.path), expect_existing=expect_existing)


def system_store_for(store: Store) -> Store | None:
    """Where control-plane replicas sharing `store` keep their own records (heartbeats,
    the leader, join-token uses): a sibling of an etcd store. None for a store that one
    replica has to itself (SQLite): its records stay in its data dir."""
    if isinstance(store, EtcdStore):
        return store.sibling("system")
    return None
