"""One 3-member etcd cluster per test session: each test keeps to its own key prefix."""

from __future__ import annotations

from collections.abc import Iterator

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
