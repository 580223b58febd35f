"""The incremental compiler gives, byte for byte, what a full compile of the same config gives."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from xgate.config.load import parse_document
from xgate.config.schema import Route
from xgate.discovery import typeurls
from xgate.discovery.consistency import problems
from xgate.discovery.snapshot import build_snapshot
from xgate.incremental import IncrementalCompiler, route_changes
from xgate.pipeline import compile_config

BASE = """
plugins: {cors: {allow_origins: ["*"]}}
listeners: [{name: edge, port: 80}, {name: admin, address: 127.0.0.1, port: 81, plugins: {cors: false}}]
upstreams: [{name: a, endpoints: ["127.0.0.1:1"]}, {name: b, endpoints: ["127.0.0.1:2"]}]
routes:
  - {name: keep-cors, match: {path: {prefix: /cors}}, upstream: a, plugins: {rate_limit: {global: {requests: 9}}}}
"""


def random_route(rng: random.Random, name: str, canary: bool = False) -> dict[str, Any]:
    path = rng.choice(
        [
            {"prefix": f"/p{rng.randint(0, 30)}"},
            {"exact": f"/e{rng.randint(0, 30)}"},
            {"regex": f"^/r{rng.randint(0, 9)}/[0-9]+$"},
        ]
    )
    match: dict[str, Any] = {"path": path}
    if rng.random() < 0.3:
        match["hosts"] = rng.sample(["a.example.com", "b.example.com", "*.example.org"], rng.randint(1, 2))
    if rng.random() < 0.3:
        match["methods"] = ["POST"]
    if rng.random() < 0.2:
        match["headers"] = [{"name": "x-v", "exact": str(rng.randint(1, 3))}]
    route: dict[str, Any] = {"name": name, "match": match, "priority": rng.choice([0, 0, 0, 5])}
    if rng.random() < 0.15:
        route["upstream"] = "missing"  # a bad reference: lenient builds keep the last good version
    elif rng.random() < 0.2:
        route["direct_response"] = {"status": 200, "body": name}
    else:
        route["upstream"] = rng.choice(["a", "b"])
    if rng.random() < 0.2:
        route["listeners"] = [rng.choice(["edge", "admin"])]
    if rng.random() < 0.2:
        route["plugins"] = {"cors": {"allow_origins": [f"https://{name}.io"]}}
    if rng.random() < 0.1:
        route["plugins"] = {**route.get("plugins", {}), "dyeing": False}
    if rng.random() < 0.3:  # a global limit: a resource for the rate-limit service, changed with the route
        limit = {"requests": rng.randint(1, 100), "by": rng.choice(["route", "client_ip", "header:x-key"])}
        route["plugins"] = {**route.get("plugins", {}), "rate_limit": {"global": limit}}
    if canary and "upstream" in route and rng.random() < 0.2:
        # Canaries: most changes keep the fallback cluster (fast path), some add or drop one (full compile).
        route["canary"] = {"stage": "canary", "upstream": "b", "fallback": rng.random() < 0.5}
    return route


# Dyed: native rules on edge (each route becomes several Envoy routes), the ext_proc path on admin.
DYED = (
    BASE.replace(
        'plugins: {cors: {allow_origins: ["*"]}}',
        """plugins:
  cors: {allow_origins: ["*"]}
  dyeing:
    rules: [{stage: canary, header: {name: x-canary, present: true}}, {stage: beta, query: {name: b, exact: "1"}}]""",
    )
    .replace(
        "plugins: {cors: false}}",
        "plugins: {cors: false, dyeing: {rules: [{stage: canary, sticky: {percent: 5, key: {header: x-user}}}]}}}",
    )
    .replace('{name: b, endpoints: ["127.0.0.1:2"]}', '{name: b, endpoints: ["127.0.0.1:2"], health_check: {}}')
)


def serialized_routes(resources: Any) -> dict[str, bytes]:
    snapshot = build_snapshot(resources, "r", 1)
    return {name: resource.packed.value for name, resource in snapshot.resources[typeurls.ROUTE].items()}


def serialized_services(resources: Any) -> dict[tuple[str, str], bytes]:
    """The resources of xgate's services (here: the routes' global limits, dyeing settings), by type and name."""
    snapshot = build_snapshot(resources, "r", 1)
    return {
        (url, name): resource.data
        for url, found in snapshot.resources.items()
        if url not in typeurls.ENVOY_TYPES
        for name, resource in found.items()
    }


@pytest.mark.parametrize("text", [BASE, DYED], ids=["plain", "dyed"])
def test_random_route_changes_match_a_full_compile(text: str) -> None:
    rng = random.Random(20261127)
    base = parse_document(text, "t")
    assert not base.issues
    routes: dict[str, Route] = {r.name: r for r in base.routes}
    compiled = compile_config(base, "0", lenient=True)
    incremental = IncrementalCompiler()
    incremental.reset(base, compiled.ir, compiled.context, compiled.resources)
    served = {r.route.name: r.route for ir in compiled.ir.listeners for r in ir.routes}
    fast = 0
    for step in range(300):
        changes: dict[str, Route | None] = {}
        for _ in range(rng.randint(1, 3)):
            name = f"r{rng.randint(0, 40)}"
            if name in routes and rng.random() < 0.3:
                del routes[name]
                changes[name] = None
            else:
                routes[name] = Route.model_validate(random_route(rng, name, canary=text is DYED))
                changes[name] = routes[name]
        config = replace(base, routes=tuple(routes[name] for name in sorted(routes)))
        result = incremental.apply(config, changes)
        full = compile_config(config, str(step), lenient=True, fallback=served)
        served = {r.route.name: r.route for ir in full.ir.listeners for r in ir.routes}
        if result is None:  # needs a full compile (a filter appears or goes): take it, as the control plane does
            incremental.reset(config, full.ir, full.context, full.resources)
            continue
        fast += 1
        resources, issues = result
        assert serialized_routes(resources) == serialized_routes(full.resources), f"step {step}"
        assert serialized_services(resources) == serialized_services(full.resources), f"step {step}"
        assert problems(build_snapshot(resources, str(step), 1)) == [], f"step {step}"
        assert resources.clusters.keys() == full.resources.clusters.keys(), f"step {step}"
        assert sorted(map(str, issues)) == sorted(map(str, full.ir.issues)), f"step {step}"
        assert incremental.served == served
    assert fast > 200  # most changes took the fast path


def test_listener_or_upstream_changes_take_the_full_path() -> None:
    base = parse_document(BASE, "t")
    compiled = compile_config(base, "0", lenient=True)
    incremental = IncrementalCompiler()
    incremental.reset(base, compiled.ir, compiled.context, compiled.resources)
    other = parse_document(BASE.replace("127.0.0.1:2", "127.0.0.1:3"), "t")
    assert incremental.apply(other, {}) is None
    assert incremental.apply(replace(base, plugins={}), {}) is None


def test_strict_builds_refuse_a_bad_route_without_moving_anything() -> None:
    """A file is all or nothing: a bad route sends the revision to the full compile (which refuses it) and
    the next good revision still matches a full compile."""
    rng = random.Random(7)
    base = parse_document(BASE, "t")
    compiled = compile_config(base, "0")
    incremental = IncrementalCompiler()
    incremental.reset(base, compiled.ir, compiled.context, compiled.resources)
    routes: dict[str, Route] = {r.name: r for r in base.routes}
    for step in range(150):
        name = f"r{rng.randint(0, 30)}"
        candidate = random_route(rng, name)
        if candidate.get("upstream") == "missing":
            bad = Route.model_validate(candidate)
            config = replace(
                base,
                routes=(*routes.values(), bad)
                if name not in routes
                else tuple(bad if r.name == name else r for r in routes.values()),
            )
            assert incremental.apply(config, {name: bad}) is None, f"step {step}"
            continue
        routes[name] = Route.model_validate(candidate)
        config = replace(base, routes=tuple(routes.values()))
        result = incremental.apply(config, {name: routes[name]})
        full = compile_config(config, str(step))
        if result is None:
            incremental.reset(config, full.ir, full.context, full.resources)
            continue
        assert serialized_routes(result[0]) == serialized_routes(full.resources), f"step {step}"
        assert serialized_services(result[0]) == serialized_services(full.resources), f"step {step}"
        assert result[1] == []


def test_route_changes_by_identity() -> None:
    first = parse_document(BASE, "t")
    same = replace(first, routes=first.routes)
    assert route_changes(first, same) == {}
    new = Route.model_validate({"name": "n", "direct_response": {"status": 200}})
    assert route_changes(first, replace(first, routes=(new,))) == {"n": new, "keep-cors": None}
    assert route_changes(first, replace(first, plugins={})) is None
