"""A compromised host against node authorization (decision 0064), on a real control plane.

The attacker holds a host identity (`ns/gossamer-hosts/sa/<host>`, bought with the
operator's join token) and whatever workload certificates its Host object let it
obtain. It asks for identities it does not run, plays with names, sends CSRs that name
someone else and hostile bodies, and tries to keep a workload's certificate alive after
the operator took the workload off its Host. A defect found here is a test marked
xfail(strict=True) with the defect in its reason: it passes while the defect is there
and fails once it is fixed, so the mark must then go.
"""

from __future__ import annotations

import asyncio
import io
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

from gossamer.host import CERTIFICATES_PATH
from gossamer.host.identity import HostSession
from gossamer.identity.keygen import new_key_and_csr
from gossamer.identity.spiffe import SpiffeId
from gossamer.proxy.agent.session import control_plane_context
from gossamer.proxy.wire.tls import Credentials
from tests.e2e.conftest import ControlPlaneProcess, start_control_plane, stop_process

pytestmark = pytest.mark.e2e

TD = "cluster.local"
RENEW_PATH = "/v1/identity/renew"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


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


def apply_host(cp: ControlPlaneProcess, name: str, *identities: tuple[str, str]) -> None:
    cp.cli("apply", "-f", "-", stdin=host_object(name, *identities), check=True)


async def started_host(cp: ControlPlaneProcess, tmp: Path, name: str) -> HostSession:
    token = cp.cli(
        "token", "create", "-n", "gossamer-hosts", "--service-account", name, "-o", "json",
        check=True,
    ).stdout  # fmt: skip
    host, port = cp.discovery.rsplit(":", 1)
    session = HostSession(name, (host, int(port)), tmp / name, json.loads(token)["token"])
    await session.start()
    return session


def csr_pem(*names: x509.GeneralName, ca: bool = False) -> tuple[bytes, str]:
    """A P-256 key and a CSR carrying `names` as its SANs (and CA:TRUE if `ca`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    csr = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


async def raw_post(
    cp: ControlPlaneProcess, ctx: ssl.SSLContext | None, path: str, body: bytes
) -> tuple[int, Any]:
    """POST `body` as it is to the discovery listener; (status, JSON answer or text)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"https://{cp.discovery}{path}",
            data=io.BytesIO(body),
            ssl=ctx if ctx is not None else False,
            headers={"content-type": "application/json"},
        ) as resp,
    ):
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def ask(session: HostSession, body: dict[str, Any]) -> tuple[int, Any]:
    return await session._client.request("POST", CERTIFICATES_PATH, session.context(), body)


def workload_creds(data: dict[str, Any], key: bytes) -> Credentials:
    return Credentials.from_pem(
        str(data["certificateChain"]).encode(), key, str(data["trustBundle"]).encode()
    )


async def renew_as_workload(
    session: HostSession, creds: Credentials, identity: SpiffeId
) -> tuple[int, Any]:
    """The sidecar's renewal path, with a certificate the host obtained."""
    _, csr = await new_key_and_csr(identity)
    status, data = await session._client.request(
        "POST", RENEW_PATH, control_plane_context(creds.bundle_pem, creds), {"csr": csr.decode()}
    )
    return status, data


WEB = SpiffeId(TD, "shop", "web")


# ---- defects found here: the first three and the Host growth fixed in e9e488d -------


