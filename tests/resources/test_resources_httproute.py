"""gateway.networking.k8s.io/v1 HTTPRoute: the CRD's defaults and validation rules."""

from typing import Any

import pytest

from gossamer.errors import InvalidResource
from gossamer.resources import HTTPRoute, parse_duration, to_dict, validate

ECHO = {"group": "", "kind": "Service", "name": "echo", "port": 80}


def _route(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "echo-split", "namespace": "shop"},
        "spec": spec,
    }


def _rule(**rule: Any) -> dict[str, Any]:
    return _route(parentRefs=[ECHO], rules=[rule])


def _valid(obj: dict[str, Any]) -> HTTPRoute:
    route = validate(obj)
    assert isinstance(route, HTTPRoute)
    return route


def _errors(obj: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidResource) as caught:
        validate(obj)
    assert caught.value.subject == "HTTPRoute shop/echo-split"
    return [str(e) for e in caught.value.errors]


# --- Defaults -----------------------------------------------------------------------------


def test_an_empty_spec_gets_one_rule_matching_every_path() -> None:
    assert to_dict(_valid(_route()))["spec"] == {
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]
    }


def test_defaults_are_filled_where_the_crd_fills_them() -> None:
    route = _valid(
        _route(
            parentRefs=[{"name": "gw"}, {"group": "", "kind": "Service", "name": "echo"}],
            rules=[
                {
                    "matches": [
                        {"path": {"value": "/api"}},
                        {"headers": [{"name": "v", "value": "2"}]},
                    ],
                    "backendRefs": [{"name": "echo-v1", "port": 80}],
                    "filters": [
                        {
                            "type": "RequestMirror",
                            "requestMirror": {
                                "backendRef": {"name": "shadow", "port": 80},
                                "fraction": {"numerator": 5},
                            },
                        }
                    ],
                },
                {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]},
            ],
        )
    )
    spec = to_dict(route)["spec"]
    assert spec["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
        {"group": "", "kind": "Service", "name": "echo"},
    ]
    first, second = spec["rules"]
    assert first["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/api"}},
        {
            "path": {"type": "PathPrefix", "value": "/"},
            "headers": [{"type": "Exact", "name": "v", "value": "2"}],
        },
    ]
    assert first["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "echo-v1", "port": 80, "weight": 1}
    ]
    mirror = first["filters"][0]["requestMirror"]
    assert mirror["backendRef"] == {"group": "", "kind": "Service", "name": "shadow", "port": 80}
    assert mirror["fraction"] == {"numerator": 5, "denominator": 100}
    assert second["filters"][0]["requestRedirect"] == {"scheme": "https", "statusCode": 302}
    assert second["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]


def test_empty_matches_mean_match_everything() -> None:
    route = _valid(_rule(matches=[]))
    assert route.spec.rules[0].matches[0].path.value == "/"


def test_v1beta1_routes_are_read_as_v1() -> None:
    obj = _route()
    obj["apiVersion"] = "gateway.networking.k8s.io/v1beta1"
    assert to_dict(_valid(obj))["apiVersion"] == "gateway.networking.k8s.io/v1"


def test_session_persistence_and_status_are_kept_as_written() -> None:
    persistence = {
        "sessionName": "s",
        "type": "Cookie",
        "cookieConfig": {"lifetimeType": "Session"},
    }
    obj = _rule(sessionPersistence=persistence)
    obj["status"] = {"parents": [{"controllerName": "gossamer.dev/mesh", "conditions": []}]}
    out = to_dict(_valid(obj))
    assert out["spec"]["rules"][0]["sessionPersistence"] == persistence
    assert out["status"] == obj["status"]


# --- Backend references -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ({"name": "echo"}, ["spec.rules[0].backendRefs[0].port: required for a Service backend"]),
        (
            {"kind": "Service", "group": "", "name": "echo"},
            ["spec.rules[0].backendRefs[0].port: required for a Service backend"],
        ),
        (
            {"name": "echo", "port": 80, "weight": -1},
            ["spec.rules[0].backendRefs[0].weight: must be 0-1000000"],
        ),
        (
            {"name": "echo", "port": 80, "weight": 1_000_001},
            ["spec.rules[0].backendRefs[0].weight: must be 0-1000000"],
        ),
        ({"name": "echo", "port": 0}, ["spec.rules[0].backendRefs[0].port: must be 1-65535"]),
        ({"name": "", "port": 80}, ["spec.rules[0].backendRefs[0].name: must not be empty"]),
        ({"port": 80}, ["spec.rules[0].backendRefs[0].name: required"]),
        (
            {"name": "echo", "port": 80, "namespace": "Other"},
            ["spec.rules[0].backendRefs[0].namespace: must be a valid DNS-1123 label"],
        ),
        (
            {"name": "echo", "port": 80, "kind": "my_kind"},
            ["spec.rules[0].backendRefs[0].kind: must be a kind"],
        ),
        (
            {"name": "echo", "port": 80, "group": "Example.com"},
            ["spec.rules[0].backendRefs[0].group: must be empty (the core API group)"],
        ),
    ],
    ids=[
        "Service without a port", "explicit Service without a port", "negative weight",
        "weight above a million", "port zero", "empty name", "no name",
        "uppercase namespace", "kind with an underscore", "uppercase group",
    ],
)  # fmt: skip
def test_backend_ref_errors(ref: dict[str, Any], expected: list[str]) -> None:
    errors = _errors(_rule(backendRefs=[ref]))
    assert len(errors) == len(expected), errors
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(start), errors


