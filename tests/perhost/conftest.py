"""Per-host mode's tests use the end-to-end control plane, and the network-namespace hosts."""

from tests.e2e.conftest import control_plane  # noqa: F401 (a fixture)
