"""HTTPRoute matching and filters, case by case from the Gateway API specification."""

from __future__ import annotations

import random

import pytest

from gossamer.proxy.policy.routematch import (
    EXACT,
    PREFIX,
    CompiledHeaderEdit,
    CompiledRule,
    Router,
    path_matches,
    redirect_location,
    replace_prefix,
)
from gossamer.translate.routetypes import (
    BackendTarget,
    HeaderEdit,
    HeaderMatchSpec,
    MatchSpec,
    PathModifierSpec,
    RedirectSpec,
    RuleSpec,
    ServiceRoutes,
)

# PathPrefix is element-wise, and a trailing "/" in the prefix is ignored (spec:
# "/abc", "/abc/" and "/abc/def" match the prefix "/abc", "/abcd" does not).
PREFIX_CASES = [
    ("/abc", "/abc", True),
    ("/abc", "/abc/", True),
    ("/abc", "/abc/def", True),
    ("/abc", "/abcd", False),
    ("/abc/", "/abc", True),
    ("/abc/", "/abc/def", True),
    ("/abc/", "/abcd", False),
    ("/", "/", True),
    ("/", "/anything/at/all", True),
    ("/v1/api", "/v1", False),
    ("/v1/api", "/v1/api/x", True),
    ("/Abc", "/abc", False),
]


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    PREFIX_CASES,
    ids=[f"{p} {'matches' if e else 'does not match'} {path}" for p, path, e in PREFIX_CASES],
)
def test_path_prefix_matches_whole_path_elements(prefix: str, path: str, expected: bool) -> None:
    value = prefix.encode().rstrip(b"/")
    assert path_matches(PREFIX, value, path.encode(), None) is expected


def test_exact_path_matches_only_the_same_path() -> None:
    assert path_matches(EXACT, b"/foo", b"/foo", None)
    assert not path_matches(EXACT, b"/foo", b"/foo/", None)
    assert not path_matches(EXACT, b"/foo", b"/Foo", None)


# The spec's ReplacePrefixMatch table, row by row.
REPLACE_PREFIX = [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
]


@pytest.mark.parametrize(
    ("path", "prefix", "replacement", "expected"),
    REPLACE_PREFIX,
    ids=[f"{p} with prefix {m} replaced by {r!r} is {e}" for p, m, r, e in REPLACE_PREFIX],
)
def test_replace_prefix_match_follows_the_spec_table(
    path: str, prefix: str, replacement: str, expected: str
) -> None:
    assert replace_prefix(path, prefix, replacement) == expected


REDIRECTS = [
    (RedirectSpec(), "echo.shop", "/a", "", 80, "http://echo.shop/a"),
    (RedirectSpec(), "echo.shop:8080", "/a", "q=1", 8080, "http://echo.shop:8080/a?q=1"),
    (RedirectSpec(scheme="https"), "echo.shop", "/a", "", 80, "https://echo.shop/a"),
    (RedirectSpec(scheme="https", port=8443), "echo", "/a", "", 80, "https://echo:8443/a"),
    (RedirectSpec(hostname="other.shop"), "echo.shop:80", "/", "", 80, "http://other.shop/"),
    (RedirectSpec(port=80), "echo", "/", "", 9000, "http://echo/"),
    (
        RedirectSpec(path=PathModifierSpec("ReplaceFullPath", "/new")),
        "echo",
        "/old/x",
        "a=b",
        80,
        "http://echo/new?a=b",
    ),
    (
        RedirectSpec(path=PathModifierSpec("ReplacePrefixMatch", "/v2")),
        "echo",
        "/v1/items",
        "",
        80,
        "http://echo/v2/items",
    ),
]


@pytest.mark.parametrize(
    ("spec", "host", "path", "query", "port", "location"),
    REDIRECTS,
    ids=[
        "defaults keep scheme, host and path",
        "the request port is kept when it is not the scheme's",
        "https redirects go to 443, left out of Location",
        "an explicit port is written",
        "hostname replaces the Host without its port",
        "the well-known port of the scheme is left out",
        "ReplaceFullPath keeps the query",
        "ReplacePrefixMatch swaps the matched prefix",
    ],
)
def test_redirect_location_is_exact(
    spec: RedirectSpec, host: str, path: str, query: str, port: int, location: str
) -> None:
    assert redirect_location(spec, host, path, query, port, "/v1") == location