@pytest.mark.parametrize(
    "ref",
    [
        {"name": "echo", "port": 80, "weight": 0},
        {"name": "echo", "port": 80, "weight": 1_000_000},
        {"group": "example.com", "kind": "Bucket", "name": "b"},
        {"name": "echo", "port": 80, "namespace": "other"},
    ],
    ids=[
        "weight zero",
        "weight a million",
        "a non-Service backend needs no port",
        "another namespace",
    ],
)
def test_backend_refs_accepted(ref: dict[str, Any]) -> None:
    _valid(_rule(backendRefs=[ref]))


def test_mirror_to_a_service_needs_a_port_too() -> None:
    mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow"}}}
    assert _errors(_rule(filters=[mirror])) == [
        "spec.rules[0].filters[0].requestMirror.backendRef.port: required for a Service backend"
    ]


# --- Filters ------------------------------------------------------------------------------

ADD_HEADER = {"add": [{"name": "x-mesh", "value": "gossamer"}]}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (
            {"type": "RequestHeaderModifier"},
            [
                "spec.rules[0].filters[0].requestHeaderModifier: "
                "required when type is RequestHeaderModifier"
            ],
        ),
        (
            {"type": "ResponseHeaderModifier", "requestHeaderModifier": ADD_HEADER},
            [
                "spec.rules[0].filters[0].requestHeaderModifier: "
                "must not be set when type is ResponseHeaderModifier",
                "spec.rules[0].filters[0].responseHeaderModifier: "
                "required when type is ResponseHeaderModifier",
            ],
        ),
        (
            {"type": "URLRewrite", "urlRewrite": {}, "requestRedirect": {}},
            ["spec.rules[0].filters[0].requestRedirect: must not be set when type is URLRewrite"],
        ),
        (
            {"type": "ExtensionRef"},
            ["spec.rules[0].filters[0].extensionRef: required when type is ExtensionRef"],
        ),
        (
            {"type": "Rewrite"},
            [
                "spec.rules[0].filters[0].type: must be 'RequestHeaderModifier', "
                "'ResponseHeaderModifier', 'RequestMirror', 'RequestRedirect', 'URLRewrite', "
                "'ExtensionRef' or 'CORS'"
            ],
        ),
    ],
    ids=[
        "config missing", "config in the wrong field", "a second config",
        "extension without its reference", "unknown type",
    ],
)  # fmt: skip
def test_filter_config_must_match_its_type(flt: dict[str, Any], expected: list[str]) -> None:
    assert _errors(_rule(filters=[flt])) == expected


def test_request_redirect_and_url_rewrite_cannot_be_combined() -> None:
    filters = [
        {"type": "RequestRedirect", "requestRedirect": {"hostname": "example.com"}},
        {"type": "URLRewrite", "urlRewrite": {"hostname": "example.com"}},
    ]
    assert _errors(_rule(filters=filters)) == [
        "spec.rules[0].filters[1].type: URLRewrite cannot be combined with RequestRedirect"
    ]


