"""RouteTable keeps a big table in blocks; whatever the blocks, its bytes equal a fresh translation's."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from xgate.config.load import parse_document
from xgate.ir.build import precedence
from xgate.ir.model import ListenerIR, RouteIR
from xgate.pipeline import compile_config
from xgate.sortedblocks import BLOCK
from xgate.translate.route import translate_routes
from xgate.translate.routetable import RouteTable

NAMES = 6 * BLOCK  # enough routes for blocks to split, empty out and be dropped


def route(rng: random.Random, name: str, hosted: float) -> dict[str, object]:
    match: dict[str, object] = {"path": {"prefix": f"/p{rng.randint(0, 50)}"}}
    if rng.random() < hosted:
        match["hosts"] = [rng.choice(["a.example.com", "b.example.com"])]
    return {
        "name": name,
        "match": match,
        "priority": rng.choice([0, 0, 3]),
        "direct_response": {"status": 200, "body": "x" * rng.randint(0, 40)},
    }


def routes_document(rng: random.Random, names: list[str], hosted: float) -> str:
    lines = ["listeners: [{name: edge, port: 80}]", "routes:"]
    lines += [f"  - {route(rng, name, hosted)}" for name in names]
    return "\n".join(lines)


def reference(listener: ListenerIR, routes: dict[str, RouteIR]) -> bytes:
    ordered = sorted(routes.values(), key=lambda r: (*precedence(r.route), r.name))
    message = translate_routes(replace(listener, routes=tuple(ordered)))
    return bytes(message.SerializeToString(deterministic=True))


# Without hosts the table joins its blocks' bytes; with some, it picks routes per virtual host.
@pytest.mark.parametrize("hosted", [0.0, 0.2])
def test_blocks_split_and_empty_and_the_bytes_stay_exact(hosted: float) -> None:
    rng = random.Random(1127)
    # Every route this test will use, translated once: IR routes to put and take out at random.
    variants = [f"r{i}" for i in range(NAMES)]
    pool: dict[str, list[RouteIR]] = {name: [] for name in variants}
    for _ in range(3):
        compiled = compile_config(parse_document(routes_document(rng, variants, hosted), "t"))
        for ir in compiled.ir.listeners[0].routes:
            pool[ir.name].append(ir)
    listener = compiled.ir.listeners[0]
    table = RouteTable(listener.name, listener.filters)
    current: dict[str, RouteIR] = {}

    def check(step: str) -> None:
        assert table.assemble() == reference(listener, current), step
        in_order = sorted(current.values(), key=lambda r: (*precedence(r.route), r.name))
        assert [r.name for r in table.routes()] == [r.name for r in in_order], step

    def batch(adds: int, removes: int) -> None:
        for name in rng.sample(variants, adds):
            current[name] = rng.choice(pool[name])
            table.put(current[name])
        for name in rng.sample(sorted(current), min(removes, len(current))):
            del current[name]
            table.remove(name)

    for step in range(15):  # grow: blocks split
        batch(60, 5)
        check(f"growing, step {step}")
    assert len(current) > 4 * BLOCK
    assert max(len(block.keys) for block in table._blocks.blocks) <= 2 * BLOCK  # split, not one long block
    for step in range(150):  # one change at a time, as in a running control plane
        name = rng.choice(variants)
        if name in current and rng.random() < 0.5:
            del current[name]
            table.remove(name)
        else:
            current[name] = rng.choice(pool[name])
            table.put(current[name])
        check(f"single change {step}")
    for step in range(20):  # drain: blocks empty and go
        batch(5, 60)
        check(f"draining, step {step}")
    assert len(current) < BLOCK


def test_an_empty_table_assembles_an_empty_virtual_host() -> None:
    compiled = compile_config(parse_document("listeners: [{name: edge, port: 80}]", "t"))
    listener = compiled.ir.listeners[0]
    table = RouteTable(listener.name, listener.filters)
    assert table.assemble() == reference(listener, {})