def test_header_modifier_sets_adds_and_removes_as_the_spec_says() -> None:
    edit = CompiledHeaderEdit(
        HeaderEdit(set=(("X-Set", "new"),), add=(("my-header", "bar"),), remove=("x-gone",))
    )
    out = edit.apply([(b"x-set", b"old"), (b"My-Header", b"foo"), (b"X-Gone", b"1")])
    assert out == [(b"My-Header", b"foo,bar"), (b"X-Set", b"new")]
    assert edit.apply([]) == [(b"X-Set", b"new"), (b"my-header", b"bar")]


def _router(*matches: MatchSpec, rules: int = 4) -> Router[str]:
    specs = tuple(
        RuleSpec(route="shop/r", index=i, backends=(BackendTarget(f"b{i}.shop", 80),))
        for i in range(rules)
    )
    sr = ServiceRoutes("echo.shop", 80, tuple(matches), specs, ("shop/r",))
    return Router(sr, lambda service, port: service)


def _winner(router: Router[str], target: str, method: str = "GET", **headers: str) -> int | None:
    found = router.match(
        method.encode(),
        target.encode(),
        b"echo.shop",
        [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    )
    return None if found is None else found.spec.rule


def test_a_request_takes_the_first_match_that_fits_and_none_means_no_rule() -> None:
    router = _router(
        MatchSpec(rule=0, index=0, path_type="Exact", path="/v1"),
        MatchSpec(
            rule=1, index=0, path="/v1", headers=(HeaderMatchSpec("Exact", "x-canary", "1"),)
        ),
        MatchSpec(rule=2, index=0, path="/v1", method="POST"),
        MatchSpec(rule=3, index=0, path_type="RegularExpression", path="/items/[0-9]+"),
    )
    assert _winner(router, "/v1") == 0
    assert _winner(router, "/v1/x", x_canary="1") == 1
    assert _winner(router, "/v1/x", X_Canary="1") == 1  # header names without case
    assert _winner(router, "/v1/x", x_canary="2") is None
    assert _winner(router, "/v1/x", "POST") == 2
    assert _winner(router, "/items/42?x=1") == 3
    assert _winner(router, "/items/42x") is None  # the whole path must match
    assert _winner(router, "/other") is None


def test_query_parameters_match_by_exact_name_and_first_value() -> None:
    router = _router(
        MatchSpec(rule=0, index=0, query=(HeaderMatchSpec("Exact", "v", "2"),)),
        MatchSpec(rule=1, index=0, query=(HeaderMatchSpec("RegularExpression", "id", "[a-f]+"),)),
        MatchSpec(rule=2, index=0),
    )
    assert _winner(router, "/?v=2") == 0
    assert _winner(router, "/?V=2") == 2
    assert _winner(router, "/?v=2&v=3") == 0
    assert _winner(router, "/?v=3&v=2") == 2
    assert _winner(router, "/?id=beef") == 1
    assert _winner(router, "/?id=beefy") == 2


def test_weighted_backends_split_by_weight_and_zero_weight_gets_nothing() -> None:
    spec = RuleSpec(
        route="shop/r",
        index=0,
        backends=(
            BackendTarget("a.shop", 80, weight=90),
            BackendTarget("b.shop", 80, weight=10),
            BackendTarget("c.shop", 80, weight=0),
        ),
    )
    rule: CompiledRule[str] = CompiledRule(spec, lambda s, p: s, random.Random(7))
    picks = [rule.pick() for _ in range(10_000)]
    shares = {
        name: sum(1 for b in picks if b is not None and b.target == f"{name}.shop")
        for name in "abc"
    }
    assert 8_800 <= shares["a"] <= 9_200
    assert shares["c"] == 0
    none: CompiledRule[str] = CompiledRule(
        RuleSpec("shop/r", 0, backends=(BackendTarget("a.shop", 80, weight=0),)),
        lambda s, p: s,
        random.Random(1),
    )
    assert none.pick() is None  # all weights 0: the proxy answers 500
