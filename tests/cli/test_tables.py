from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from gossamer.cli.output import age, duration, rule_ref
from gossamer.cli.resources import print_table
from gossamer.resources import parse_documents, to_dict, validate

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OBJECTS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, creationTimestamp: "2026-11-26T11:59:15Z"}
spec:
  selector: {app: web, tier: front}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: bank, creationTimestamp: "2026-11-20T12:00:00Z"}
spec:
  ports: [{port: 7000}]
---
apiVersion: gossamer.dev/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, creationTimestamp: "2026-11-26T09:00:00Z"}
spec:
  address: 10.0.0.7
  inboundPort: 4143
  serviceAccount: web
  ports: [{name: http, port: 8080, appPort: 18080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-canary, namespace: shop, creationTimestamp: "2026-11-26T11:30:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web, port: 80, weight: 90}, {name: web-canary, port: 80, weight: 10}]
"""


def objects(kind: str) -> list[dict[str, Any]]:
    docs = [to_dict(validate(d)) for d in parse_documents(OBJECTS)]
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize(
    ("kind", "all_namespaces"),
    [("Service", True), ("Service", False), ("Workload", True), ("HTTPRoute", False)],
    ids=["services across namespaces", "services in one namespace", "workloads", "routes"],
)
def test_get_tables_match_golden(
    kind: str, all_namespaces: bool, golden: Callable[[str, str], None]
) -> None:
    out = io.StringIO()
    print_table(kind, objects(kind), all_namespaces, now=NOW, out=out)
    golden(f"cli/get-{kind.lower()}{'-all' if all_namespaces else ''}.txt", out.getvalue())


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-11-26T11:59:15Z", "45s"),
        ("2026-11-26T11:30:00Z", "30m"),
        ("2026-11-26T09:00:00Z", "3h"),
        ("2026-11-20T12:00:00Z", "6d"),
        (None, "<unknown>"),
    ],
    ids=["seconds", "minutes", "hours", "days", "missing"],
)
def test_age_reads_like_kubectl(stamp: str | None, expected: str) -> None:
    assert age(stamp, NOW) == expected


def test_durations_show_the_two_largest_units() -> None:
    assert duration(86399) == "23h59m"
    assert duration(364 * 86400 + 23 * 3600) == "364d23h"
    assert duration(-1) == "expired"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, None, ""), "rules[0]"),
        ((1, None, "shop/canary"), "shop/canary rules[1]"),
        ((0, "canary", "shop/canary"), "shop/canary rule canary"),
    ],
    ids=["an authz rule by field path", "an unnamed route rule", "a named route rule"],
)
def test_rules_are_named_by_name_or_field_path_everywhere(
    args: tuple[int, str | None, str], expected: str
) -> None:
    assert rule_ref(*args) == expected
