"""The HA tests share the store tests' real etcd cluster fixture."""

from tests.store.conftest import etcd_cluster

__all__ = ["etcd_cluster"]
