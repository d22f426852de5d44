"""Policy evaluation, case by case, with the cases Istio documents.

Each policy is written as a user writes it (YAML), validated as the API validates it,
then compiled the way the proxy compiles a snapshot.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import yaml

from gossamer.authz import Request, compile_security
from gossamer.resources import to_dict, validate
from gossamer.translate.authz import AuthorizationPolicyView, SecurityView

SLEEP = "cluster.local/ns/default/sa/sleep"
ADMIN = "cluster.local/ns/ops/sa/admin"
FROM_SLEEP = f"from: [{{source: {{principals: ['{SLEEP}']}}}}]"
GET = "to: [{operation: {methods: [GET]}}]"


def policy(text: str, name: str = "p") -> AuthorizationPolicyView:
    spec = yaml.safe_load(text) or {}
    obj = to_dict(
        validate(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": name, "namespace": "foo"},
                "spec": spec,
            }
        )
    )
    spec = obj["spec"]
    return AuthorizationPolicyView("foo", name, spec["action"], tuple(spec.get("rules", ())))


def request(**changes: Any) -> Request:
    base = Request(
        principal=SLEEP,
        port=8080,
        source_ip="10.1.2.3",
        method="GET",
        path="/",
        host="httpbin.foo",
        headers={},
    )
    return replace(base, **changes) if changes else base


def tcp(**changes: Any) -> Request:
    return Request(**{"principal": SLEEP, "port": 9000, "source_ip": "10.1.2.3", "tcp": True,
                      **changes})  # fmt: skip


# (policies, request, allowed, deciding policy or None)
CASES: list[tuple[str, list[AuthorizationPolicyView], Request, bool, str | None]] = [
    ("with no policy every request is allowed", [], request(), True, None),
    (
        "an ALLOW policy without rules allows nothing",
        [policy("action: ALLOW")],
        request(),
        False,
        "foo/p",
    ),
    (
        "an ALLOW policy with one empty rule allows everything",
        [policy("rules: [{}]")],
        request(principal=None),
        True,
        "foo/p",
    ),
    (
        "a DENY policy wins over an ALLOW policy that matches",
        [policy("rules: [{}]", "allow-all"), policy("action: DENY\nrules: [{}]", "deny-all")],
        request(),
        False,
        "foo/deny-all",
    ),
    (
        "a DENY policy that does not match leaves the request to the default allow",
        [policy("action: DENY\nrules: [{to: [{operation: {methods: [POST]}}]}]")],
        request(method="GET"),
        True,
        None,
    ),
    (
        "any ALLOW policy means only what matches is allowed",
        [policy("rules: [{to: [{operation: {methods: [POST]}}]}]")],
        request(method="GET"),
        False,
        "foo/p",
    ),
    (
        "one of several ALLOW policies matching is enough",
        [
            policy("rules: [{to: [{operation: {methods: [POST]}}]}]", "a"),
            policy("rules: [{to: [{operation: {methods: [GET]}}]}]", "b"),
        ],
        request(method="GET"),
        True,
        "foo/b",
    ),
    (
        "a principal matches exactly",
        [policy(f"rules: [{{from: [{{source: {{principals: ['{SLEEP}']}}}}]}}]")],
        request(),
        True,
        "foo/p",
    ),
    (
        "another principal does not match",
        [policy(f"rules: [{{from: [{{source: {{principals: ['{SLEEP}']}}}}]}}]")],
        request(principal=ADMIN),
        False,
        "foo/p",
    ),
    (
        "a principal prefix matches every service account of a namespace",
        [policy("rules: [{from: [{source: {principals: ['cluster.local/ns/ops/*']}}]}]")],
        request(principal=ADMIN),
        True,
        "foo/p",
    ),
    (
        "notPrincipals denies everyone except the listed principal",
        [policy(f"action: DENY\nrules: [{{from: [{{source: {{notPrincipals: ['{ADMIN}']}}}}]}}]")],
        request(principal=SLEEP),
        False,
        "foo/p",
    ),
    (
        "notPrincipals lets the listed principal through",
        [policy(f"action: DENY\nrules: [{{from: [{{source: {{notPrincipals: ['{ADMIN}']}}}}]}}]")],
        request(principal=ADMIN),
        True,
        None,
    ),
    (
        "principals presence matches any authenticated peer",
        [policy("rules: [{from: [{source: {principals: ['*']}}]}]")],
        request(),
        True,
        "foo/p",
    ),
    (
        "principals presence does not match a plaintext peer",
        [policy("rules: [{from: [{source: {principals: ['*']}}]}]")],
        request(principal=None),
        False,
        "foo/p",
    ),
    (
        "a plaintext peer passes notPrincipals, so a DENY on it does not apply",
        [policy(f"action: DENY\nrules: [{{from: [{{source: {{principals: ['{SLEEP}']}}}}]}}]")],
        request(principal=None),
        True,
        None,
    ),
    (
        "a DENY on notNamespaces refuses calls from other namespaces",
        [policy("action: DENY\nrules: [{from: [{source: {notNamespaces: [foo]}}]}]")],
        request(),
        False,
        "foo/p",
    ),
    (
        "namespaces match the namespace in the peer's identity",
        [policy("rules: [{from: [{source: {namespaces: [default]}}]}]")],
        request(),
        True,
        "foo/p",
    ),
    (
        "fields of one source must all match",
        [
            policy(
                f"rules: [{{from: [{{source: {{principals: ['{SLEEP}'], namespaces: [ops]}}}}]}}]"
            )
        ],
        request(),
        False,
        "foo/p",
    ),
    (
        "any one of several sources is enough",
        [policy(f"rules: [{{from: [{{source: {{namespaces: [ops]}}}}, {FROM_SLEEP[7:-1]}]}}]")],
        request(),
        True,
        "foo/p",
    ),
    (
        "a path prefix matches below it",
        [policy("rules: [{to: [{operation: {paths: ['/test/*', '*/info']}}]}]")],
        request(path="/test/a/b"),
        True,
        "foo/p",
    ),
    (
        "a path suffix matches at the end",
        [policy("rules: [{to: [{operation: {paths: ['/test/*', '*/info']}}]}]")],
        request(path="/a/info"),
        True,
        "foo/p",
    ),
    (
        "a path matching neither prefix nor suffix is refused",
        [policy("rules: [{to: [{operation: {paths: ['/test/*', '*/info']}}]}]")],
        request(path="/info/a"),
        False,
        "foo/p",
    ),
    (
        "an exact path is compared without the query string",
        [policy("rules: [{to: [{operation: {paths: [/status]}}]}]")],
        request(path="/status"),
        True,
        "foo/p",
    ),
    (
        "notPaths excludes a path from a DENY",
        [policy("action: DENY\nrules: [{to: [{operation: {notPaths: [/healthz]}}]}]")],
        request(path="/healthz"),
        True,
        None,
    ),
    (
        "hosts match without regard to case",
        [policy("rules: [{to: [{operation: {hosts: ['*.FOO']}}]}]")],
        request(host="HTTPBIN.foo"),
        True,
        "foo/p",
    ),
    (
        "ports match the workload port the request is for",
        [policy("rules: [{to: [{operation: {ports: ['8080']}}]}]")],
        request(port=9090),
        False,
        "foo/p",
    ),
    (
        "notPorts leaves other ports matched",
        [policy("action: DENY\nrules: [{to: [{operation: {notPorts: ['8080']}}]}]")],
        request(port=9090),
        False,
        "foo/p",
    ),
    (
        "a header condition matches one of its values",
        [policy("rules: [{when: [{key: 'request.headers[version]', values: [v1, v2]}]}]")],
        request(headers={"version": "v2"}),
        True,
        "foo/p",
    ),
    (
        "a header condition with another value does not match",
        [policy("rules: [{when: [{key: 'request.headers[version]', values: [v1, v2]}]}]")],
        request(headers={"version": "v3"}),
        False,
        "foo/p",
    ),
    (
        "a header presence condition does not match an absent header",
        [policy("rules: [{when: [{key: 'request.headers[x-token]', values: ['*']}]}]")],
        request(headers={}),
        False,
        "foo/p",
    ),
    (
        "notValues refuses the listed header value",
        [policy("rules: [{when: [{key: 'request.headers[x-env]', notValues: [prod]}]}]")],
        request(headers={"x-env": "prod"}),
        False,
        "foo/p",
    ),
    (
        "ipBlocks match the peer address by CIDR",
        [policy("rules: [{from: [{source: {ipBlocks: [10.1.0.0/16]}}]}]")],
        request(source_ip="10.1.200.7"),
        True,
        "foo/p",
    ),
    (
        "notIpBlocks in a DENY refuses addresses outside the block",
        [policy("action: DENY\nrules: [{from: [{source: {notIpBlocks: [192.168.0.0/16]}}]}]")],
        request(source_ip="10.1.2.3"),
        False,
        "foo/p",
    ),
    (
        "from, to and when must all match",
        [
            policy(
                f"rules: [{{{FROM_SLEEP}, {GET}, "
                "when: [{key: 'request.headers[version]', values: [v1]}]}]"
            )
        ],
        request(headers={"version": "v2"}),
        False,
        "foo/p",
    ),
    (
        "TCP: an ALLOW rule that needs HTTP fields never matches a connection",
        [policy(f"rules: [{{{FROM_SLEEP}, {GET}}}]")],
        tcp(),
        False,
        "foo/p",
    ),
    (
        "TCP: an ALLOW rule on principal and port matches a connection",
        [policy(f"rules: [{{{FROM_SLEEP}, to: [{{operation: {{ports: ['9000']}}}}]}}]")],
        tcp(),
        True,
        "foo/p",
    ),
    (
        "TCP: a DENY rule ignores HTTP fields and so denies more",
        [policy("action: DENY\nrules: [{to: [{operation: {paths: [/admin], ports: ['9000']}}]}]")],
        tcp(),
        False,
        "foo/p",
    ),
]


@pytest.mark.parametrize(
    ("policies", "req", "allowed", "decided_by"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_policy_evaluation(
    policies: list[AuthorizationPolicyView], req: Request, allowed: bool, decided_by: str | None
) -> None:
    decision = compile_security(SecurityView(policies=tuple(policies))).check(req)
    assert decision.allowed is allowed, decision.reason
    assert decision.policy == decided_by


def test_a_denial_names_the_policy_and_the_rule() -> None:
    deny = policy("action: DENY\nrules: [{to: [{operation: {methods: [PUT]}}]}, {}]", "block")
    decision = compile_security(SecurityView(policies=(deny,))).check(request())
    assert decision.reason == "denied by foo/block"
    assert decision.rule == 1


def test_an_audit_policy_records_without_blocking() -> None:
    audit = policy("action: AUDIT\nrules: [{to: [{operation: {paths: ['/admin/*']}}]}]", "watch")
    authorizer = compile_security(SecurityView(policies=(audit,)))
    assert not authorizer.allows_everything
    decision = authorizer.check(request(path="/admin/users"))
    assert decision.allowed
    assert decision.audited == ("foo/watch[0]",)
    assert authorizer.check(request(path="/other")).audited == ()


@pytest.mark.parametrize(
    ("default", "principal", "allowed"),
    [
        ("ALLOW_ALL", None, True),
        ("ALLOW_AUTHENTICATED", SLEEP, True),
        ("ALLOW_AUTHENTICATED", None, False),
        ("DENY_ALL", SLEEP, False),
    ],
    ids=[
        "allow all lets a plaintext peer in",
        "allow authenticated lets a mesh peer in",
        "allow authenticated refuses a plaintext peer",
        "deny all refuses even a mesh peer",
    ],
)
def test_the_mesh_default_decides_when_no_allow_policy_applies(
    default: str, principal: str | None, allowed: bool
) -> None:
    view = SecurityView(default_action=default, default_from="gossamer-system/default")
    decision = compile_security(view).check(request(principal=principal))
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason.startswith(f"denied by mesh default {default}")


def test_an_allow_policy_overrides_a_deny_all_default() -> None:
    allow = policy(f"rules: [{{from: [{{source: {{principals: ['{SLEEP}']}}}}]}}]")
    view = SecurityView(default_action="DENY_ALL", policies=(allow,))
    assert compile_security(view).check(request()).allowed
    assert not compile_security(view).check(request(principal=ADMIN)).allowed


def test_no_policy_and_the_allow_all_default_skip_evaluation() -> None:
    assert compile_security(SecurityView()).allows_everything
