"""Envoy's route selection, offline: host wildcards and their order, ports, headers, query, and `xgate explain`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from typer.testing import CliRunner

from xgate.cli.main import app
from xgate.explain import ExplainError, parse_request
from xgate.translate.matching import MatchingError, Request, choose_virtual_host, header_matches, select


def _table(*domains: str) -> route_v3.RouteConfiguration:
    return route_v3.RouteConfiguration(
        virtual_hosts=[route_components_v3.VirtualHost(name=domain, domains=[domain]) for domain in domains],
        ignore_port_in_host_matching=True,
    )


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("a.example.com", "a.example.com"),
        ("A.Example.com:8080", "a.example.com"),  # case and port do not count
        ("b.x.example.com", "*.x.example.com"),  # the longest suffix wins
        ("b.example.com", "*.example.com"),
        ("example.com", "*"),  # a suffix wildcard needs something before the suffix
        ("api.example.org", "api.*"),  # suffix wildcards before prefix wildcards, then the longest prefix
        ("api.v2.example.com", "*.example.com"),
        ("other", "*"),
    ],
)
def test_virtual_host_order(authority: str, expected: str) -> None:
    table = _table("*", "api.*", "*.example.com", "a.example.com", "*.x.example.com")
    host = choose_virtual_host(table, authority)
    assert host is not None and host.name == expected


def test_no_default_host_means_no_route() -> None:
    assert choose_virtual_host(_table("a.example.com"), "b.example.com") is None


def _header(**fields: object) -> route_components_v3.HeaderMatcher:
    return route_components_v3.HeaderMatcher(name="x-a", **fields)


def test_header_matchers_on_present_and_missing_headers() -> None:
    exact = {"string_match": {"exact": "1"}}
    assert header_matches(_header(**exact), "1") and not header_matches(_header(**exact), "2")
    assert header_matches(_header(**exact, invert_match=True), "2")
    assert not header_matches(_header(**exact, invert_match=True), None)  # missing: never, even inverted
    assert header_matches(_header(present_match=False), None) and not header_matches(_header(present_match=True), None)
    assert header_matches(_header(present_match=True, invert_match=True), None)
    assert header_matches(_header(string_match={"safe_regex": {"regex": "[0-9]+"}}), "12")
    assert not header_matches(_header(string_match={"safe_regex": {"regex": "[0-9]+"}}), "12a")  # a full match
    with pytest.raises(MatchingError, match="ignore_case"):
        header_matches(_header(string_match={"exact": "a", "ignore_case": True}), "A")


def test_first_matching_route_wins_and_the_query_is_not_part_of_the_path() -> None:
    host = route_components_v3.VirtualHost(name="all", domains=["*"])
    for name, match in (
        ("exact", {"path": "/a"}),
        ("query", {"prefix": "/a", "query_parameters": [{"name": "q", "string_match": {"exact": "1"}}]}),
        ("prefix", {"prefix": "/a"}),
    ):
        host.routes.add(name=name, match=match)
    table = route_v3.RouteConfiguration(virtual_hosts=[host])
    names = [
        (selection.route.name if selection else None)
        for path in ("/a?q=1", "/ab?q=1", "/ab?q=2", "/b")
        for selection in [select(table, Request("GET", "h", path))]
    ]
    assert names == ["exact", "query", "prefix", None]


CONFIG = """
listeners: [{name: public, port: 10000}, {name: admin, port: 10001}]
upstreams: [{name: a, endpoints: ["127.0.0.1:8001", {host: 127.0.0.2, port: 8001, weight: 3}]}]
routes:
  - name: api
    listeners: [public]
    match: {hosts: ["*.example.com"], path: {prefix: /api}, headers: [{name: x-v, exact: "2"}]}
    upstream: a
    plugins: {cors: {allow_origins: ["https://app.example.com"]}}
  - {name: health, listeners: [admin], match: {path: {exact: /healthz}}, direct_response: {status: 200, body: ok}}
