"""`route_tables: per_host`: one RouteConfiguration per host, the same routes as the one table gives that host, kept
byte for byte equal to a full compile by the incremental compiler, which re-assembles only the touched hosts."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2 as route_v3

from xgate.config.load import parse_document
from xgate.config.schema import Route
from xgate.discovery.consistency import problems
from xgate.discovery.snapshot import build_snapshot
from xgate.errors import ConfigError
from xgate.explain import explain, parse_request
from xgate.incremental import IncrementalCompiler
from xgate.pipeline import compile_config
from xgate.translate import names

from .test_incremental import serialized_routes

BASE = """
listeners:
  - {name: edge, port: 80, route_tables: per_host}
  - {name: plain, port: 81}
upstreams: [{name: a, endpoints: ["127.0.0.1:1"]}]
routes:
  - {name: home, match: {hosts: [a.example.com, b.example.com]}, direct_response: {status: 200, body: home}}
  - {name: api, match: {hosts: [a.example.com], path: {prefix: /api}}, upstream: a}
"""
HOSTS = ["a.example.com", "b.example.com", "c.example.com"]


def test_each_host_gets_the_virtual_host_the_one_table_gives_it() -> None:
    split = compile_config(parse_document(BASE, "t"))
    one = compile_config(parse_document(BASE.replace(", route_tables: per_host", ""), "t"))
    tables = {name: split.resources.route_config(name) for name in split.resources.routes}
    assert sorted(tables) == [*(names.host_route_config("edge", h) for h in HOSTS[:2]), names.route_config("plain")]
    whole = one.resources.route_config(names.route_config("edge"))
    by_host = {host.domains[0]: host for host in whole.virtual_hosts}
    for host in HOSTS[:2]:
        table = tables[names.host_route_config("edge", host)]
        assert table.ignore_port_in_host_matching
        assert list(table.virtual_hosts) == [by_host[host]]
    assert not by_host["*"].routes  # nothing left for other hosts: per_host answers them 404 too


def test_a_route_for_any_host_is_refused_on_a_per_host_listener() -> None:
    text = BASE + "  - {name: anyhost, match: {path: {prefix: /x}}, upstream: a}\n"
    with pytest.raises(ConfigError) as error:
        compile_config(parse_document(text, "t"))
    [issue] = error.value.issues
    assert (issue.obj, issue.field) == ("route anyhost", "match.hosts")
    assert "listener edge" in issue.message and "per_host" in issue.message and "'*'" in issue.message
    wildcard = BASE + "  - {name: wild, match: {hosts: ['*.example.com']}, upstream: a}\n"
    with pytest.raises(ConfigError, match=r"\*\.example\.com"):
        compile_config(parse_document(wildcard, "t"))
    # Kept to the other listener it is fine; lenient (etcd) leaves a new such route out and says why.
    compile_config(parse_document(text.replace("prefix: /x}}", "prefix: /x}}, listeners: [plain]"), "t"))
    lenient = compile_config(parse_document(text, "t"), lenient=True)
    assert [str(issue.obj) for issue in lenient.ir.issues] == ["route anyhost"]
    assert all(r.name != "anyhost" for listener in lenient.ir.listeners for r in listener.routes)


def test_from_etcd_switching_to_per_host_keeps_one_table_while_served_routes_need_it() -> None:
    """Bad input changes nothing that worked: a route for any host served on the listener before the switch holds
    the listener to one table (and says so) until the route names its hosts."""
    one = BASE.replace(", route_tables: per_host", "") + "  - {name: anyhost, upstream: a}\n"
    before = compile_config(parse_document(one, "t"), lenient=True)
    served = {r.route.name: r.route for listener in before.ir.listeners for r in listener.routes}
    held = BASE + "  - {name: anyhost, upstream: a}\n"
    switched = compile_config(parse_document(held, "t"), lenient=True, fallback=served)
    [issue] = switched.ir.issues
    assert (issue.obj, issue.field) == ("listener edge", "route_tables")
    assert "route anyhost names no exact host" in issue.message and "kept to one table" in issue.message
    assert names.route_config("edge") in switched.resources.routes  # one table, with the route for any host
    edge = next(listener for listener in switched.ir.listeners if listener.name == "edge")
    assert "anyhost" in {r.name for r in edge.routes}
    fixed = BASE + "  - {name: anyhost, match: {hosts: [c.example.com]}, upstream: a}\n"
    after = compile_config(parse_document(fixed, "t"), lenient=True, fallback=served)
    assert not after.ir.issues
    assert names.host_route_config("edge", "c.example.com") in after.resources.routes
    # The incremental compiler leaves a held listener to full compiles: the next change may be the one.
    incremental = IncrementalCompiler()
    config = parse_document(held, "t")
    incremental.reset(config, switched.ir, switched.context, switched.resources)
    assert incremental.apply(config, {}) is None


def test_a_second_per_host_listener_is_refused_and_from_etcd_keeps_one_table() -> None:
    text = BASE.replace("{name: plain, port: 81}", "{name: plain, port: 81, route_tables: per_host}")
    with pytest.raises(ConfigError, match="only one listener may have route_tables: per_host, and listener edge"):
        compile_config(parse_document(text, "t"))
    lenient = compile_config(parse_document(text, "t"), lenient=True)
    assert [(issue.obj, issue.field) for issue in lenient.ir.issues] == [("listener plain", "route_tables")]
    # Still served, as before the change: one table; the first per_host listener keeps its tables.
    assert names.route_config("plain") in lenient.resources.routes
    assert names.host_route_config("edge", "a.example.com") in lenient.resources.routes


def test_explain_answers_as_the_scopes_do() -> None:
    compiled = compile_config(parse_document(BASE, "t"))
    edge = next(listener for listener in compiled.ir.listeners if listener.name == "edge")
    for host, route in [
        ("a.example.com", "api"),
        ("a.example.com:8080", "api"),
        ("b.example.com", "home"),
        ("c.example.com", None),
    ]:
        assert explain(compiled, parse_request("GET", f"http://{host}/api", []), edge)["route"] == route
    # A scope key is matched exactly: a Host in other letters finds no table (the one table matches it).
    answer = explain(compiled, parse_request("GET", "http://A.example.com/api", []), edge)
    assert answer["route"] is None and "no host 'A.example.com'" in answer["answer"]


def _random_route(rng: random.Random, name: str) -> dict[str, Any]:
    match: dict[str, Any] = {
        "path": rng.choice([{"prefix": f"/p{rng.randint(0, 9)}"}, {"exact": f"/e{rng.randint(0, 9)}"}])
    }
    match["hosts"] = rng.sample(HOSTS, rng.randint(1, 2))
    if rng.random() < 0.05:
        match["hosts"] = ["*"]  # refused on edge: lenient keeps its last good version or leaves it out
    route: dict[str, Any] = {"name": name, "match": match, "priority": rng.choice([0, 0, 3])}
    route["direct_response"] = {"status": 200, "body": f"{name}-{rng.randint(0, 99)}"}
    if rng.random() < 0.3:
        route["listeners"] = [rng.choice(["edge", "plain"])]
    return route


def test_incremental_per_host_equals_a_full_compile_and_reassembles_only_touched_hosts() -> None:
    rng = random.Random(2026_12_04)
    base = parse_document(BASE, "t")
    routes: dict[str, Route] = {r.name: r for r in base.routes}
    compiled = compile_config(base, "0", lenient=True)
    incremental = IncrementalCompiler()
    incremental.reset(base, compiled.ir, compiled.context, compiled.resources)
    served = {r.route.name: r.route for ir in compiled.ir.listeners for r in ir.routes}
    previous: Mapping[str, object] = {}
    fast = kept = 0
    for step in range(200):
        name = f"r{rng.randint(0, 30)}"
        before = served.get(name)
        routes[name] = Route.model_validate(_random_route(rng, name))
        config = replace(base, routes=tuple(routes[n] for n in sorted(routes)))
        result = incremental.apply(config, {name: routes[name]})
        full = compile_config(config, str(step), lenient=True, fallback=served)
        served = {r.route.name: r.route for ir in full.ir.listeners for r in ir.routes}
        if result is None:  # a host appeared or went: the listener's scopes change, a full compile
            incremental.reset(config, full.ir, full.context, full.resources)
            previous = {}  # (reset keeps its own bytes: compare from the next fast change on)
            continue
        fast += 1
        resources, issues = result
        assert serialized_routes(resources) == serialized_routes(full.resources), f"step {step}"
        assert problems(build_snapshot(resources, str(step), 1)) == [], f"step {step}"
        assert sorted(map(str, issues)) == sorted(map(str, full.ir.issues)), f"step {step}"
        # The tables of hosts the change did not touch are the very bytes sent before: not assembled again.
        hosts = set(before.match.hosts if before else ()) | set(served[name].match.hosts if name in served else ())
        for table, data in resources.routes.items():
            untouched = table.rpartition("/")[2] not in hosts
            if table.startswith(names.host_route_config("edge", "")) and untouched and table in previous:
                assert data is previous.get(table), f"step {step}: {table} was assembled again"
                kept += 1
        previous = resources.routes
    assert fast > 100 and kept > 100


def test_consistency_reports_a_scope_whose_table_is_not_served() -> None:
    resources = compile_config(parse_document(BASE, "t")).resources
    missing = names.host_route_config("edge", "b.example.com")
    del resources.routes[missing]
    assert problems(build_snapshot(resources, "r", 1)) == [
        f"scope {missing} names route config {missing}, which is not served"
    ]


def test_route_configuration_names_say_their_listener_and_host() -> None:
    name = names.host_route_config("edge", "a.example.com")
    assert names.route_config_listener(name) == names.route_config_listener(names.route_config("edge")) == "edge"
    assert names.origin(name) == "routes of listener edge for host a.example.com"
    assert route_v3.RouteConfiguration(name=name).name == "routes/edge/a.example.com"
