"""What the control plane does with hostile or damaged input: request bodies that are
not UTF-8, nest without end or alias themselves into billions of values; objects far
larger than any mesh needs; and data-dir files that are empty or corrupt. Each is a
short 4xx (or a one-line refusal to start) naming the problem, never a traceback."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from gossamer.controlplane.audit import AuditLog
from gossamer.controlplane.auth import load_or_create_admin_token
from gossamer.controlplane.server import ControlPlane, ControlPlaneConfig, has_run_before
from gossamer.controlplane.telemetry import Telemetry
from gossamer.controlplane.tokens_store import ApiTokenStore
from gossamer.errors import InvalidResource, StoreError
from gossamer.resources import decode_text, load_json, parse_documents, to_dict, validate
from gossamer.resources._limits import MAX_OBJECT_BYTES, limit_errors
from gossamer.store import SqliteStore, make_dirs, open_store

# --- documents: nesting, aliases, encoding -------------------------------------------


def _nested_flow(levels: int) -> str:
    return "a: " + "[" * levels + "]" * levels


def _nested_block(levels: int) -> str:
    return "".join("  " * i + f"k{i}:\n" for i in range(levels)) + "  " * levels + "v\n"


def _nested_json(levels: int) -> str:
    return '{"a": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def _laughs(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_nested_flow(100_000), "invalid YAML at line 1, column 67: nested deeper than 64 levels"),
        (_nested_block(5_000), "invalid YAML at line 65, column 129: nested deeper than 64 levels"),
        (_nested_json(1_000_000), "nested deeper than 64 levels at line 1, column 70"),
        ("a: &a [1, *a]\n", "invalid YAML at line 1, column 4: an alias refers to a node"),
        ("a: &a {b: *a}\n", "invalid YAML at line 1, column 4: an alias refers to a node"),
        ("a: &a {<<: *a}\n", "invalid YAML at line 1, column 4: an alias refers to a node"),
        (_laughs(9), "aliases expand it to 490,329,064 values"),
        (
            "a: &a " + _nested_flow(40)[3:] + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n",
            "nested deeper than 64 levels",
        ),
    ],
    ids=[
        "flow YAML nested 100,000 deep",
        "block YAML nested 5,000 deep",
        "JSON nested 1,000,000 deep",
        "a list that contains itself",
        "a mapping that contains itself",
        "a merge of itself",
        "a billion laughs",
        "aliases that nest past the limit",
    ],
)
def test_hostile_documents_are_refused_with_a_short_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_documents(text, source="request body")
    message = str(caught.value)
    assert message.startswith("request body: document 1: ")
    assert reason in message
    assert len(message) < 300


def test_nesting_up_to_the_limit_and_modest_aliases_are_read() -> None:
    [doc] = parse_documents(_nested_flow(63))  # with the mapping around them: 64 levels
    value, levels = doc["a"], 1
    while value:
        value, levels = value[0], levels + 1
    assert levels == 63
    [doc] = parse_documents(_nested_json(64))
    assert "a" in doc
    [doc] = parse_documents(_laughs(4))  # 9**4 values through aliases: allowed
    assert len(doc["a3"]) == 9


def test_json_nesting_is_not_counted_inside_strings() -> None:
    text = '{"a": "' + "[" * 1000 + '\\"{{{"}'
    assert parse_documents(text) == [{"a": "[" * 1000 + '"{{{'}]


def test_a_body_that_is_not_utf8_names_the_first_bad_byte() -> None:
    with pytest.raises(InvalidResource) as caught:
        decode_text(b"kind: Service\nname: caf\xe9\n", "request body")
    assert str(caught.value) == "request body: not UTF-8 at byte 23 (invalid continuation byte)"
    assert decode_text("\ufeffkind: Service".encode(), "x") == "kind: Service"


def test_json_bodies_are_bounded_too() -> None:
    with pytest.raises(InvalidResource, match="request body: nested deeper than 64 levels"):
        load_json("[" * 200_000, "request body")
    with pytest.raises(InvalidResource, match="request body: invalid JSON"):
        load_json("{nope", "request body")
    assert load_json('{"uses": 3}', "request body") == {"uses": 3}


# --- object size limits ----------------------------------------------------------------


def _service(ports: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": f"p{i}", "port": 1000 + i} for i in range(ports)],
            **spec,
        },
    }


def _workload(ports: int) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "web-1", "namespace": "shop"},
        "spec": {
            "address": "10.0.0.1",
            "inboundPort": 4143,
            "ports": [{"name": f"p{i}", "port": 1000 + i} for i in range(ports)],
        },
    }


def _policy(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow", "namespace": "shop"},
        "spec": spec,
    }


def _errors(obj: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidResource) as caught:
        validate(obj)
    return [str(e) for e in caught.value.errors]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (_service(10_000), ["spec.ports: must have at most 100 items"]),
        (_service(101), ["spec.ports: must have at most 100 items"]),
        (_workload(101), ["spec.ports: must have at most 100 items"]),
        (
            _policy(rules=[{}] * 101),
            ["spec.rules: must have at most 100 items"],
        ),
        (
            _policy(rules=[{"from": [{"source": {"namespaces": ["a"]}}] * 17}]),
            ["spec.rules[0].from: must have at most 16 items"],
        ),
        (
            _policy(rules=[{"to": [{"operation": {"paths": ["/a"] * 513}}]}]),
            ["spec.rules[0].to[0].operation.paths: must have at most 512 items"],
        ),
        (
            _service(1, selector={f"k{i}": "v" for i in range(65)}),
            ["spec.selector: must have at most 64 labels (has 65)"],
        ),
        (
            _service(1, sessionAffinityConfig={"clientIP": {"note": "x" * 5000}}),
            ["spec.sessionAffinityConfig.clientIP.note: must be at most 4096 characters (is 5000)"],
        ),
        (
            _policy(rules=[{"to": [{"operation": {"paths": ["/" + "a" * 4096]}}]}]),
            ["spec.rules[0].to[0].operation.paths[0]: must be at most 4096 characters (is 4097)"],
        ),
        (
            _service(1, sessionAffinityConfig={"x": ["y" * 1000] * 600}),
            ["must be at most 512 KiB as JSON (is more); split it into several objects"],
        ),
    ],
    ids=[
        "a Service with 10,000 ports",
        "a Service with 101 ports",
        "a Workload with 101 ports",
        "an AuthorizationPolicy with 101 rules",
        "a rule with 17 sources",
        "an operation with 513 paths",
        "a selector with 65 labels",
        "a 5,000 character string in a free-form field",
        "a 4,097 character path",
        "an object over 512 KiB",
    ],
)
def test_objects_beyond_the_limits_are_refused_naming_the_field(
    obj: dict[str, Any], expected: list[str]
) -> None:
    assert _errors(obj) == expected


def test_objects_at_the_limits_are_accepted() -> None:
    assert len(to_dict(validate(_service(100)))["spec"]["ports"]) == 100
    assert len(to_dict(validate(_workload(100)))["spec"]["ports"]) == 100
    rules = [{"to": [{"operation": {"paths": ["/" + "a" * 4095]}}]}] * 100
    assert len(to_dict(validate(_policy(rules=rules)))["spec"]["rules"]) == 100
    big_note = {"example.com/note": "n" * 200_000}  # annotations: 256 KiB together
    noted = validate({**_service(1), "metadata": {"name": "web", "annotations": big_note}})
    assert to_dict(noted)["metadata"]["annotations"] == big_note


def test_a_huge_object_costs_no_more_than_its_bound_to_refuse() -> None:
    # The walk stops once the object is too large, whatever follows.
    huge = _service(1, sessionAffinityConfig={"x": list(range(5_000_000))})
    assert [str(e) for e in limit_errors(huge)] == [
        f"must be at most {MAX_OBJECT_BYTES // 1024} KiB as JSON (is more); split it into "
        "several objects"
    ]


def test_nesting_built_in_code_is_bounded_without_recursion() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    assert _errors(_service(1, sessionAffinityConfig={"x": deep})) == [
        "spec.sessionAffinityConfig.x" + "[0]" * 61 + ": nested deeper than 64 levels"
    ]


# --- the data dir: empty and corrupt files -----------------------------------------------


def test_a_new_store_file_is_created_but_an_empty_one_is_refused_when_one_was_expected(
    tmp_path: Path,
) -> None:
    with SqliteStore(tmp_path / "new.db", expect_existing=True):
        pass  # no file: a new store, whatever the caller expected
    empty = tmp_path / "gossamer.db"
    empty.touch()
    wal = tmp_path / "gossamer.db-wal"
    wal.write_bytes(b"left as found")
    with pytest.raises(StoreError) as caught:
        open_store(str(empty), expect_existing=True)
    message = str(caught.value)
    assert message.startswith(f"{empty} is not a usable store: it is empty (0 bytes)")
    assert "Restore it from a backup, or move it aside (with gossamer.db-wal" in message
    assert empty.stat().st_size == 0 and wal.read_bytes() == b"left as found"
    # Not expected (a data dir never started): an empty file becomes a new store.
    wal.unlink()
    with SqliteStore(empty) as store:
        assert store.revision() == 0


def test_a_store_file_without_tables_is_refused_when_one_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "gossamer.db"
    sqlite3.connect(path).execute("PRAGMA user_version = 1").connection.close()
    with pytest.raises(StoreError, match="it holds no tables"):
        SqliteStore(path, expect_existing=True)


def test_an_earlier_start_is_recognised_by_its_ca_or_admin_token(tmp_path: Path) -> None:
    assert not has_run_before(tmp_path / "nothing")
    (tmp_path / "ca").mkdir()
    assert not has_run_before(tmp_path)
    (tmp_path / "ca" / "root.crt").touch()
    assert has_run_before(tmp_path)
    (tmp_path / "ca" / "root.crt").unlink()
    (tmp_path / "admin.token").touch()
    assert has_run_before(tmp_path)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "is empty"),
        (b" \n\n", "is empty"),
        (b"short\n", "holds a token of 5 characters (at least 16 are needed)"),
        (b"\xff\xfe token", "is not UTF-8 text"),
    ],
    ids=["empty", "only whitespace", "too short", "not UTF-8"],
)
def test_an_unusable_admin_token_file_is_refused(tmp_path: Path, content: bytes, why: str) -> None:
    (tmp_path / "admin.token").write_bytes(content)
    with pytest.raises(StoreError) as caught:
        load_or_create_admin_token(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'admin.token'} {why}, so nobody could administer this control plane: "
        "delete it to have a new admin token made at the next start, or write a token of at "
        "least 16 characters into it"
    )


def test_a_written_admin_token_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("my-own-admin-token-0123\n")
    assert load_or_create_admin_token(tmp_path) == "my-own-admin-token-0123"


_DIGEST = "0" * 64
_GOOD_TOKEN = {
    "name": "ci",
    "scope": "read",
    "sha256": _DIGEST,
    "createdAt": "2025-01-01T00:00:00+00:00",
}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("", "Expecting value: line 1 column 1 (char 0)"),
        ('{"tokens": [', "Expecting value"),
        ('{"tokens": [{"name": "ci"}]}', "KeyError: 'scope'"),
        (json.dumps({"tokens": [{**_GOOD_TOKEN, "scope": "root"}]}), "a token's scope is 'root'"),
        (json.dumps({"tokens": [{**_GOOD_TOKEN, "sha256": "abc"}]}), "a token's sha256 is 'abc'"),
        (json.dumps({"tokens": [{**_GOOD_TOKEN, "createdAt": 3}]}), "must be an ISO 8601 string"),
        (json.dumps({"tokens": "all"}), "TypeError"),
        (json.dumps([1]), "AttributeError"),
    ],
    ids=[
        "empty",
        "cut short",
        "a token without a scope",
        "an unknown scope",
        "a bad digest",
        "a bad time",
        "tokens not a list",
        "not an object",
    ],
)
def test_a_corrupt_api_token_file_is_refused_naming_it(
    tmp_path: Path, content: str, why: str
) -> None:
    path = tmp_path / "api-tokens.json"
    path.write_text(content)
    with pytest.raises(StoreError) as caught:
        ApiTokenStore(path, "gsa_bootstrap", _created())
    message = str(caught.value)
    assert message.startswith(f"{path} is not a readable API token file (")
    assert why in message
    assert message.endswith(
        "restore it from a backup, or move it aside to start with only the bootstrap admin "
        "token (DATA_DIR/admin.token; named tokens must then be created again)"
    )


def _created() -> Any:
    from datetime import UTC, datetime

    return datetime(2025, 1, 1, tzinfo=UTC)


def test_a_valid_api_token_file_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "api-tokens.json"
    path.write_text(json.dumps({"tokens": [_GOOD_TOKEN], "lastUsed": {}}))
    store = ApiTokenStore(path, "gsa_bootstrap", _created())
    assert [t.name for t in store.list()] == ["bootstrap-admin", "ci"]


def test_a_corrupt_audit_log_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(b"not a database, just bytes " * 200)
    with pytest.raises(StoreError) as caught:
        AuditLog(path)
    assert str(caught.value) == (
        f"{path} is not a usable audit log (file is not a database): restore it from a "
        "backup, or move it aside (with any -wal and -shm files beside it) to start a new, "
        "empty audit log"
    )


def test_an_empty_audit_log_is_refused_only_when_one_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.touch()
    with pytest.raises(
        StoreError, match=r"it is empty \(0 bytes\), but this control plane has run"
    ):
        AuditLog(path, expect_existing=True)
    AuditLog(path).close()


# --- file modes under umask 000 ----------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_directories_are_made_with_their_mode_whatever_the_umask(tmp_path: Path) -> None:
    make_dirs(tmp_path / "a" / "b" / "c", 0o700)
    assert [_mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    (tmp_path / "open").mkdir(mode=0o777)
    make_dirs(tmp_path / "open", 0o700)  # an existing directory is left as found
    assert _mode(tmp_path / "open") == 0o777


@pytest.mark.usefixtures("open_umask")
def test_the_prometheus_targets_file_is_not_world_writable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dirs(data, 0o700)
    with SqliteStore(data / "gossamer.db") as store:
        sd_file = data / "prometheus" / "sd" / "targets.json"
        telemetry = Telemetry(store, sd_file=sd_file, self_target=lambda: "127.0.0.1:15000")
        telemetry.write_sd_file()
    assert _mode(data / "prometheus") == 0o750
    assert _mode(data / "prometheus" / "sd") == 0o750
    assert _mode(sd_file) == 0o644
    assert json.loads(sd_file.read_text())[0]["targets"] == ["127.0.0.1:15000"]


@pytest.mark.usefixtures("open_umask")
def test_every_file_a_control_plane_makes_is_private_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "deeper" / "data"
    cp = ControlPlane(ControlPlaneConfig(data_dir=data))
    try:
        cp.api_tokens.create("ci", "read")
        cp.telemetry.write_sd_file()
        cp.audit.record("test", "test")
    finally:
        cp.store.close()
        cp.audit.close()
    public = {"bundle.crt", "intermediate.crt", "root.crt", "targets.json"}
    for path in [tmp_path / "deeper", *sorted(tmp_path.joinpath("deeper").rglob("*"))]:
        mode = _mode(path)
        if path.is_dir():
            expected = 0o750 if path.name == "prometheus" else 0o700
        else:
            expected = 0o644 if path.name in public else 0o600
        assert mode == expected, f"{path}: {mode:o}"


# --- the REST API, in process --------------------------------------------------------------


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    cp = ControlPlane(ControlPlaneConfig(data_dir=tmp_path / "cp"))
    client: TestClient[Any, Any] = TestClient(TestServer(cp.api.app()))
    await client.start_server()
    try:
        yield client, cp.admin_token
    finally:
        await client.close()
        cp.store.close()
        cp.audit.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/apply", b"kind: Service\nname: caf\xe9\n", 422, "request body: not UTF-8 at byte 23"),
        ("/v1/apply", _nested_flow(50_000).encode(), 422, "nested deeper than 64 levels"),
        ("/v1/apply", _nested_json(50_000).encode(), 422, "nested deeper than 64 levels"),
        ("/v1/apply", _laughs(9).encode(), 422, "aliases expand it to"),
        ("/v1/tokens", b'{"namespace": "caf\xe9"}', 400, "request body: not UTF-8 at byte 18"),
        ("/v1/tokens", b"[" * 50_000, 400, "request body: nested deeper than 64 levels"),
        ("/v1/tokens", b"{nope", 400, "request body: invalid JSON"),
        ("/v1/api-tokens", b"[" * 50_000, 400, "request body: nested deeper than 64 levels"),
        # A handler that still reads with request.json() (CA rotation): the safety net.
        ("/v1/ca/rotation", b"[" * 50_000, 400, "request body: nested deeper than 64 levels"),
    ],
    ids=[
        "apply: not UTF-8",
        "apply: deep YAML",
        "apply: deep JSON",
        "apply: billion laughs",
        "tokens: not UTF-8",
        "tokens: deep JSON",
        "tokens: not JSON",
        "api-tokens: deep JSON",
        "rotation: deep JSON",
    ],
)
async def test_unreadable_bodies_are_a_short_4xx_without_a_traceback(
    client: tuple[TestClient[Any, Any], str],
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: bytes,
    status: int,
    message: str,
) -> None:
    http, token = client
    caplog.set_level(logging.DEBUG)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with http.post(path, data=body, headers=headers) as resp:
        answer = await resp.json()
    assert resp.status == status
    assert message in answer["error"]["message"]
    assert len(answer["error"]["message"]) < 300
    assert all(r.exc_info is None for r in caplog.records)
    assert len([r for r in caplog.records if r.name.startswith("gossamer")]) <= 1
