"""Schema v1: defaults, short forms, and the message each kind of mistake produces (with its line)."""

from __future__ import annotations

import pytest

from xgate.config.load import parse_document
from xgate.config.types import parse_duration
from xgate.errors import ConfigError

HEADER = "listeners: [{name: public, port: 10000}]\nupstreams: [{name: app, endpoints: ['127.0.0.1:80']}]\n"


def issues_of(text: str) -> list[str]:
    """Object issues come back with the partial config; document issues are raised."""
    try:
        config = parse_document(text, "gw.yaml")
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    assert config.issues, "expected issues"
    return [str(issue) for issue in config.issues]


def test_short_forms_and_defaults() -> None:
    config = parse_document(HEADER + "routes: [{name: r, upstream: app}]\n", "gw.yaml")
    (route,) = config.routes
    assert route.match.path.prefix == "/"
    assert route.match.hosts == ("*",)
    (upstream,) = config.upstreams
    assert (upstream.endpoints[0].host, upstream.endpoints[0].port, upstream.endpoints[0].weight) == (
        "127.0.0.1",
        80,
        1,
    )
    assert upstream.connect_timeout == 1.0


@pytest.mark.parametrize(
    ("value", "seconds"), [("250ms", 0.25), ("1.5s", 1.5), ("2m", 120.0), (3, 3.0), ("1h", 3600.0)]
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "-1s", True, "5 parsecs", 100000])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ("- {name: r, upstream: app, upstrem: x}", "gw.yaml:4: route r field upstrem: unknown field"),
        ("- {name: r}", "gw.yaml:4: route r: action: set one of upstream, split, redirect, direct_response"),
        ("- {name: r, upstream: app, match: {path: {regex: 'a(?=b)'}}}", "invalid RE2 regex 'a(?=b)'"),
        ("- {name: r, upstream: app, match: {path: {prefix: api}}}", "path 'api' must start with '/'"),
        ("- {name: r, split: [{upstream: app, weight: 0}]}", "split: the weights add up to 0"),
        ("- {name: r, upstream: app, match: {hosts: ['a.*.com']}}", "a wildcard may only lead"),
        ("- {name: r, upstream: app, match: {methods: [FETCH]}}", "route r field match.methods.0"),
        ("- {name: 'bad name', upstream: app}", "route bad name field name: is not a valid name"),
        (
            "- {name: r, upstream: app, match: {headers: [{name: x, exact: a, regex: b}]}}",
            "header x: set exactly one of exact, prefix, regex, present (got exact, regex)",
        ),
        ("- {name: r, upstream: app, headers: {request: {remove: [host]}}}", "header 'host' cannot be changed"),
        ("- {name: r, upstream: app, headers: {request: {set: {':path': /x}}}}", "pseudo-headers cannot be changed"),
        ('- {name: r, upstream: app, headers: {response: {add: {x-a: "a\\r\\nb"}}}}', "contains CR, LF or NUL"),
        ("- {name: r, upstream: app, headers: {response: {add: {'bad name': a}}}}", "not a valid HTTP header name"),
    ],
)
def test_route_mistakes_are_located(routes: str, expected: str) -> None:
    assert any(expected in issue for issue in issues_of(HEADER + "routes:\n" + routes + "\n")), issues_of(
        HEADER + "routes:\n" + routes + "\n"
    )


def test_every_issue_is_listed_not_only_the_first() -> None:
    text = HEADER + "routes:\n- {name: a}\n- {name: b, upstream: app, timeout: later}\nextra: 1\n"
    issues = issues_of(text)
    assert len(issues) == 3
    assert any("document field extra: unknown section" in issue for issue in issues)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listeners: [\n", "gw.yaml:1: document: not valid YAML: unclosed bracket"),
        ("routes: []\nroutes: []\n", "gw.yaml:2: document: not valid YAML: duplicate mapping key: 'routes'"),
        ("a: &x [1]\nb: *x\nroutes: *x\n", "document field a: unknown section"),
        ("- just a list\n", "the top level must be a mapping"),
        ("xgate: v9\n", "unsupported version 'v9'"),
        ("routes: {name: r}\n", "document field routes: must be a list"),
    ],
)
def test_document_mistakes(text: str, expected: str) -> None:
    assert any(expected in issue for issue in issues_of(text)), issues_of(text)


def test_duplicate_names_are_refused() -> None:
    text = HEADER + "routes:\n- {name: r, upstream: app}\n- {name: r, upstream: app}\n"
    assert issues_of(text) == ["gw.yaml:5: route r field name: duplicate name: the first route r is at line 4"]


def test_empty_document_is_an_empty_config() -> None:
    config = parse_document("", "gw.yaml")
    assert (config.listeners, config.routes, config.upstreams) == ((), (), ())
