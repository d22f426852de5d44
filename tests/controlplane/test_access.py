"""Who may call what on the REST API: scoped tokens, checked for every route."""

from __future__ import annotations

import json
import logging
import re
import stat
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gossamer.controlplane.auth import AccessPolicy
from gossamer.controlplane.openapi import openapi_document
from gossamer.controlplane.server import ControlPlane, ControlPlaneConfig
from gossamer.controlplane.tokens_store import ApiTokenStore
from gossamer.errors import Conflict, InvalidResource, NotFound

MUTATING = ("post", "put", "patch", "delete")
DASHBOARD_FILES = {"/", "/dashboard/{name}"}
SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80}]
"""


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: {"{kind}": "services"}.get(m.group(0), "x"), path)


def _operations(methods: tuple[str, ...]) -> list[tuple[str, str]]:
    paths: dict[str, dict[str, Any]] = openapi_document()["paths"]
    return [(m.upper(), p) for p, ops in paths.items() for m in ops if m in methods]


class Api:
    def __init__(self, cp: ControlPlane, client: TestClient[Any, Any]) -> None:
        self.cp, self.client = cp, client
        self.admin = cp.admin_token
        self.read = cp.api_tokens.create("dashboards", "read")[0]
        self.ops = cp.api_tokens.create("ops", "admin")[0]

    async def call(
        self, method: str, path: str, token: str | None = None, body: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.client.request(method, path, headers=headers, data=body) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


def _control_plane(data_dir: Path, *, auth_reads: bool) -> ControlPlane:
    return ControlPlane(ControlPlaneConfig(data_dir=data_dir, auth_reads=auth_reads))


@pytest_asyncio.fixture(params=[False, True], ids=["open reads", "auth reads"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    cp = _control_plane(tmp_path / "cp", auth_reads=request.param)
    client: TestClient[Any, Any] = TestClient(TestServer(cp.api.app()))
    await client.start_server()
    try:
        yield Api(cp, client)
    finally:
        await client.close()
        cp.store.close()
        cp.audit.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path"), _operations(MUTATING), ids=[f"{m} {p}" for m, p in _operations(MUTATING)]
)
async def test_every_change_refuses_no_token_and_a_read_token(
    api: Api, method: str, path: str
) -> None:
    status, body = await api.call(method, _concrete(path))
    assert status == 401
    assert "admin token" in body["error"]["message"]
    status, body = await api.call(method, _concrete(path), api.read)
    assert status == 403
    assert body["error"]["message"].startswith("API token dashboards has scope read;")
    assert "gossamer api-token create NAME --scope admin" in body["error"]["message"]


def test_every_route_served_is_in_the_openapi_document(tmp_path: Path) -> None:
    # The table above covers every change only if the document lists every route.
    cp = _control_plane(tmp_path / "cp", auth_reads=False)
    try:
        app = cp.api.app()
        served = {
            (route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None and route.method not in ("HEAD", "*")
        }
        documented = {
            (m, p) for p, ops in openapi_document()["paths"].items() for m in ops if m != "head"
        }
        assert {(m, p) for m, p in served if p not in DASHBOARD_FILES} == documented
    finally:
        cp.store.close()
        cp.audit.close()


@pytest.mark.asyncio
async def test_an_admin_token_makes_changes_and_the_audit_log_names_it(api: Api) -> None:
    status, _ = await api.call("POST", "/v1/apply", api.ops, SERVICE)
    assert status == 200
    status, _ = await api.call("DELETE", "/v1/resources/services/shop/echo", api.admin)
    assert status == 200
    status, body = await api.call("GET", "/v1/audit", api.read)
    assert status == 200
    assert [(i["actor"], i["action"]) for i in body["items"]] == [
        ("ops", "apply.created"),
        ("bootstrap-admin", "delete"),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path",
    ["/v1/resources/services", "/v1/proxies", "/v1/ca", "/v1/stats/services", "/metrics"],
)
async def test_reads_need_a_read_token_only_with_auth_reads(api: Api, path: str) -> None:
    status, body = await api.call("GET", path)
    if api.cp.access.auth_reads:
        assert status == 401
        assert "scope read or admin" in body["error"]["message"]
    else:
        assert status == 200
    for token in (api.read, api.ops, api.admin):
        assert (await api.call("GET", path, token))[0] == 200


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path", ["/readyz", "/version", "/openapi.json", "/v1/identity/bundle", "/"]
)
async def test_public_reads_need_no_token_even_with_auth_reads(api: Api, path: str) -> None:
    assert (await api.call("GET", path))[0] == 200


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/v1/audit", "/v1/api-tokens", "/v1/whoami"])
async def test_who_did_what_and_which_tokens_exist_always_need_a_token(api: Api, path: str) -> None:
    assert (await api.call("GET", path))[0] == 401
    assert (await api.call("GET", path, api.read))[0] == 200


@pytest.mark.asyncio
async def test_whoami_names_the_token_and_its_scope(api: Api) -> None:
    _, body = await api.call("GET", "/v1/whoami", api.read)
    assert (body["name"], body["scope"]) == ("dashboards", "read")
    _, body = await api.call("GET", "/v1/whoami", api.admin)
    assert (body["name"], body["scope"]) == ("bootstrap-admin", "admin")


@pytest.mark.asyncio
async def test_a_created_token_works_until_it_is_revoked(api: Api) -> None:
    status, created = await api.call(
        "POST", "/v1/api-tokens", api.ops, json.dumps({"name": "ci", "scope": "admin"})
    )
    assert status == 200
    assert created["token"].startswith("gst_")
    assert (await api.call("POST", "/v1/apply", created["token"], SERVICE))[0] == 200
    assert (await api.call("DELETE", "/v1/api-tokens/ci", api.admin))[0] == 200
    status, body = await api.call("POST", "/v1/apply", created["token"], SERVICE)
    assert status == 401
    assert "not known (revoked" in body["error"]["message"]
    _, log = await api.call("GET", "/v1/audit?kind=ApiToken", api.read)
    assert [(i["actor"], i["action"], i["name"]) for i in log["items"]] == [
        ("ops", "apitoken.create", "ci"),
        ("bootstrap-admin", "apitoken.revoke", "ci"),
    ]


@pytest.mark.asyncio
async def test_an_unknown_token_is_refused_even_with_a_scope_to_spare(api: Api) -> None:
    status, body = await api.call("POST", "/v1/apply", "gst_made-up", SERVICE)
    assert status == 401
    assert "check --token-file or GOSSAMER_TOKEN" in body["error"]["message"]


@pytest.mark.asyncio
async def test_no_token_is_ever_logged(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, created = await api.call(
        "POST", "/v1/api-tokens", api.admin, json.dumps({"name": "ci", "scope": "read"})
    )
    await api.call("POST", "/v1/apply", created["token"], SERVICE)
    await api.call("POST", "/v1/apply", api.ops, SERVICE)
    await api.call("DELETE", "/v1/api-tokens/ci", api.admin)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "api token ci created by bootstrap-admin" in logged
    for secret in (created["token"], api.admin, api.read, api.ops):
        assert secret not in logged
        assert secret not in (api.cp.config.data_dir / "api-tokens.json").read_text()
        assert secret not in (await api.call("GET", "/v1/audit", api.admin))[1].__repr__()


# ---- the token store ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _store(tmp_path: Path, clock: Callable[[], datetime] | None = None) -> ApiTokenStore:
    created = datetime(2024, 12, 1, tzinfo=UTC)
    if clock is None:
        return ApiTokenStore(tmp_path / "api-tokens.json", "gsa_bootstrap", created)
    return ApiTokenStore(tmp_path / "api-tokens.json", "gsa_bootstrap", created, clock)


def test_tokens_are_kept_as_hashes_in_a_private_file(tmp_path: Path) -> None:
    store = _store(tmp_path)
    secret, token = store.create("grafana", "read", timedelta(days=30))
    path = tmp_path / "api-tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret not in path.read_text()
    assert token.sha256 in path.read_text()
    assert not list(tmp_path.glob("*.tmp"))
    again = _store(tmp_path)
    found = again.authenticate(secret)
    assert found is not None
    assert (found.name, found.scope, found.expires_at) == ("grafana", "read", token.expires_at)


def test_the_bootstrap_admin_token_is_listed_first_and_cannot_be_revoked(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create("zed", "read")
    store.create("alpha", "admin")
    assert [(t.name, t.scope) for t in store.list()] == [
        ("bootstrap-admin", "admin"),
        ("alpha", "admin"),
        ("zed", "read"),
    ]
    with pytest.raises(InvalidResource, match="replace that file and restart"):
        store.revoke("bootstrap-admin")


@pytest.mark.parametrize(
    ("name", "scope", "ttl", "error"),
    [
        ("Not_A_Label", "read", None, "name: must be a DNS-1123 label"),
        ("bootstrap-admin", "admin", None, "name: bootstrap-admin is DATA_DIR/admin.token"),
        ("ci", "write", None, 'scope: must be "read" or "admin"'),
        ("ci", "read", timedelta(seconds=5), "ttlSeconds: must be from 60 seconds"),
    ],
    ids=["a name that is not a label", "the bootstrap name", "an unknown scope", "a tiny ttl"],
)
def test_a_bad_token_request_names_the_field(
    tmp_path: Path, name: str, scope: str, ttl: timedelta | None, error: str
) -> None:
    with pytest.raises(InvalidResource, match=re.escape(error)):
        _store(tmp_path).create(name, scope, ttl)


def test_a_second_token_with_the_same_name_is_a_conflict(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create("ci", "read")
    with pytest.raises(Conflict, match="revoke it first"):
        store.create("ci", "admin")
    with pytest.raises(NotFound):
        store.revoke("nobody")


def test_an_expired_token_is_refused_with_when_it_expired(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    secret, _ = store.create("ci", "admin", timedelta(hours=1))
    policy = AccessPolicy(store)
    request = _request(secret)
    assert policy.authenticate(request, "admin").name == "ci"
    clock.now += timedelta(hours=1)
    with pytest.raises(web.HTTPUnauthorized) as refused:
        policy.authenticate(request, "admin")
    assert "API token ci expired at 2025-01-01T01:00:00+00:00" in str(refused.value.text)


def test_last_use_is_recorded_at_most_once_a_minute(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    secret, _ = store.create("ci", "read")
    path = tmp_path / "api-tokens.json"
    store.authenticate(secret)
    first = path.read_text()
    clock.now += timedelta(seconds=30)
    store.authenticate(secret)
    assert path.read_text() == first
    assert store.list()[1].last_used_at == clock.now
    clock.now += timedelta(seconds=31)
    store.authenticate(secret)
    assert json.loads(path.read_text())["lastUsed"]["ci"] == clock.now.isoformat()


def _request(secret: str) -> Any:
    from aiohttp.test_utils import make_mocked_request

    return make_mocked_request("GET", "/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
