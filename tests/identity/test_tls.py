"""Real TLS 1.3 handshakes between contexts built from issued leaves."""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from pathlib import Path

import pytest
from cryptography import x509

from gossamer.errors import IdentityError
from gossamer.identity import (
    CertificateAuthority,
    IssuedCertificate,
    client_context,
    load_identity,
    peer_spiffe_id,
    server_context,
)

from .helpers import API, TD, WEB, handshake, issue


@pytest.fixture
def web(live_ca: CertificateAuthority) -> tuple[bytes, IssuedCertificate]:
    return issue(live_ca, WEB, now=None)


@pytest.fixture
def api(live_ca: CertificateAuthority) -> tuple[bytes, IssuedCertificate]:
    return issue(live_ca, API, now=None)


@pytest.fixture
def stranger(tmp_path: Path) -> tuple[bytes, IssuedCertificate]:
    """A leaf for a familiar name, but from another CA (another root)."""
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca", TD)
    return issue(other, WEB, now=None)


def _server(
    leaf: tuple[bytes, IssuedCertificate], require_client_cert: bool = True
) -> ssl.SSLContext:
    key, issued = leaf
    return server_context(issued.chain_pem, key, issued.trust_bundle_pem, require_client_cert)


def _client(leaf: tuple[bytes, IssuedCertificate], bundle: str | None = None) -> ssl.SSLContext:
    key, issued = leaf
    return client_context(issued.chain_pem, key, bundle or issued.trust_bundle_pem)


def test_a_mutual_tls13_handshake_shows_each_side_the_others_spiffe_id(
    web: tuple[bytes, IssuedCertificate], api: tuple[bytes, IssuedCertificate]
) -> None:
    result = handshake(_server(api), _client(web))

    assert result.ok, (result.server_error, result.client_error)
    assert result.client.version() == "TLSv1.3"
    assert peer_spiffe_id(result.server) == WEB
    assert peer_spiffe_id(result.client) == API


def test_a_client_whose_leaf_comes_from_another_root_is_refused(
    api: tuple[bytes, IssuedCertificate], stranger: tuple[bytes, IssuedCertificate]
) -> None:
    # The stranger trusts our bundle, so only the server's judgement is tested.
    result = handshake(_server(api), _client(stranger, bundle=api[1].trust_bundle_pem))

    assert isinstance(result.server_error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(result.server_error)


def test_a_server_whose_leaf_comes_from_another_root_is_refused(
    web: tuple[bytes, IssuedCertificate], stranger: tuple[bytes, IssuedCertificate]
) -> None:
    server = server_context(stranger[1].chain_pem, stranger[0], web[1].trust_bundle_pem)

    result = handshake(server, _client(web))

    assert isinstance(result.client_error, ssl.SSLCertVerificationError)


def test_a_client_without_a_certificate_is_refused_when_one_is_required(
    api: tuple[bytes, IssuedCertificate],
) -> None:
    result = handshake(_server(api), client_context(None, None, api[1].trust_bundle_pem))

    assert result.server_error is not None
    assert "peer did not return a certificate" in str(result.server_error)


def test_a_client_without_a_certificate_is_let_in_when_none_is_required_but_has_no_identity(
    api: tuple[bytes, IssuedCertificate],
) -> None:
    result = handshake(
        _server(api, require_client_cert=False),
        client_context(None, None, api[1].trust_bundle_pem),
    )

    assert result.ok
    assert peer_spiffe_id(result.client) == API
    with pytest.raises(IdentityError, match="presented no certificate"):
        peer_spiffe_id(result.server)


def test_a_certificate_a_client_offers_is_still_verified_when_none_is_required(
    api: tuple[bytes, IssuedCertificate], stranger: tuple[bytes, IssuedCertificate]
) -> None:
    result = handshake(
        _server(api, require_client_cert=False),
        _client(stranger, bundle=api[1].trust_bundle_pem),
    )

    assert isinstance(result.server_error, ssl.SSLCertVerificationError)


def test_a_tls12_client_is_refused(
    web: tuple[bytes, IssuedCertificate], api: tuple[bytes, IssuedCertificate]
) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2

    result = handshake(_server(api), old)

    assert result.server_error is not None
    assert "unsupported protocol" in str(result.server_error).lower()


def test_alpn_is_negotiated(
    web: tuple[bytes, IssuedCertificate], api: tuple[bytes, IssuedCertificate]
) -> None:
    server = server_context(
        api[1].chain_pem, api[0], api[1].trust_bundle_pem, alpn_protocols=["h2", "http/1.1"]
    )
    client = client_context(
        web[1].chain_pem, web[0], web[1].trust_bundle_pem, alpn_protocols=["h2"]
    )

    result = handshake(server, client)

    assert result.ok
    assert result.client.selected_alpn_protocol() == "h2"


def test_a_listener_renews_in_place_and_new_handshakes_present_the_new_leaf(
    live_ca: CertificateAuthority,
    web: tuple[bytes, IssuedCertificate],
    api: tuple[bytes, IssuedCertificate],
) -> None:
    server = _server(api)
    renewed_key, renewed = issue(live_ca, API, now=None)

    load_identity(server, renewed.chain_pem, renewed_key)

    result = handshake(server, _client(web))
    assert result.ok
    presented = result.client.getpeercert(binary_form=True)
    assert presented is not None
    assert x509.load_der_x509_certificate(presented).serial_number == int(renewed.serial, 16)


def test_a_key_that_is_not_the_leafs_is_refused(
    web: tuple[bytes, IssuedCertificate], api: tuple[bytes, IssuedCertificate]
) -> None:
    with pytest.raises(IdentityError, match="the key must be the leaf's"):
        server_context(web[1].chain_pem, api[0], web[1].trust_bundle_pem)


def test_a_bundle_that_is_not_pem_is_refused(web: tuple[bytes, IssuedCertificate]) -> None:
    with pytest.raises(IdentityError, match="cannot load the trust bundle"):
        client_context(web[1].chain_pem, web[0], "not a bundle")


def test_a_client_needs_both_chain_and_key_or_neither(web: tuple[bytes, IssuedCertificate]) -> None:
    with pytest.raises(ValueError, match="both chain_pem and key_pem, or neither"):
        client_context(web[1].chain_pem, None, web[1].trust_bundle_pem)


def test_without_memfd_the_key_goes_through_a_private_temp_dir_that_is_removed(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    web: tuple[bytes, IssuedCertificate],
    api: tuple[bytes, IssuedCertificate],
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    result = handshake(_server(api), _client(web))

    assert result.ok
    assert peer_spiffe_id(result.server) == WEB
    assert list(scratch.iterdir()) == []


@pytest.mark.asyncio
async def test_proxies_on_loopback_sockets_see_each_others_identity(
    web: tuple[bytes, IssuedCertificate], api: tuple[bytes, IssuedCertificate]
) -> None:
    seen_by_server: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen_by_server.append(str(peer_spiffe_id(writer.get_extra_info("ssl_object"))))
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=_server(api))
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client(web))
        seen_by_client = peer_spiffe_id(writer.get_extra_info("ssl_object"))
        writer.write(b"hello\n")
        echoed = await reader.readline()
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()

    assert echoed == b"hello\n"
    assert seen_by_client == API
    assert seen_by_server == [str(WEB)]
