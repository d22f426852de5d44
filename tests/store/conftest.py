"""One 3-member etcd cluster per test session: each test keeps to its own key prefix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .etcdcluster import EtcdCluster


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_root(tmp_path: Path) -> Path:
    return tmp_path
