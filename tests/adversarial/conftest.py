"""The adversarial suites reuse the proxy suite's CA and event loop and the end-to-end
control plane; they bring no fixtures of their own."""

from tests.e2e.conftest import control_plane  # noqa: F401 (a fixture)
from tests.proxy.conftest import pki, pytest_asyncio_loop_factories  # noqa: F401
