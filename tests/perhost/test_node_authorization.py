"""Node authorization against the real control plane process: a host obtains the
certificates of the identities its Host object lists, and only while it lists them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossamer.errors import IdentityError
from gossamer.host.identity import HostSession, NotOnHost
from gossamer.identity.keygen import new_key_and_csr
from gossamer.identity.spiffe import SpiffeId
from gossamer.proxy.agent.session import control_plane_context
from gossamer.proxy.wire.tls import Credentials
from tests.e2e.conftest import ControlPlaneProcess

pytestmark = pytest.mark.e2e


def host_object(name: str, *identities: tuple[str, str]) -> str:
    workloads = [{"namespace": ns, "serviceAccount": sa} for ns, sa in identities]
    return json.dumps(
        {
            "apiVersion": "gossamer.dev/v1alpha1",
            "kind": "Host",
            "metadata": {"name": name, "namespace": "gossamer-hosts"},
            "spec": {"workloads": workloads},
        }
    )


def host_session(cp: ControlPlaneProcess, tmp: Path, name: str) -> HostSession:
    token = cp.cli(
        "token", "create", "-n", "gossamer-hosts", "--service-account", name, "-o", "json",
        check=True,
    ).stdout  # fmt: skip
    host, port = cp.discovery.rsplit(":", 1)
    return HostSession(name, (host, int(port)), tmp / name, json.loads(token)["token"])


def audit(cp: ControlPlaneProcess, action: str) -> list[dict[str, object]]:
    items = json.loads(cp.cli("audit", "-o", "json", check=True).stdout)["items"]
    return [i for i in items if i["action"] == action]


@pytest.mark.asyncio
async def test_a_host_gets_only_the_identities_its_host_object_lists(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    control_plane.cli("apply", "-f", "-", stdin=host_object("node-1", ("shop", "web")), check=True)
    session = host_session(control_plane, tmp_path, "node-1")
    await session.start()
    try:
        data, _ = await session.workload_certificate("shop", "web", first=True)
        assert data["spiffeId"] == "spiffe://cluster.local/ns/shop/sa/web"
        with pytest.raises(NotOnHost, match="not registered on host 'node-1'"):
            await session.workload_certificate("shop", "payments", first=True)
    finally:
        await session.stop()
    [issued] = audit(control_plane, "certificate.issue.host")
    assert issued["name"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert issued["actor"] == "spiffe://cluster.local/ns/gossamer-hosts/sa/node-1"
    [refused] = audit(control_plane, "certificate.refuse")
    assert refused["name"] == "spiffe://cluster.local/ns/shop/sa/payments"
    assert refused["actor"] == "spiffe://cluster.local/ns/gossamer-hosts/sa/node-1"


@pytest.mark.asyncio
async def test_a_host_without_a_host_object_or_a_workload_certificate_gets_nothing(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    session = host_session(control_plane, tmp_path, "node-2")  # no Host applied
    await session.start()
    try:
        with pytest.raises(NotOnHost, match="no Host 'node-2'"):
            await session.workload_certificate("shop", "web", first=True)
    finally:
        await session.stop()
    # A workload's own certificate is no host's: it cannot ask for another identity.
    control_plane.cli("apply", "-f", "-", stdin=host_object("web", ("shop", "cart")), check=True)
    created = control_plane.cli(
        "token", "create", "-n", "shop", "--service-account", "web", "-o", "json", check=True
    )
    token = json.loads(created.stdout)["token"]
    host, port = control_plane.discovery.rsplit(":", 1)
    impostor = HostSession("web", (host, int(port)), tmp_path / "impostor", token)
    impostor.config.namespace = "shop"  # the token's identity: ns/shop/sa/web
    await impostor.start()
    try:
        with pytest.raises(NotOnHost, match="is not a host identity"):
            await impostor.workload_certificate("shop", "cart", first=True)
    finally:
        await impostor.stop()


@pytest.mark.asyncio
async def test_a_workload_removed_from_its_host_is_no_longer_renewable_there(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    cp.cli("apply", "-f", "-", stdin=host_object("node-3", ("shop", "web")), check=True)
    session = host_session(cp, tmp_path, "node-3")
    await session.start()
    try:
        data, key = await session.workload_certificate("shop", "web", first=True)
        # Renewal through the host works while the Host lists the identity.
        await session.workload_certificate("shop", "web", first=False)
        cp.cli("apply", "-f", "-", stdin=host_object("node-3"), check=True)
        with pytest.raises(IdentityError, match="not registered on host 'node-3'"):
            await session.workload_certificate("shop", "web", first=False)
        # Nor does the sidecar's renewal path take a certificate issued through a host.
        creds = Credentials.from_pem(
            str(data["certificateChain"]).encode(), key, str(data["trustBundle"]).encode()
        )
        _, csr = await new_key_and_csr(SpiffeId("cluster.local", "shop", "web"))
        status, answer = await session._client.request(
            "POST",
            "/v1/identity/renew",
            control_plane_context(creds.bundle_pem, creds),
            {"csr": csr.decode()},
        )
        assert status == 403, answer
        assert "issued through host 'node-3'" in answer["error"]["message"]
    finally:
        await session.stop()
    refusals = audit(cp, "certificate.refuse")
    assert len(refusals) == 2
    assert all(r["name"] == "spiffe://cluster.local/ns/shop/sa/web" for r in refusals)
