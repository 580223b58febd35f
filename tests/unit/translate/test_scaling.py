"""Compiling costs what the config holds: 8 times the routes over 8 times the hosts (or upstreams) costs about 8
times as much, not 64 (50,000 routes over 5,000 hosts took 30 s to validate when each host looked at every route).

Timed in CPU time (what other processes do to the machine does not count), so judged by a ratio: the best of
three runs per size, and a bound (24) that a linear cost stays far below and a quadratic one (~64) far above.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from xgate.config.load import parse_document
from xgate.ir.build import build_ir
from xgate.translate.route import translate_routes
from xgate.translate.routetable import RouteTable

SMALL, FACTOR, BOUND = 1000, 8, 24


def document(routes: int, hosts: int, canaries: bool = False) -> str:
    upstreams = [{"name": f"u{n}", "endpoints": ["127.0.0.1:1"], "health_check": {}} for n in range(routes)]
    data = {
        "plugins": {"dyeing": {"rules": [{"stage": "canary", "header": {"name": "x-canary", "exact": "1"}}]}},
        "listeners": [{"name": "edge", "port": 80}],
        "upstreams": upstreams if canaries else upstreams[:1],
        "routes": [
            {
                "name": f"r{n}",
                "match": {"hosts": [f"h{n % hosts}.example.com"], "path": {"prefix": f"/r{n}"}},
                "upstream": "u0",
                **({"canary": {"stage": "canary", "upstream": f"u{n}"}} if canaries else {}),
            }
            for n in range(routes)
        ]
        + [{"name": "everywhere", "match": {"path": {"prefix": "/"}}, "upstream": "u0"}],
    }
    return json.dumps(data)


def ratio(work: Callable[[int], Callable[[], object]]) -> float:
    """How much longer the work takes at FACTOR times the size (best of three each)."""
    times = []
    for size in (SMALL, SMALL * FACTOR):
        run = work(size)
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            run()
            best = min(best, time.process_time() - started)
        times.append(best)
    return times[1] / times[0]


def test_a_route_table_costs_what_its_hosts_hold() -> None:
    def work(size: int) -> Callable[[], object]:
        [listener] = build_ir(parse_document(document(size, size // 2), "t")).listeners
        return lambda: translate_routes(listener)

    assert ratio(work) < BOUND


def test_an_assembled_route_table_costs_what_its_hosts_hold() -> None:
    def work(size: int) -> Callable[[], object]:
        [listener] = build_ir(parse_document(document(size, size // 2), "t")).listeners
        table = RouteTable(listener.name, listener.filters)
        for route in listener.routes:
            table.put(route)
        return table.assemble

    assert ratio(work) < BOUND


def test_canary_checks_cost_what_the_routes_hold() -> None:
    def work(size: int) -> Callable[[], object]:
        config = parse_document(document(size, 1, canaries=True), "t")
        return lambda: build_ir(config)

    assert ratio(work) < BOUND