def test_request_redirect_cannot_be_used_with_backend_refs() -> None:
    filters = [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]
    assert _errors(_rule(filters=filters, backendRefs=[{"name": "echo", "port": 80}])) == [
        "spec.rules[0].filters[0].type: RequestRedirect cannot be used together with backendRefs"
    ]


def test_core_filters_cannot_be_repeated_but_mirrors_can() -> None:
    mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "s", "port": 80}}}
    _valid(_rule(filters=[mirror, mirror]))
    header = {"type": "RequestHeaderModifier", "requestHeaderModifier": ADD_HEADER}
    assert _errors(_rule(filters=[header, mirror, header])) == [
        "spec.rules[0].filters[2].type: "
        "RequestHeaderModifier filter cannot be repeated (filters[0])"
    ]


def test_backend_ref_filters_follow_the_same_rules() -> None:
    header = {"type": "RequestHeaderModifier", "requestHeaderModifier": ADD_HEADER}
    ref = {"name": "echo", "port": 80, "filters": [header, header]}
    assert _errors(_rule(backendRefs=[ref])) == [
        "spec.rules[0].backendRefs[0].filters[1].type: "
        "RequestHeaderModifier filter cannot be repeated (filters[0])"
    ]


REWRITE_PREFIX = {
    "type": "URLRewrite",
    "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}},
}


@pytest.mark.parametrize(
    ("matches", "ok"),
    [
        (None, True),
        ([{"path": {"type": "PathPrefix", "value": "/v1"}}], True),
        ([{"path": {"type": "Exact", "value": "/v1"}}], False),
        ([{"path": {"value": "/a"}}, {"path": {"value": "/b"}}], False),
    ],
    ids=["the default match", "one prefix match", "an exact match", "two prefix matches"],
)
def test_replace_prefix_match_needs_exactly_one_prefix_match(
    matches: list[dict[str, Any]] | None, ok: bool
) -> None:
    rule: dict[str, Any] = {"filters": [REWRITE_PREFIX]}
    if matches is not None:
        rule["matches"] = matches
    if ok:
        _valid(_rule(**rule))
    else:
        assert _errors(_rule(**rule)) == [
            "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch: "
            "needs the rule to have exactly one match, of path type PathPrefix"
        ]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            {"type": "ReplaceFullPath"},
            ["path.replaceFullPath: required when type is ReplaceFullPath"],
        ),
        (
            {"type": "ReplaceFullPath", "replaceFullPath": "/", "replacePrefixMatch": "/"},
            ["path.replacePrefixMatch: must not be set when type is ReplaceFullPath"],
        ),
        (
            {"type": "ReplacePrefixMatch", "replaceFullPath": "/"},
            [
                "path.replacePrefixMatch: required when type is ReplacePrefixMatch",
                "path.replaceFullPath: must not be set when type is ReplacePrefixMatch",
            ],
        ),
        ({"type": "Replace", "replaceFullPath": "/"}, ["path.type: must be 'ReplaceFullPath' or"]),
    ],
    ids=["value missing", "both values", "the other value", "unknown type"],
)
def test_path_modifier_value_must_match_its_type(path: dict[str, Any], expected: list[str]) -> None:
    redirect = {"type": "RequestRedirect", "requestRedirect": {"path": path}}
    errors = _errors(_rule(filters=[redirect]))
    assert len(errors) == len(expected), errors
    for error, end in zip(errors, expected, strict=True):
        assert error.startswith(f"spec.rules[0].filters[0].requestRedirect.{end}"), errors


@pytest.mark.parametrize(
    ("redirect", "expected"),
    [
        ({"statusCode": 304}, "statusCode: must be 301, 302, 303, 307 or 308"),
        ({"scheme": "ftp"}, "scheme: must be 'http' or 'https'"),
        ({"port": 0}, "port: must be 1-65535"),
        ({"hostname": "*.example.com"}, "hostname: must be a lowercase RFC 1123 hostname"),
    ],
    ids=["status 304", "scheme ftp", "port zero", "wildcard hostname"],
)
def test_redirect_errors(redirect: dict[str, Any], expected: str) -> None:
    flt = {"type": "RequestRedirect", "requestRedirect": redirect}
    errors = _errors(_rule(filters=[flt]))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"spec.rules[0].filters[0].requestRedirect.{expected}"), errors


