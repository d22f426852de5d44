"""Which MeshPolicy telemetry settings reach a proxy, and how they meet its environment:
the pure functions."""

from __future__ import annotations

from typing import Any

import pytest
from tests.translate.test_authz import obj

from gossamer.errors import InvalidResource
from gossamer.resources import to_dict, validate
from gossamer.translate import MeshView, ProxyInfo, build_snapshot
from gossamer.translate.authz import SecurityIndex
from gossamer.translate.snapshot import Snapshot
from gossamer.translate.telemetry import TelemetryView, otel_settings, telemetry_for


def policy(name: str, namespace: str, telemetry: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return obj("MeshPolicy", name, namespace, {"telemetry": telemetry, **spec})


MESH_WIDE = policy(
    "default",
    "gossamer-system",
    {"tracing": {"endpoint": "http://collector:4318", "sampler": "parentbased_always_on"}},
)
SHOP = policy("shop", "shop", {"tracing": {"sampler": "traceidratio", "samplerArg": 0.25}})
WEB = policy(
    "web", "shop", {"accessLog": {"enabled": True}}, selector={"matchLabels": {"app": "web"}}
)


def resolve(objects: list[dict[str, Any]], namespace: str, labels: dict[str, str]) -> TelemetryView:
    return telemetry_for(SecurityIndex.from_objects(objects), namespace, labels)


def test_no_mesh_policy_sets_nothing() -> None:
    assert resolve([], "shop", {"app": "web"}) == TelemetryView()


def test_each_setting_comes_from_the_most_specific_policy_that_sets_it() -> None:
    view = resolve([MESH_WIDE, SHOP, WEB], "shop", {"app": "web"})
    assert view.tracing_endpoint == "http://collector:4318"  # only the mesh sets it
    assert (view.tracing_sampler, view.tracing_sampler_arg) == ("traceidratio", 0.25)  # shop
    assert view.access_log is True  # the workload's own policy
    assert dict(view.sources) == {
        "access_log": "shop/web",
        "tracing_endpoint": "gossamer-system/default",
        "tracing_sampler": "shop/shop",
        "tracing_sampler_arg": "shop/shop",
    }


def test_a_policy_applies_only_to_its_namespace_and_the_workloads_it_selects() -> None:
    other = resolve([MESH_WIDE, SHOP, WEB], "other", {"app": "web"})
    assert other.tracing_sampler == "parentbased_always_on" and other.access_log is None
    db = resolve([MESH_WIDE, SHOP, WEB], "shop", {"app": "db"})
    assert db.tracing_sampler == "traceidratio" and db.access_log is None


def test_a_workload_policy_can_turn_access_logs_off_again() -> None:
    on = policy("on", "shop", {"accessLog": {"enabled": True}})
    off = policy("off", "shop", {"accessLog": {"enabled": False}},
                 selector={"matchLabels": {"app": "db"}})  # fmt: skip
    assert resolve([on, off], "shop", {"app": "db"}).access_log is False
    assert resolve([on, off], "shop", {"app": "web"}).access_log is True


def test_of_two_equally_specific_policies_the_oldest_wins() -> None:
    old = obj("MeshPolicy", "b-old", "shop", {"telemetry": {"tracing": {"endpoint": "http://old"}}},
              creationTimestamp="2025-01-01T00:00:00Z")  # fmt: skip
    new = obj("MeshPolicy", "a-new", "shop", {"telemetry": {"tracing": {"endpoint": "http://new"}}},
              creationTimestamp="2025-06-01T00:00:00Z")  # fmt: skip
    assert resolve([new, old], "shop", {}).tracing_endpoint == "http://old"


@pytest.mark.parametrize(
    "telemetry",
    [
        {"tracing": {"endpoint": "ftp://collector"}},
        {"tracing": {"endpoint": "collector:4318"}},
        {"tracing": {"samplerArg": 1.5}},
        {"tracing": {"sampler": "sometimes"}},
        {"accessLog": {"enabled": "yes"}},
        {"accessLog": {"to": "/tmp/x"}},
    ],
    ids=["not-http", "no-scheme", "ratio-over-1", "unknown-sampler", "not-a-bool", "unknown-field"],
)
def test_bad_telemetry_settings_are_refused_at_apply(telemetry: dict[str, Any]) -> None:
    with pytest.raises(InvalidResource):
        policy("bad", "shop", telemetry)


def test_the_snapshot_carries_the_workloads_telemetry_through_json() -> None:
    workload = to_dict(
        validate(
            {
                "apiVersion": "gossamer.dev/v1alpha1",
                "kind": "Workload",
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
                "spec": {"address": "127.0.0.1", "inboundPort": 4143},
            }
        )
    )
    mesh = MeshView.from_objects(
        [MESH_WIDE, SHOP, WEB, workload], trust_domain="cluster.local", trust_bundle="PEM"
    )
    snapshot = build_snapshot(mesh, ProxyInfo("web-1", "shop"))
    assert snapshot.telemetry.access_log is True
    assert Snapshot.from_json(snapshot.to_json()) == snapshot


def test_mesh_settings_fill_in_what_the_environment_leaves_unset() -> None:
    view = TelemetryView("http://collector:4318", "traceidratio", 0.5, True)
    assert otel_settings(view, {"OTEL_BSP_SCHEDULE_DELAY": "50"}) == {
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
    }
    with_path = TelemetryView("http://jaeger:4318/custom/traces")
    assert otel_settings(with_path, {}) == {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/custom/traces"
    }
    assert otel_settings(TelemetryView(), {}) == {}


def test_the_environment_wins_over_mesh_settings() -> None:
    view = TelemetryView("http://collector:4318", "traceidratio", 0.5)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://mine:4318", "OTEL_TRACES_SAMPLER": "always_on"}
    assert otel_settings(view, env) == env  # the sampler's argument goes with the sampler
    assert otel_settings(view, {"OTEL_TRACES_SAMPLER_ARG": "0.1"}) == {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }
