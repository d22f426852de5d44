"""The agent's part in a CA rotation: adopt the snapshot's trust bundle, renew on request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossamer.identity import CertificateAuthority, SpiffeId, generate_private_key, make_csr
from gossamer.proxy.agent.session import Agent, AgentConfig
from gossamer.proxy.wire.tls import Credentials

TD = "cluster.local"


class Sink:
    def __init__(self) -> None:
        self.credentials: list[Any] = []

    def apply_snapshot(self, snapshot: Any) -> None:
        pass

    def set_credentials(self, creds: Any) -> None:
        self.credentials.append(creds)


@pytest.fixture
def agent(tmp_path: Path) -> tuple[Agent, Sink, CertificateAuthority]:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", TD)
    key = generate_private_key()
    identity = SpiffeId(TD, "shop", "echo")
    issued = ca.sign_csr(make_csr(key, identity), identity)
    sink = Sink()
    config = AgentConfig(("127.0.0.1", 1), "echo-1", "shop", "echo", "127.0.0.1", 1,
                         tmp_path / "state")  # fmt: skip
    a = Agent(config, sink)
    a.trust_domain = TD
    a.creds = Credentials.from_pem(issued.chain_pem.encode(), key, ca.trust_bundle_pem().encode())
    return a, sink, ca


def test_a_new_trust_bundle_rebuilds_the_data_planes_contexts_and_is_saved(
    agent: tuple[Agent, Sink, CertificateAuthority],
) -> None:
    a, sink, ca = agent
    a._adopt_bundle(ca.trust_bundle_pem())  # unchanged: nothing to do
    assert sink.credentials == []
    staged = ca.new_root()
    ca.add_roots(staged.roots)
    a._adopt_bundle(ca.trust_bundle_pem())
    assert len(sink.credentials) == 1
    assert sink.credentials[0].bundle_pem == ca.trust_bundle_pem().encode()
    assert (a.config.state_dir / "bundle.pem").read_text() == ca.trust_bundle_pem()
    # The certificate itself is unchanged and still reported under the old root.
    status = a.creds.status() if a.creds else {}
    assert status["rootFingerprint"] != ""
    assert status["issuerFingerprint"] == ca.issuer_fingerprint()


@pytest.mark.asyncio
async def test_a_renew_message_asks_for_renewal_now(
    agent: tuple[Agent, Sink, CertificateAuthority],
) -> None:
    a, _, _ = agent
    await a._on_message(None, {"type": "renew", "reason": "root rotation"})  # type: ignore[arg-type]
    assert a._renew_now.is_set()
