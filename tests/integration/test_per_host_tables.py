"""`route_tables: per_host` held to a real Envoy: the same routes on a one-table listener and a per_host listener
answer every request alike (but a Host in other letters, which only the one table matches), `xgate explain`
agrees with the per_host listener, and a route change makes Envoy re-read its host's table only.

The random matrix reuses the explain differential's vocabularies (seeded; the seed is in every failure message),
with exact hosts only: a per_host listener refuses routes for any host.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.integration.test_explain_differential import random_request, random_routes

from xgate.config.load import parse_document
from xgate.explain import explain, parse_request
from xgate.pipeline import compile_config
from xgate.proxy.process import EnvoyProcess
from xgate.sources.etcd.client import EtcdSettings
from xgate.sources.revision import revision_of
from xgate.testing import free_port, run_etcd, run_gateway
from xgate.translate import names

pytestmark = pytest.mark.integration

SEED = 2012
TABLES = 8
REQUESTS = 40
HOSTS = ["a.example.com", "b.example.com", "x.test"]
# Lower-case Hosts (with and without a port), one no route names; the one table also matches other letters.
REQUEST_HOSTS = ["a.example.com", "a.example.com:8080", "b.example.com", "x.test", "other.example.com"]


def config_text(one: int, split: int, routes: list[dict[str, Any]]) -> str:
    listeners = [
        {"name": "one", "address": "127.0.0.1", "port": one},
        {"name": "split", "address": "127.0.0.1", "port": split, "route_tables": "per_host"},
    ]
    return yaml.safe_dump({"listeners": listeners, "routes": routes})


def exact_host_routes(rng: random.Random) -> list[dict[str, Any]]:
    routes = random_routes(rng)
    for route in routes:
        route["match"]["hosts"] = rng.sample(HOSTS, rng.randint(1, 2))
    # A catch-all of a.example.com, so a request for A.EXAMPLE.COM always finds a route in the one table.
    routes.append({"name": "a-all", "match": {"hosts": ["a.example.com"]}, "direct_response": {"status": 200}})
    return routes


async def test_per_host_answers_as_the_one_table(work_dir: Path) -> None:
    rng = random.Random(SEED)
    one, split = free_port(), free_port()
    text = config_text(one, split, exact_host_routes(rng))
    compared = matched = 0
    async with run_gateway(text, work_dir) as gateway, httpx.AsyncClient(timeout=10) as client:
        for table in range(TABLES):
            if table:
                text = config_text(one, split, exact_host_routes(rng))
                await gateway.apply(text)
            compiled = compile_config(parse_document(text, "gateway.yaml"))
            listener = next(item for item in compiled.ir.listeners if item.name == "split")
            for _ in range(REQUESTS):
                method, _, headers = random_request(rng)
                host, path = rng.choice(REQUEST_HOSTS), headers.pop("path")
                answers = []
                for port in (one, split):
                    response = await client.request(
                        method, f"http://127.0.0.1:{port}{path}", headers={"host": host, **headers}
                    )
                    assert response.status_code in (200, 404), response.text
                    answers.append(response.text if response.status_code == 200 else None)
                request = parse_request(method, f"http://{host}{path}", [f"{k}:{v}" for k, v in headers.items()])
                expected = explain(compiled, request, listener)["route"]
                where = f"seed {SEED} table {table}: {method} {host}{path} headers {headers}"
                assert answers[0] == answers[1], f"{where}: one table {answers[0]}, per_host {answers[1]}\n{text}"
                assert answers[1] == (expected if expected != "a-all" else ""), f"{where}: explain says {expected}"
                compared += 1
                matched += answers[1] is not None
            # The difference the README states: Envoy matches scope keys exactly, virtual host domains in any case.
            other_case = [
                await client.get(f"http://127.0.0.1:{port}/", headers={"host": "A.Example.COM"})
                for port in (one, split)
            ]
            assert [r.status_code for r in other_case] == [200, 404]
            unknown = await client.get(f"http://127.0.0.1:{split}/", headers={"host": "other.example.com"})
            assert unknown.status_code == 404
    assert compared == TABLES * REQUESTS
    assert compared * 0.15 < matched < compared * 0.9, (matched, compared)


async def _updates(envoy: EnvoyProcess, stat: str = "config_reload") -> dict[str, int]:
    """How often Envoy rebuilt each per-host table, by route configuration name (config_reload counts a table
    that changed; a state-of-the-world response carries the listener's every table, and Envoy skips those whose
    hash did not change, which update_success would count too)."""
    _, body = await envoy.admin_get(f"/stats?filter=^http\\.split\\.rds\\..*\\.{stat}$")
    found = re.findall(rf"^http\.split\.rds\.(\S+)\.{stat}: (\d+)$", body, re.MULTILINE)
    return {name: int(count) for name, count in found}


def _route(host: str, body: str) -> dict[str, Any]:
    return {"name": host.split(".")[0], "match": {"hosts": [host]}, "direct_response": {"status": 200, "body": body}}


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_a_route_change_resends_only_its_hosts_table(work_dir: Path, delta: bool) -> None:
    one, split = free_port(), free_port()
    hosts = ["a.example.com", "b.example.com", "c.example.com"]
    routes = [_route(host, f"{host}-1") for host in hosts]
    text = config_text(one, split, routes)
    async with run_gateway(text, work_dir, envoys=0) as gateway, httpx.AsyncClient() as client:
        envoy = await gateway.start_envoy(delta=delta)
        await gateway.wait_synced(revision_of(text))
        table = {host: names.host_route_config("split", host) for host in [*hosts, "d.example.com"]}

        async def answer(host: str) -> tuple[int, str]:
            response = await client.get(f"http://127.0.0.1:{split}/", headers={"host": host})
            return response.status_code, response.text

        assert [await answer(host) for host in hosts] == [(200, f"{host}-1") for host in hosts]
        before, received = await _updates(envoy), await _updates(envoy, "update_success")
        assert set(before) == {table[host] for host in hosts}, before
        routes[1] = _route("b.example.com", "b.example.com-2")
        await gateway.apply(config_text(one, split, routes))
        assert await answer("b.example.com") == (200, "b.example.com-2")
        after = await _updates(envoy)
        assert after == {**before, table["b.example.com"]: before[table["b.example.com"]] + 1}, (before, after)
        if delta:  # and only that table was sent (state of the world sends the listener's every table)
            b = table["b.example.com"]
            assert await _updates(envoy, "update_success") == {**received, b: received[b] + 1}
        # A new host: a scope and a table of its own; the others are not sent again.
        routes.append(_route("d.example.com", "d.example.com-1"))
        await gateway.apply(config_text(one, split, routes))
        assert await answer("d.example.com") == (200, "d.example.com-1")
        added = await _updates(envoy)
        assert added == {**after, table["d.example.com"]: 1}, (after, added)
        assert (await answer("e.example.com"))[0] == 404
        # A host whose last route goes: its scope goes, and it is answered 404 as any unknown host.
        await gateway.apply(config_text(one, split, [r for r in routes if r["name"] != "c"]))
        assert (await answer("c.example.com"))[0] == 404
        assert await answer("a.example.com") == (200, "a.example.com-1")


def _stored(host: str, body: str) -> str:
    """A route as an etcd value (its name is its key's)."""
    return json.dumps({key: value for key, value in _route(host, body).items() if key != "name"})


async def _scopes(envoy: EnvoyProcess) -> int:
    """The scopes Envoy holds for the per_host listener (0 while it has one table)."""
    _, body = await envoy.admin_get("/stats?filter=^http\\.split\\.scoped_rds\\..*\\.active_scopes$")
    return sum(int(value) for value in re.findall(r": (\d+)$", body, re.MULTILINE))


async def test_from_etcd_a_switch_to_per_host_waits_for_exact_hosts(tmp_path: Path) -> None:
    """A route for any host served before the switch keeps the listener to one table (nothing that worked
    stops); once the route names its host, the listener gets its scopes; a new route for any host is refused."""
    split = free_port()
    listener = {"address": "127.0.0.1", "port": split}
    async with run_etcd(tmp_path / "etcd") as etcd:
        await etcd.put("/xgate/listener/split", json.dumps(listener))
        await etcd.put("/xgate/route/a", _stored("a.example.com", "a"))
        await etcd.put("/xgate/route/any", json.dumps({"direct_response": {"status": 200, "body": "any"}}))
        async with run_gateway(None, tmp_path / "gw", etcd=EtcdSettings(endpoints=tuple(etcd.endpoints))) as gateway:
            [envoy] = gateway.envoys

            async def answer(host: str) -> str:
                # A new connection each time: one opened before a listener change keeps the old listener's
                # table while Envoy drains it.
                async with httpx.AsyncClient() as fresh:
                    return (await fresh.get(f"http://127.0.0.1:{split}/", headers={"host": host})).text

            revision = await etcd.put("/xgate/listener/split", json.dumps(listener | {"route_tables": "per_host"}))
            await gateway.wait_etcd_revision(revision)
            assert await answer("other.example.com") == "any"  # still served, with one table
            assert await _scopes(envoy) == 0
            assert any("route any names no exact host" in issue for issue in gateway.plane.state.warnings)
            revision = await etcd.put("/xgate/route/any", _stored("b.example.com", "b"))
            await gateway.wait_etcd_revision(revision)
            assert await _scopes(envoy) == 2
            assert (await answer("b.example.com"), await answer("a.example.com")) == ("b", "a")
            revision = await etcd.put("/xgate/route/new", json.dumps({"direct_response": {"status": 200}}))
            await gateway.wait_etcd_revision(revision)
            assert any("route new field match.hosts" in issue for issue in gateway.plane.state.warnings)
            async with httpx.AsyncClient() as fresh:
                unknown = await fresh.get(f"http://127.0.0.1:{split}/", headers={"host": "c.example.com"})
            assert unknown.status_code == 404