"""


def test_explain_on_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    runner = CliRunner()
    url = "http://shop.example.com:10000/api/users"
    result = runner.invoke(app, ["explain", "GET", url, "-H", "X-V: 2", "-f", str(config), "--json"])
    assert result.exit_code == 0, result.output
    explained = json.loads(result.output)
    assert explained["route"] == "api" and explained["listener"] == "public (port 10000)"
    assert explained["plugins"] == {"cors": {"allow_origins": ["https://app.example.com"]}}
    assert explained["upstreams"] == [
        {"cluster": "upstream/a", "upstream": "a", "endpoints": ["127.0.0.1:8001", "127.0.0.2:8001 weight 3"]}
    ]
    missed = runner.invoke(app, ["explain", "GET", url, "-f", str(config)])
    assert missed.exit_code == 1 and "404: no route matches" in missed.output
    other = runner.invoke(app, ["explain", "GET", "http://h:10001/healthz", "-f", str(config)])
    assert other.exit_code == 0 and "route: health" in other.output and "body: ok" in other.output
    ambiguous = runner.invoke(app, ["explain", "GET", "http://h/healthz", "-f", str(config)])
    assert ambiguous.exit_code == 2
    assert "2 listeners could take it; put one's port in the URL or name it with --listener" in ambiguous.output


def test_malformed_requests_are_named() -> None:
    with pytest.raises(ExplainError, match="give a full http:// or https:// URL"):
        parse_request("GET", "example.com/a", [])
    with pytest.raises(ExplainError, match="write it NAME:VALUE"):
        parse_request("GET", "http://example.com/a", ["x-v"])
    request = parse_request("get", "http://example.com/a?b=1", ["Host: other", "x-a: 1", "x-a: 2"])
    assert (request.method, request.authority, request.path, request.header("x-a")) == ("GET", "other", "/a?b=1", "1,2")


DYED = """
plugins:
  dyeing:
    rules:
      - {stage: canary, header: {name: x-canary, exact: "1"}}
      - {stage: beta, sticky: {percent: 100, key: {header: x-user}}}
listeners: [{name: public, port: 10000}]
upstreams:
  - {name: v1, endpoints: ["127.0.0.1:8001"]}
  - {name: v2, endpoints: ["127.0.0.1:8002"]}
  - {name: v3, endpoints: ["127.0.0.1:8003"]}
routes:
  - name: users
    match: {path: {prefix: /users}}
    upstream: v1
    canary: [{stage: canary, upstream: v2, fallback: false}, {stage: beta, upstream: v3, fallback: false}]
  - {name: plain, match: {path: {prefix: /plain}}, upstream: v1, plugins: {dyeing: false}}
"""


@pytest.mark.parametrize(
    ("headers", "stage", "by", "upstream"),
    [
        ([], "stable", "default", "v1"),
        (["x-canary: 1"], "canary", "rule 0", "v2"),
        (["x-user: ada"], "beta", "rule 1", "v3"),
        (["x-canary: 1", "x-user: ada"], "canary", "rule 0", "v2"),  # the first rule that matches wins
        (["x-xgate-stage: beta"], "stable", "default", "v1"),  # an untrusted client's stage is replaced
    ],
)
def test_explain_says_the_stage_the_rules_give_and_routes_by_it(
    tmp_path: Path, headers: list[str], stage: str, by: str, upstream: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(DYED)
    options = [option for header in headers for option in ("-H", header)]
    result = CliRunner().invoke(app, ["explain", "GET", "http://h:10000/users", *options, "-f", str(config), "--json"])
    assert result.exit_code == 0, result.output
    explained = json.loads(result.output)
    assert explained["stage"] == {"stage": stage, "by": by}
    assert [target["upstream"] for target in explained["upstreams"]] == [upstream]
    plain = CliRunner().invoke(app, ["explain", "GET", "http://h:10000/plain", "-H", "x-canary: 1", "-f", str(config)])
    assert plain.exit_code == 0 and "stage:" not in plain.output  # dyeing switched off on the route