@pytest.mark.parametrize(
    ("modifier", "expected"),
    [
        (
            {"set": [{"name": "X-A", "value": "1"}], "remove": ["x-a"]},
            'requestHeaderModifier.remove[0]: header "x-a" already has an action (set[0])',
        ),
        (
            {"add": [{"name": "a", "value": "1"}, {"name": "A", "value": "2"}]},
            'requestHeaderModifier.add[1].name: header "A" already has an action (add[0])',
        ),
        (
            {"set": [{"name": "x-a", "value": "bad\r\nInjected: yes"}]},
            "requestHeaderModifier.set[0].value: must be printable US-ASCII",
        ),
        (
            {"set": [{"name": "x a", "value": "1"}]},
            "requestHeaderModifier.set[0].name: must be an HTTP header name",
        ),
        (
            {"set": [{"name": "x-a", "value": ""}]},
            "requestHeaderModifier.set[0].value: must not be empty",
        ),
        (
            {"remove": [f"x-{i}" for i in range(17)]},
            "requestHeaderModifier.remove: must have at most 16 items",
        ),
    ],
    ids=[
        "set and remove one header", "add one header twice, in other case",
        "CR LF in a value", "space in a name", "empty value", "17 removals",
    ],
)  # fmt: skip
def test_header_modifier_errors(modifier: dict[str, Any], expected: str) -> None:
    flt = {"type": "RequestHeaderModifier", "requestHeaderModifier": modifier}
    errors = _errors(_rule(filters=[flt]))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"spec.rules[0].filters[0].{expected}"), errors


@pytest.mark.parametrize(
    ("mirror", "expected"),
    [
        ({"percent": 101}, "requestMirror.percent: must be 0-100"),
        (
            {"percent": 10, "fraction": {"numerator": 1}},
            "requestMirror.fraction: must not be set together with percent",
        ),
        (
            {"fraction": {"numerator": 3, "denominator": 2}},
            "requestMirror.fraction.numerator: must not be greater than denominator",
        ),
        (
            {"fraction": {"numerator": 1, "denominator": 0}},
            "requestMirror.fraction.denominator: must be",
        ),
    ],
    ids=["percent above 100", "percent and fraction", "fraction above one", "zero denominator"],
)
def test_mirror_errors(mirror: dict[str, Any], expected: str) -> None:
    flt = {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "s", "port": 80}, **mirror},
    }
    errors = _errors(_rule(filters=[flt]))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"spec.rules[0].filters[0].{expected}"), errors


def test_cors_wildcard_must_stand_alone() -> None:
    cors = {"type": "CORS", "cors": {"allowOrigins": ["*", "https://example.com"]}}
    assert _errors(_rule(filters=[cors])) == [
        "spec.rules[0].filters[0].cors.allowOrigins: '*' must be the only entry when it is used"
    ]
    cors = {"type": "CORS", "cors": {"allowOrigins": ["https://*.example.com:8443"]}}
    assert to_dict(_valid(_rule(filters=[cors])))["spec"]["rules"][0]["filters"][0]["cors"] == {
        "allowOrigins": ["https://*.example.com:8443"],
        "maxAge": 5,
    }


# --- Matches ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ({"value": "api"}, "must be an absolute path (start with '/')"),
        ({"type": "Exact", "value": "/a//b"}, "must not contain '//'"),
        ({"value": "/a/./b"}, "must not contain '/./'"),
        ({"value": "/a/../b"}, "must not contain '/../'"),
        ({"value": "/a%2fb"}, "must not contain '%2f'"),
        ({"value": "/a%2Fb"}, "must not contain '%2F'"),
        ({"value": "/a#b"}, "must not contain '#'"),
        ({"value": "/a/.."}, "must not end with '/..'"),
        ({"value": "/a/."}, "must not end with '/.'"),
        ({"value": "/a b"}, "must contain only path characters"),
        ({"type": "RegularExpression", "value": "/(unclosed"}, "must be a valid regular"),
    ],
    ids=[
        "relative", "double slash", "dot segment", "dot-dot segment", "encoded slash",
        "encoded slash, uppercase", "fragment", "ends with dot-dot", "ends with dot", "space",
        "broken regular expression",
    ],
)  # fmt: skip
def test_path_match_rules(path: dict[str, Any], reason: str) -> None:
    errors = _errors(_rule(matches=[{"path": path}]))
    assert errors[0].startswith(f"spec.rules[0].matches[0].path.value: {reason}"), errors


