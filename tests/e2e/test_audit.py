"""The audit log and join-token uses, against the real control plane process."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from gossamer.errors import IdentityError
from gossamer.proxy.agent.session import Agent
from tests.e2e.conftest import ControlPlaneProcess
from tests.e2e.test_discovery import agent_for

pytestmark = pytest.mark.e2e

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
"""


@pytest.mark.asyncio
async def test_a_join_token_is_single_use_and_changes_and_certificates_are_audited(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=POLICY, check=True)
    first, _ = agent_for(control_plane, tmp_path, "web-1", "web", {"app": "web"})
    # A second proxy presenting the same token is refused: it was good for one join.
    second = Agent(
        replace(first.config, workload="web-2", state_dir=tmp_path / "web-2"), first.dataplane
    )
    try:
        await first.join()
        with pytest.raises(IdentityError, match="already used 1 time"):
            await second.join()
    finally:
        await first.stop(deregister=False)
        await second.stop(deregister=False)

    log = json.loads(control_plane.cli("audit", "-o", "json", check=True).stdout)["items"]
    actions = [(i["action"], i["kind"], i["name"]) for i in log]
    assert ("apply.created", "AuthorizationPolicy", "deny-admin") in actions
    assert [i["action"] for i in log if i["kind"] == "JoinToken"] == ["token.create", "token.use"]
    [cert] = [i for i in log if i["action"] == "certificate.issue"]
    assert cert["name"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert cert["actor"].startswith("join-token ")
    assert cert["detail"]["serial"] and cert["detail"]["notAfter"]
    # Filters, and an API token (read or admin) is required to read it.
    only = json.loads(control_plane.cli("audit", "--kind", "AuthorizationPolicy", "-o", "json",
                                        check=True).stdout)["items"]  # fmt: skip
    assert [i["name"] for i in only] == ["deny-admin"]
    refused = control_plane.cli("audit", token=False)
    assert refused.returncode == 1 and "needs an API token" in refused.stderr
    mode = stat.S_IMODE((control_plane.data_dir / "audit.db").stat().st_mode)
    assert mode == 0o600