@pytest.mark.asyncio
async def test_deleting_the_host_object_does_not_make_its_certificates_renewable_as_sidecars(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    apply_host(cp, "node-del", ("shop", "web"))
    session = await started_host(cp, tmp_path, "node-del")
    try:
        data, key = await session.workload_certificate("shop", "web", first=True)
        creds = workload_creds(data, key)
        # Still on the Host: refused, as decision 0064 says.
        status, _ = await renew_as_workload(session, creds, WEB)
        assert status == 403
        # The operator decommissions the host: its Host goes.
        cp.cli("delete", "host", "node-del", "-n", "gossamer-hosts", check=True)
        status, answer = await renew_as_workload(session, creds, WEB)
        assert status == 403, f"renewed after the Host was deleted: {str(answer)[:200]}"
    finally:
        await session.stop()


@pytest.mark.asyncio
async def test_a_host_cannot_obtain_another_hosts_identity_through_its_host_object(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    apply_host(cp, "node-b", ("payments", "ledger"))
    stdin = host_object("node-a", ("gossamer-hosts", "node-b"))
    listed = cp.cli("apply", "-f", "-", stdin=stdin)
    if listed.returncode != 0:
        return  # refused at the door: the defect is fixed there
    session = await started_host(cp, tmp_path, "node-a")
    try:
        _, csr = await new_key_and_csr(SpiffeId(TD, "gossamer-hosts", "node-b"))
        status, answer = await ask(
            session,
            {"namespace": "gossamer-hosts", "serviceAccount": "node-b", "csr": csr.decode()},
        )
        assert status == 403, f"node-a obtained node-b's host identity: {str(answer)[:200]}"
    finally:
        await session.stop()


def ads_request(workload: str, namespace: str) -> Any:
    metadata = struct_pb2.Struct()
    metadata.update({"WORKLOAD": workload, "NAMESPACE": namespace})
    return discovery_pb2.DiscoveryRequest(
        node=base_pb2.Node(id=f"attacker~{workload}", metadata=metadata),
        type_url=SECRET_TYPE,
        resource_names=["default"],  # the workload's certificate, as Envoy asks for it
    )


def sds_certificate(xds: tuple[str, int], creds: Credentials, workload: str) -> str | None:
    """The certificate chain the xDS server's SDS hands to whoever presents `creds`."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=creds.bundle_pem, private_key=creds.key_pem,
        certificate_chain=creds.chain_pem,
    )  # fmt: skip
    done = threading.Event()

    def requests() -> Iterator[Any]:
        yield ads_request(workload, "shop")
        done.wait(20)  # keep the stream open until the answer is in

    target = f"{xds[0]}:{xds[1]}"
    with grpc.secure_channel(target, credentials) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        stream = stub.StreamAggregatedResources(requests(), timeout=20)
        try:
            for response in stream:
                for resource in response.resources:
                    text = resource.value.decode("latin-1")
                    if "BEGIN CERTIFICATE" in text and "PRIVATE KEY" in text:
                        return text
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                return None
            raise
        finally:
            done.set()
            stream.cancel()
    return None


@pytest.mark.asyncio
async def test_a_host_issued_certificate_buys_no_sds_certificate_after_the_workload_leaves_the_host(
    tmp_path: Path,
) -> None:
    cp = start_control_plane(tmp_path / "cp", "--xds", "127.0.0.1:0")
    try:
        ready = dict(line.split("=", 1) for line in (tmp_path / "cp.ready").read_text().split())
        host, _, port = ready["xds"].rpartition(":")
        apply_host(cp, "node-x", ("shop", "web"))
        session = await started_host(cp, tmp_path, "node-x")
        try:
            data, key = await session.workload_certificate("shop", "web", first=True)
            creds = workload_creds(data, key)
            # As the host proxy does for its workload: register it (as shop/web).
            workload = {
                "apiVersion": "gossamer.dev/v1alpha1",
                "kind": "Workload",
                "metadata": {"name": "web-1", "namespace": "shop"},
                "spec": {"address": "127.0.0.1", "inboundPort": 15006, "serviceAccount": "web"},
            }
            status, answer = await session._client.request(
                "PUT",
                "/v1/workloads/shop/web-1",
                control_plane_context(creds.bundle_pem, creds),
                workload,
            )
            assert status < 300, answer
            # The operator takes shop/web off the host; the host route refuses it now.
            apply_host(cp, "node-x")
            _, csr = await new_key_and_csr(WEB)
            asked = {"namespace": "shop", "serviceAccount": "web", "csr": csr.decode()}
            status, _ = await ask(session, asked)
            assert status == 403
            chain = await asyncio.to_thread(sds_certificate, (host, int(port)), creds, "web-1")
            assert chain is None, "SDS issued shop/web a new certificate and key to the host"
        finally:
            await session.stop()
    finally:
        stop_process(cp.proc)


@pytest.mark.parametrize(
    "path",
    [
        CERTIFICATES_PATH,  # fixed in e9e488d
        RENEW_PATH,
    ],
)
@pytest.mark.asyncio
async def test_a_csr_holding_a_lone_surrogate_is_a_400_not_a_500(
    control_plane: ControlPlaneProcess, tmp_path: Path, path: str
) -> None:
    cp = control_plane
    apply_host(cp, "node-1", ("shop", "web"))
    session = await started_host(cp, tmp_path, "node-1")
    try:
        body = {"namespace": "shop", "serviceAccount": "web", "csr": "\udcff"}
        status, answer = await raw_post(cp, session.context(), path, json.dumps(body).encode())
        assert 400 <= status < 500, (status, str(answer)[:200])
    finally:
        await session.stop()


def web_workload(name: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"address": address, "inboundPort": 15006, "serviceAccount": "web"},
    }


@pytest.mark.asyncio
async def test_a_host_cannot_rewrite_or_remove_a_workload_another_host_registered(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    apply_host(cp, "node-1", ("shop", "web"))
    apply_host(cp, "node-2", ("shop", "web"))
    node1 = await started_host(cp, tmp_path, "node-1")
    node2 = await started_host(cp, tmp_path, "node-2")
    try:
        mine = workload_creds(*await node2.workload_certificate("shop", "web", first=True))
        ctx2 = control_plane_context(mine.bundle_pem, mine)
        status, answer = await node2._client.request(
            "PUT", "/v1/workloads/shop/web-2", ctx2, web_workload("web-2", "10.0.0.2")
        )
        assert status < 300, answer
        theirs = workload_creds(*await node1.workload_certificate("shop", "web", first=True))
        ctx1 = control_plane_context(theirs.bundle_pem, theirs)
        # node-1 points node-2's replica at itself, then removes it.
        status, _ = await node1._client.request(
            "PUT", "/v1/workloads/shop/web-2", ctx1, web_workload("web-2", "10.0.0.1")
        )
        assert status == 403, "node-1 rewrote node-2's Workload"
        status, _ = await node1._client.request("DELETE", "/v1/workloads/shop/web-2", ctx1)
        assert status == 403, "node-1 deleted node-2's Workload"
    finally:
        await node1.stop()
        await node2.stop()


# ---- what holds ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_names_and_csrs_that_name_another_identity_get_no_certificate(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    apply_host(cp, "node-1", ("shop", "web"))
    apply_host(cp, "node-2", ("shop", "payments"))
    session = await started_host(cp, tmp_path, "node-1")
    try:
        _, good_csr = await new_key_and_csr(WEB)
        names = [
            ("Shop", "web"), ("shop", "Web"), (" shop", "web"), ("shop", "web "),
            ("shop\n", "web"), ("sh\u043ep", "web"), ("*", "web"), ("shop", "*"),
            ("", "web"), ("shop", ""), ("../shop", "web"), ("shop/sa/web", "default"),
            ("shop", "web/../payments"), ("shop", "payments"), ("gossamer-hosts", "node-2"),
            ("gossamer-hosts", "node-1"), ("shop\x00", "web"), ("\uff53hop", "web"),
        ]  # fmt: skip
        for namespace, account in names:
            _, csr = await new_key_and_csr(WEB)
            status, answer = await ask(
                session, {"namespace": namespace, "serviceAccount": account, "csr": csr.decode()}
            )
            assert status in (400, 403), (namespace, account, status, answer)
            assert "certificateChain" not in answer
        # A CSR whose SAN names another identity than the one asked for.
        for san in (
            x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/shop/sa/payments"),
            x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/gossamer-hosts/sa/node-2"),
            x509.UniformResourceIdentifier("spiffe://evil.example/ns/shop/sa/web"),
            x509.DNSName("controlplane.gossamer.svc"),
            x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
        ):
            _, csr = csr_pem(x509.UniformResourceIdentifier(str(WEB)), san)
            status, answer = await ask(
                session, {"namespace": "shop", "serviceAccount": "web", "csr": csr}
            )
            assert status == 403, (san, status, answer)
            assert "may name only its own SPIFFE ID" in answer["error"]["message"]
        # A CSR asking to be a CA gets a leaf (the extension is not copied).
        _, csr = csr_pem(x509.UniformResourceIdentifier(str(WEB)), ca=True)
        status, answer = await ask(
            session, {"namespace": "shop", "serviceAccount": "web", "csr": csr}
        )
        assert status == 200, answer
        leaf = x509.load_pem_x509_certificates(answer["certificateChain"].encode())[0]
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(n.value) for n in sans] == [str(WEB)]
        # The right request still works (nothing above broke the route).
        status, answer = await ask(
            session, {"namespace": "shop", "serviceAccount": "web", "csr": good_csr.decode()}
        )
        assert status == 200 and answer["spiffeId"] == str(WEB)
    finally:
        await session.stop()


@pytest.mark.asyncio
async def test_hostile_request_bodies_get_a_4xx_with_a_message_never_a_500(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    apply_host(cp, "node-1", ("shop", "web"))
    session = await started_host(cp, tmp_path, "node-1")
    ctx = session.context()
    try:
        _, csr = await new_key_and_csr(WEB)
        bodies: list[bytes] = [
            b"", b"null", b"[]", b"\"x\"", b"{", b"\xff\xfe", b"[" * 100_000,
            b'{"namespace": 1, "csr": "x"}', b'{"namespace": "shop", "serviceAccount": null}',
            b'{"namespace": "shop", "serviceAccount": "web"}',
            b'{"namespace": "shop", "serviceAccount": "web", "csr": 5}',
            b'{"namespace": "shop", "serviceAccount": "web", "csr": "not a csr"}',
            b'{"namespace": "shop", "serviceAccount": "web", "csr": "-----BEGIN CERTIFICATE '
            b'REQUEST-----\\nAAAA\\n-----END CERTIFICATE REQUEST-----\\n"}',
            json.dumps({"namespace": "shop", "serviceAccount": "web", "csr": csr.decode()[:-60]})
            .encode(),
            json.dumps({"namespace": "s" * 500_000, "serviceAccount": "web", "csr": "x"}).encode(),
            json.dumps({"namespace": "shop", "serviceAccount": "web", "csr": "x" * 2_000_000})
            .encode(),
        ]  # fmt: skip
        for body in bodies:
            status, answer = await raw_post(cp, ctx, CERTIFICATES_PATH, body)
            assert 400 <= status < 500, (body[:80], status, str(answer)[:300])
            if status != 413:  # aiohttp's own answer to a body over client_max_size
                assert isinstance(answer, dict) and answer["error"]["message"], answer
        # Without a client certificate: 401, not a certificate.
        assert session.creds is not None
        unauthenticated = ssl.create_default_context(cadata=session.creds.bundle_pem.decode())
        unauthenticated.check_hostname = False
        asked = {"namespace": "shop", "serviceAccount": "web", "csr": csr.decode()}
        status, answer = await raw_post(
            cp, unauthenticated, CERTIFICATES_PATH, json.dumps(asked).encode()
        )
        assert status == 401, answer
        # The control plane is still up and still issues.
        status, answer = await ask(
            session, {"namespace": "shop", "serviceAccount": "web", "csr": csr.decode()}
        )
        assert status == 200, answer
        assert cp.proc.poll() is None
    finally:
        await session.stop()


MALFORMED_HOSTS = [
    ({"metadata": {"name": "h", "namespace": "gossamer-hosts"}}, "spec"),
    ({"metadata": {"name": "h", "namespace": "default"}, "spec": {}}, "metadata.namespace"),
    ({"metadata": {"name": "h", "namespace": "gossamer-hosts"}, "spec": {"workloads": {}}},
     "spec.workloads"),
    ({"metadata": {"name": "h", "namespace": "gossamer-hosts"},
      "spec": {"workloads": [{"serviceAccount": "web"}]}}, "spec.workloads[0].namespace"),
    ({"metadata": {"name": "h", "namespace": "gossamer-hosts"},
      "spec": {"workloads": [{"namespace": "Shop"}]}}, "spec.workloads[0].namespace"),
    ({"metadata": {"name": "h", "namespace": "gossamer-hosts"},
      "spec": {"workloads": [{"namespace": "shop", "serviceAccount": "we b"}]}},
     "spec.workloads[0].serviceAccount"),
    ({"metadata": {"name": "h", "namespace": "gossamer-hosts"},
      "spec": {"workloads": [{"namespace": "shop", "serviceaccount": "web"}]}},
     "spec.workloads[0]"),
    ({"metadata": {"name": "h", "namespace": "gossamer-hosts"},
      "spec": {"workloads": [{"namespace": "shop"}, {"namespace": "shop"}]}},
     "spec.workloads[1]"),
    ({"metadata": {"name": "h", "namespace": "gossamer-hosts"},
      "spec": {"workloads": [{"namespace": "shop"}] * 1001}}, "spec.workloads"),
    ({"metadata": {"name": "H_1", "namespace": "gossamer-hosts"}, "spec": {}}, "metadata.name"),
]  # fmt: skip


def test_malformed_host_objects_are_rejected_whole_with_the_field_path(
    control_plane: ControlPlaneProcess,
) -> None:
    cp = control_plane
    for body, path in MALFORMED_HOSTS:
        obj = {"apiVersion": "gossamer.dev/v1alpha1", "kind": "Host", **body}
        done = cp.cli("apply", "-f", "-", stdin=json.dumps(obj))
        assert done.returncode != 0, (path, done.stdout)
        assert path in done.stderr, (path, done.stderr[-400:])
    listed = cp.cli("get", "host", "-n", "gossamer-hosts", "-o", "json", check=True)
    assert json.loads(listed.stdout)["items"] == []


@pytest.mark.asyncio
async def test_the_record_of_host_issued_serials_survives_a_reapply_and_every_path_spelling(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    apply_host(cp, "node-1", ("shop", "web"))
    session = await started_host(cp, tmp_path, "node-1")
    try:
        data, key = await session.workload_certificate("shop", "web", first=True)
        creds = workload_creds(data, key)
        # The operator re-applies the Host from a stale `get -o json`, status and all.
        stale = json.loads(host_object("node-1", ("shop", "web")))
        stale["status"] = {"certificates": []}
        cp.cli("apply", "-f", "-", stdin=json.dumps(stale), check=True)
        status, answer = await renew_as_workload(session, creds, WEB)
        assert status == 403, f"renewed after a re-apply: {str(answer)[:200]}"
        # Other spellings of the sidecar's renewal path are refused or unknown.
        ctx = control_plane_context(creds.bundle_pem, creds)
        _, csr = await new_key_and_csr(WEB)
        body = json.dumps({"csr": csr.decode()}).encode()
        for path in (
            "/v1/identity/renew?x=1", "/v1/identity/%72enew", "/v1/identity/renew/",
            "/v1//identity/renew", "//v1/identity/renew", "/v1/identity/./renew",
            "/v1/identity/x/../renew", "/V1/identity/renew", "/v1/identity/renew%2f",
        ):  # fmt: skip
            status, answer = await raw_post(cp, ctx, path, body)
            assert status in (403, 404, 405), (path, status, str(answer)[:200])
    finally:
        await session.stop()


# At most this many unexpired certificates of one identity through one host.
REASONABLE_OUTSTANDING = 64


@pytest.mark.asyncio
async def test_a_host_asking_again_and_again_cannot_grow_its_host_object_without_bound(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    apply_host(cp, "node-1", ("shop", "web"))
    session = await started_host(cp, tmp_path, "node-1")
    refused = 0
    try:
        _, csr = await new_key_and_csr(WEB)
        asked = {"namespace": "shop", "serviceAccount": "web", "csr": csr.decode()}
        for _ in range(300):
            status, answer = await ask(session, asked)
            assert status in (200, 429), (status, answer)
            refused += status == 429
    finally:
        await session.stop()
    got = json.loads(cp.cli("get", "host", "node-1", "-n", "gossamer-hosts", "-o", "json").stdout)
    entries = len((got.get("status") or {}).get("certificates") or ())
    assert refused > 0 or entries <= REASONABLE_OUTSTANDING, f"{entries} serials kept"


@pytest.mark.asyncio
async def test_asks_racing_the_removal_are_all_refused_once_the_removal_is_applied(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    apply_host(cp, "node-1", ("shop", "web"))
    session = await started_host(cp, tmp_path, "node-1")
    try:
        _, csr = await new_key_and_csr(WEB)
        asked = {"namespace": "shop", "serviceAccount": "web", "csr": csr.decode()}

        async def hammer(stop: asyncio.Event) -> list[int]:
            statuses = []
            for _ in range(500):  # bounded; the removal ends it sooner
                if stop.is_set():
                    break
                statuses.append((await ask(session, asked))[0])
            return statuses

        stop = asyncio.Event()
        tasks = [asyncio.create_task(hammer(stop)) for _ in range(4)]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(apply_host, cp, "node-1")
        stop.set()
        during = [s for t in tasks for s in await t]
        assert set(during) <= {200, 403}, during
        after = [(await ask(session, asked))[0] for _ in range(20)]
        assert after == [403] * 20
    finally:
        await session.stop()