@pytest.mark.parametrize(
    "path",
    [
        {"type": "Exact", "value": "/api/v1"},
        {"value": "/a%20b/~user/@x:y;z=1"},
        {"type": "RegularExpression", "value": "^/api/v[0-9]+(/.*)?$"},
        {"type": "RegularExpression", "value": "[a-z]+"},
    ],
    ids=["exact", "escapes and sub-delimiters", "anchored regex", "regex not starting with /"],
)
def test_path_matches_accepted(path: dict[str, Any]) -> None:
    _valid(_rule(matches=[{"path": path}]))


def test_header_match_names_are_unique_regardless_of_case() -> None:
    headers = [{"name": "X-Version", "value": "1"}, {"name": "x-version", "value": "2"}]
    assert _errors(_rule(matches=[{"headers": headers}])) == [
        'spec.rules[0].matches[0].headers[1].name: duplicate header "x-version" (headers[0])'
    ]


def test_query_param_names_are_unique_but_case_sensitive() -> None:
    params = [{"name": "v", "value": "1"}, {"name": "V", "value": "2"}]
    _valid(_rule(matches=[{"queryParams": params}]))
    assert _errors(_rule(matches=[{"queryParams": [*params, params[0]]}])) == [
        "spec.rules[0].matches[0].queryParams[2].name: "
        'duplicate query parameter "v" (queryParams[0])'
    ]


def test_method_must_be_an_http_method() -> None:
    _valid(_rule(matches=[{"method": "PATCH"}]))
    assert _errors(_rule(matches=[{"method": "get"}]))[0].startswith(
        "spec.rules[0].matches[0].method: must be 'GET', 'HEAD',"
    )


# --- Timeouts and retries -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeouts", "expected"),
    [
        ({"request": "10s", "backendRequest": "2s"}, []),
        ({"request": "10s", "backendRequest": "10s"}, []),
        ({"request": "0s", "backendRequest": "1h"}, []),
        ({"backendRequest": "1h"}, []),
        (
            {"request": "1s", "backendRequest": "1500ms"},
            ["spec.rules[0].timeouts.backendRequest: must not be longer than request (1s)"],
        ),
        ({"request": "1.5s"}, ["spec.rules[0].timeouts.request: must be a duration"]),
        ({"request": "-1s"}, ["spec.rules[0].timeouts.request: must be a duration"]),
        ({"request": "1d"}, ["spec.rules[0].timeouts.request: must be a duration"]),
        ({"request": "100000s"}, ["spec.rules[0].timeouts.request: must be a duration"]),
        ({"request": "1h1m1s1ms1h"}, ["spec.rules[0].timeouts.request: must be a duration"]),
        ({"request": 10}, ["spec.rules[0].timeouts.request: must be a string"]),
        ({"idle": "1s"}, ["spec.rules[0].timeouts.idle: unknown field"]),
    ],
    ids=[
        "backend shorter", "backend equal", "request disabled", "backend alone",
        "backend longer than request", "fraction", "negative", "days", "six digits",
        "five parts", "a number", "unknown field",
    ],
)  # fmt: skip
def test_timeouts(timeouts: dict[str, Any], expected: list[str]) -> None:
    if not expected:
        _valid(_rule(timeouts=timeouts))
        return
    errors = _errors(_rule(timeouts=timeouts))
    assert len(errors) == len(expected), errors
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(start), errors


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0), ("1s", 1.0), ("500ms", 0.5), ("1m", 60.0), ("1h30m", 5400.0),
        ("1h1m1s1ms", 3661.001), ("99999ms", 99.999),
    ],
    ids=[
        "zero", "a second", "milliseconds", "a minute", "hours and minutes", "four parts",
        "five digits",
    ],
)  # fmt: skip
def test_parse_duration_reads_gateway_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "1", "s", "1.5s", "-1s", "1us", "1d", "100000s", "1h1m1s1ms1h", " 1s"],
    ids=[
        "empty", "no unit", "no number", "a fraction", "negative", "microseconds", "days",
        "six digits", "five parts", "leading space",
    ],
)  # fmt: skip
def test_parse_duration_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("retry", "expected"),
    [
        ({"codes": [500, 502, 503], "attempts": 3, "backoff": "100ms"}, None),
        ({"codes": [399]}, "spec.rules[0].retry.codes[0]: must be 400-599"),
        ({"codes": [600]}, "spec.rules[0].retry.codes[0]: must be 400-599"),
        ({"codes": [503, 503]}, "spec.rules[0].retry.codes[1]: duplicate code 503 (codes[0])"),
        ({"attempts": 0}, "spec.rules[0].retry.attempts: must be 1-2147483647"),
        ({"backoff": "soon"}, "spec.rules[0].retry.backoff: must be a duration"),
    ],
    ids=[
        "valid",
        "code below 400",
        "code above 599",
        "code repeated",
        "zero attempts",
        "bad backoff",
    ],
)
def test_retry(retry: dict[str, Any], expected: str | None) -> None:
    if expected is None:
        _valid(_rule(retry=retry))
    else:
        errors = _errors(_rule(retry=retry))
        assert len(errors) == 1, errors
        assert errors[0].startswith(expected), errors


