"""The capture tests build hosts with the multi-host harness (tests/hosts)."""

from tests.hosts.conftest import control_plane, network

__all__ = ["control_plane", "network"]
