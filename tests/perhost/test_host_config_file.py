"""The host config file as data: validated whole with field paths, and what a reload
changes (gossamer.host.config.plan), without processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gossamer.errors import InvalidResource
from gossamer.host.config import ConfigFile, plan
from gossamer.host.proxy import BadRegistration, Registration
from gossamer.resources.host import HostConfiguration, load_host_configuration

WEB: dict[str, Any] = {
    "name": "web-1",
    "namespace": "shop",
    "serviceAccount": "web",
    "inbound": "198.18.0.2:4143",
    "outbound": "127.0.0.1:4140",
    "admin": "0.0.0.0:4191",
    "uid": 1001,
    "ports": [{"name": "http", "port": 8080}],
}


def load(*workloads: dict[str, Any]) -> HostConfiguration:
    return load_host_configuration(json.dumps({"workloads": list(workloads)}).encode(), "host.yaml")


def test_an_entry_registers_as_gossamer_run_would() -> None:
    [web] = load(WEB).workloads
    reg = Registration.from_json(web.registration(), configured=True)
    assert (reg.key, reg.uid, reg.address) == (("shop", "web-1"), 1001, "198.18.0.2")
    assert [(p.port, p.app_port) for p in reg.ports] == [(8080, 8080)]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"name": "Web"}, "workloads[0].name: must be a valid DNS-1123 subdomain"),
        ({"inbound": "nowhere"}, "workloads[0].inbound: must be HOST:PORT"),
        ({"admin": "name:80"}, "workloads[0].admin: 'name' is not an IP address"),
        ({"outbound": None}, "workloads[0].outbound: required"),
        ({"uid": 0}, "workloads[0].uid: must be 1-4294967294"),
        ({"uid": "1001"}, "workloads[0].uid: must be an integer"),
        ({"outbound": "0.0.0.0:4140"}, "workloads[0].outbound: a uid workload's outbound"),
        ({"outbound": "127.0.0.1:0"}, "workloads[0].outbound: a uid workload's outbound"),
        ({"netns": "/run/netns/web"}, "workloads[0].uid: a workload is told apart by"),
        ({"dns": "10.0.0.1:53"}, "workloads[0].dns: a uid workload's DNS listener must be"),
        ({"uid": None, "netns": "web"}, "workloads[0].netns: must be an absolute path"),
        ({"ports": [{"port": 80}, {"port": 80}]}, "workloads[0].ports[1].port: duplicate"),
        ({"labels": {"app": 1}}, 'workloads[0].labels["app"]: must be a string'),
        ({"serviceCidr": "x"}, "workloads[0].serviceCidr: must be an IPv4 network"),
        ({"colour": "blue"}, "workloads[0].colour: unknown field"),
    ],
    ids=lambda v: str(v),
)
def test_a_bad_entry_is_refused_naming_its_field(change: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidResource) as err:
        load({**WEB, **change})
    assert str(err.value).startswith(f"host.yaml: {error}"), str(err.value)


def test_a_name_or_uid_twice_is_refused_at_the_second() -> None:
    other = {**WEB, "outbound": "127.0.0.1:4240"}
    with pytest.raises(InvalidResource) as err:
        load(WEB, other)
    assert "workloads[1].name: duplicate of workloads[0] (shop/web-1)" in str(err.value)
    assert "workloads[1].uid: uid 1001 is workloads[0]'s" in str(err.value)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b"workloads: [", "document 1: invalid YAML"),
        (b"", "must hold one HostConfiguration document, not 0"),
        (b"workloads: []\n---\nworkloads: []\n", "not 2"),
        (b"kind: Host\n", "kind: must be 'HostConfiguration'"),
        (b"\xff", "not UTF-8 at byte 0"),
        (b"workloads: 3\n", "workloads: must be a list"),
    ],
    ids=["yaml", "empty", "two", "kind", "utf8", "list"],
)
def test_a_file_that_is_no_host_configuration_is_refused(text: bytes, error: str) -> None:
    with pytest.raises(InvalidResource, match=r"host\.yaml") as err:
        load_host_configuration(text, "host.yaml")
    assert error in str(err.value)


def test_socket_registrations_may_not_name_a_uid_or_a_namespace_path() -> None:
    raw = load(WEB).workloads[0].registration()
    with pytest.raises(BadRegistration, match="uid: only the host config file"):
        Registration.from_json(raw)
    with pytest.raises(BadRegistration, match="netns: only the host config file"):
        Registration.from_json({**raw, "uid": None, "netns": "/proc/1/ns/net"})


def test_a_reload_stops_what_went_or_changed_and_starts_what_came() -> None:
    web = {**WEB, "uid": None, "outbound": "127.0.0.1:0"}
    cart = {**web, "name": "cart-1", "serviceAccount": "cart"}
    pay = {**web, "name": "pay-1", "serviceAccount": "pay"}
    before = load(web, cart).workloads
    running = {w.key: w.registration() for w in before}
    after = load({**web, "labels": {"v": "2"}}, pay)
    todo = plan(after, running)
    assert set(todo.stop) == {("shop", "web-1"), ("shop", "cart-1")}
    assert [w.name for w in todo.start] == ["web-1", "pay-1"]
    # Nothing changed: nothing to do. A name held by a socket registration is not taken.
    assert plan(load(web, cart), running) == plan(load(web, cart), running, frozenset())
    assert not plan(load(web, cart), running).start
    held = plan(load(web, cart, pay), running, frozenset({("shop", "pay-1")}))
    assert not held.start and [w.name for w in held.taken] == ["pay-1"]


def test_the_file_counts_as_changed_only_when_its_bytes_do(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text("workloads: []\n")
    file = ConfigFile(path)
    assert file.changed()
    file.read()
    assert not file.changed()
    path.write_text("workloads: [\n")
    assert file.changed()
    with pytest.raises(InvalidResource):
        file.read()
    assert not file.changed()  # a rejected file is not rejected again each poll
    path.unlink()
    assert file.changed()
    with pytest.raises(OSError):
        file.read()
    assert not file.changed()