# --- Spec-wide rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostnames", "ok"),
    [
        (["example.com", "*.example.com", "echo"], True),
        (["*."], False),
        (["*example.com"], False),
        (["foo.*.example.com"], False),
        (["Example.com"], False),
        (["192.0.2.1"], False),
        ([f"h{i}.example.com" for i in range(17)], False),
    ],
    ids=[
        "names and a wildcard", "bare wildcard", "wildcard without a dot",
        "wildcard in the middle", "uppercase", "an IP address", "17 hostnames",
    ],
)  # fmt: skip
def test_hostnames(hostnames: list[str], ok: bool) -> None:
    obj = _route(hostnames=hostnames)
    if ok:
        _valid(obj)
    else:
        assert _errors(obj)[0].startswith("spec.hostnames")


def test_too_many_rules_and_matches_are_rejected() -> None:
    assert _errors(_route(rules=[{}] * 17)) == ["spec.rules: must have at most 16 items"]
    assert _errors(_route(rules=[])) == ["spec.rules: must have at least 1 item"]
    many = [{"path": {"value": f"/{i}"}} for i in range(65)]
    assert _errors(_route(rules=[{"matches": many}])) == [
        "spec.rules[0].matches: must have at most 64 items"
    ]
    rules = [{"matches": many[:64]}, {"matches": many[:64]}, {"matches": many[:1]}]
    assert _errors(_route(rules=rules)) == [
        "spec.rules: must have at most 128 matches in all (has 129)"
    ]


def test_rule_names_are_unique() -> None:
    assert _errors(_route(rules=[{"name": "a"}, {"name": "b"}, {"name": "a"}])) == [
        'spec.rules[2].name: duplicate name "a" (rules[0])'
    ]


@pytest.mark.parametrize(
    ("refs", "expected"),
    [
        ([ECHO, {**ECHO, "port": 81}], []),
        ([{**ECHO, "sectionName": "http"}, {**ECHO, "sectionName": "grpc"}], []),
        ([ECHO, {**ECHO, "name": "other"}], []),
        ([ECHO, ECHO], ["spec.parentRefs[1]: duplicate of parentRefs[0]"]),
        (
            [{**ECHO, "sectionName": "http"}, {**ECHO, "port": 80}],
            ["spec.parentRefs[1]: refers to the same parent as parentRefs[0]"],
        ),
        (
            [{**ECHO, "namespace": "shop"}, {**ECHO, "namespace": "shop"}],
            ["spec.parentRefs[1]: duplicate of parentRefs[0]"],
        ),
    ],
    ids=[
        "two ports of one Service", "two sections of one Service", "two Services",
        "one Service twice", "section on one ref, not the other", "same namespace twice",
    ],
)  # fmt: skip
def test_parent_refs_to_one_parent_must_be_distinct(
    refs: list[dict[str, Any]], expected: list[str]
) -> None:
    obj = _route(parentRefs=refs)
    if not expected:
        _valid(obj)
        return
    errors = _errors(obj)
    assert len(errors) == len(expected), errors
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(start), errors


def test_spec_is_required() -> None:
    obj = _route()
    del obj["spec"]
    assert _errors(obj) == ["spec: required"]
