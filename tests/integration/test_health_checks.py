"""Active health checks against real nginx upstreams: a dead endpoint is ejected, a canary falls back and
comes back. nginx answers 400 to a malformed Host header, as production servers do."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from xgate.testing import NginxProcess, free_port, run_gateway, run_nginx
from xgate.testing.faults import endpoint_health
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration

CHECK = "{path: /healthz, interval: 100ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 1}"


async def answers(client: httpx.AsyncClient, url: str, count: int, **headers: str) -> list[str]:
    """Who answered each of `count` requests (the nginx's name, or the status for an error)."""
    names = []
    for _ in range(count):
        response = await client.get(url, headers=headers)
        names.append(response.text.strip() if response.status_code == 200 else str(response.status_code))
    return names


async def test_a_dead_endpoint_is_ejected_and_traffic_stops_going_to_it(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(run_nginx(tmp_path, "a"))
        b = await stack.enter_async_context(run_nginx(tmp_path, "b"))
        picky = await stack.enter_async_context(run_nginx(tmp_path, "picky"))
        named = await stack.enter_async_context(run_nginx(tmp_path, "named"))
        port = free_port()
        config = f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - {{name: app, endpoints: ["{a.address}", "{b.address}"], health_check: {CHECK}}}
  - name: picky
    endpoints: ["{picky.address}"]
    health_check: {{path: /healthz, interval: 100ms, unhealthy_threshold: 1, expected_statuses: [204]}}
  - name: named
    endpoints: ["{named.address}"]
    health_check: {{path: /healthz, interval: 100ms, host: app.example.com}}
routes:
  - {{name: picky, match: {{path: {{prefix: /picky}}}}, upstream: picky}}
  - {{name: named, match: {{path: {{prefix: /named}}}}, upstream: named}}
  - {{name: app, upstream: app}}
"""
        gateway = await stack.enter_async_context(run_gateway(config, tmp_path / "gw"))
        envoy = gateway.envoys[0]
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        url = f"http://127.0.0.1:{port}/"

        async def health_is(cluster: str, expected: dict[str, set[str]]) -> bool:
            return await endpoint_health(envoy, cluster) == expected

        # nginx accepts the checks' Host (each endpoint's host:port, or the upstream's `host`): all healthy.
        everyone: dict[str, set[str]] = {a.address: set(), b.address: set()}
        await wait_for(lambda: health_is("upstream/app", everyone), 10, "both app endpoints healthy")
        await wait_for(lambda: health_is("upstream/named", {named.address: set()}), 10, "named healthy")
        # A 200 where only 204 counts as healthy: expected_statuses reached Envoy.
        failed = {picky.address: {"failed_active_health_check"}}
        await wait_for(lambda: health_is("upstream/picky", failed), 10, "picky unhealthy")
        assert set(await answers(client, url, 20)) == {"a", "b"}

        await a.stop()
        gone = {a.address: {"failed_active_health_check"}, b.address: set()}
        await wait_for(lambda: health_is("upstream/app", gone), 10, "the dead endpoint ejected")
        assert await answers(client, url, 50) == ["b"] * 50


async def test_canary_falls_back_while_its_upstream_is_down_and_comes_back(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        stable = await stack.enter_async_context(run_nginx(tmp_path, "stable"))
        canary: NginxProcess = await stack.enter_async_context(run_nginx(tmp_path, "canary"))
        port = free_port()
        config = f"""
plugins:
  dyeing: {{rules: [{{stage: canary, header: {{name: x-canary, exact: "1"}}}}]}}
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - {{name: stable, endpoints: ["{stable.address}"]}}
  - {{name: next, endpoints: ["{canary.address}"], health_check: {CHECK}}}
routes:
  - {{name: users, upstream: stable, canary: {{stage: canary, upstream: next}}}}
"""
        await stack.enter_async_context(run_gateway(config, tmp_path / "gw"))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        url = f"http://127.0.0.1:{port}/users"

        async def dyed_go_to(name: str) -> bool:
            return await answers(client, url, 5, **{"x-canary": "1"}) == [name] * 5

        await wait_for(lambda: dyed_go_to("canary"), 10, "dyed requests to reach the canary")
        assert await answers(client, url, 10) == ["stable"] * 10  # undyed requests: stable

        await canary.stop()
        await wait_for(lambda: dyed_go_to("stable"), 10, "dyed requests to fall back to stable")
        assert await answers(client, url, 20, **{"x-canary": "1"}) == ["stable"] * 20

        await canary.start()  # the same port again
        await wait_for(lambda: dyed_go_to("canary"), 10, "dyed requests to come back to the canary")
