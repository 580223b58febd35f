"""Every validation message is in our words: no pydantic phrasing, one problem per mistake, with its line."""

from __future__ import annotations

import pytest

from xgate.config.load import parse_document
from xgate.errors import ConfigError
from xgate.pipeline import compile_config

HEADER = "listeners: [{name: public, port: 10000}]\nupstreams: [{name: app, endpoints: ['127.0.0.1:80']}]\n"
PYDANTIC_WORDS = ("Input should", "should be", "should have", "Tuple should", "String should", "Value error", "[key]")


def issues_of(text: str) -> list[str]:
    """Every issue of a document, from the loader and the IR (plugin settings) alike."""
    try:
        compile_config(parse_document(text, "gw.yaml"))
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    raise AssertionError("expected issues")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listeners: [{name: l, port: 70000}]", "gw.yaml:1: listener l field port: must be at most 65535"),
        ("listeners: [{name: l, port: 1.5}]", "listener l field port: must be a whole number"),
        ("listeners: [{name: l, port: '80x'}]", "listener l field port: must be a whole number"),
        ("upstreams: [{name: u, endpoints: '127.0.0.1:1'}]", "upstream u field endpoints: must be a list"),
        ("upstreams: [{name: u, endpoints: []}]", "upstream u field endpoints: must not be empty"),
        ("upstreams: [{name: u, endpoints: ['a:1'], protocol: h3}]", "field protocol: must be 'http1' or 'http2'"),
        ("routes: [{name: r, upstream: app, retries: 5}]", "route r field retries: must be a mapping"),
        ("routes: [{name: r, upstream: 5}]", "route r field upstream: must be a string"),
        ("routes: [{name: r, upstream: app, canary: [{stage: s}]}]", "route r field canary.0.upstream: is required"),
        ("routes: [{name: 'a b', upstream: app}]", "route a b field name: is not a valid name: letters, digits"),
        (
            "routes: [{name: r, upstream: app, match: {methods: [FETCH]}}]",
            "route r field match.methods.0: must be 'GET', 'HEAD', 'POST'",
        ),
        (
            "routes: [{name: r, direct_response: {status: 200, body: '" + "x" * 5000 + "'}}]",
            "route r field direct_response.body: must be at most 4096 characters long",
        ),
        (
            "plugins: {rate_limit: {local: {requests: 0}}}",
            "gw.yaml:1: document field plugins.rate_limit.local.requests: must be at least 1",
        ),
        (
            "plugins: {policy: {policies: {'bad name': 'm:f'}}}",
            "document field plugins.policy.policies.bad name: is not a valid name",
        ),
        ("plugins: {dyeing: {trust: some}}", "plugins.dyeing.trust: must be 'none' or 'all', or a list"),
        ("plugins: {dyeing: {trust: [10.0.0.0/33]}}", "plugins.dyeing.trust.0: '33' is not a valid netmask"),
        ("plugins: {dyeing: {trust: [[1]]}}", "plugins.dyeing.trust.0: must be a string"),
        (
            "plugins:\n  dyeing:\n    rules:\n      - {stage: s, claim: {name: g, equals: [1]}}\n",
            "gw.yaml:4: document field plugins.dyeing.rules.0.claim.equals: must be a string, a whole number, or "
            "true or false",
        ),
        (
            "plugins: {jwt: {providers: [{name: a, jwks: 5, issuer: i}]}}",
            "plugins.jwt.providers.0.jwks: must be a mapping",
        ),
        (
            "routes: [{name: r, upstream: app, plugins: {cors: {max_age: 3}, rate_limit: {local: {requests: x}}}}]",
            "route r field plugins.rate_limit.local.requests: must be a whole number",
        ),
    ],
)
def test_each_mistake_has_one_message_in_our_words(text: str, expected: str) -> None:
    issues = issues_of(HEADER + text if text.startswith("routes") else text)
    assert any(expected in issue for issue in issues), issues
    for issue in issues:
        assert not any(words in issue for words in PYDANTIC_WORDS), issue


def test_one_bad_endpoint_is_one_issue() -> None:
    """The list is not also 'too short': its only item failed, and that is the one problem."""
    text = "upstreams:\n  - name: u\n    endpoints:\n      - 127.0.0.1\n"
    assert issues_of(text) == ["gw.yaml:4: upstream u field endpoints.0: endpoint '127.0.0.1' is not host:port"]
    text = "upstreams:\n  - name: u\n    endpoints:\n      - {host: a, port: x}\n"
    assert issues_of(text) == ["gw.yaml:4: upstream u field endpoints.0.port: must be a whole number"]


def test_a_duplicate_name_says_where_the_first_one_is() -> None:
    routes = "routes:\n  - {name: r, upstream: app}\n  - {name: s, upstream: app}\n  - {name: r, upstream: app}\n"
    text = HEADER + routes
    assert issues_of(text) == ["gw.yaml:6: route r field name: duplicate name: the first route r is at line 4"]


def test_plugin_settings_issues_point_at_their_own_line() -> None:
    text = "plugins:\n  cors: {allow_origins: ['*']}\n  rate_limit:\n    local:\n      requests: 0\n"
    assert issues_of(text) == ["gw.yaml:5: document field plugins.rate_limit.local.requests: must be at least 1"]
