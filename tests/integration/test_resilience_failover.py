"""Failover through a real Envoy to real nginx upstreams (issue 15): backups serve while every primary is down,
a split never sends a share to a dead target, health and ejections survive config changes, and only
idempotent requests are retried once they may have reached the upstream."""

from __future__ import annotations

import asyncio
import functools
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from xgate.proxy.process import EnvoyProcess
from xgate.testing import free_port, run_gateway, run_nginx
from xgate.testing.faults import counters, endpoint_health, steady_load
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration

CHECK = "{path: /healthz, interval: 250ms, timeout: 1s, unhealthy_threshold: 2}"


async def _healthy(envoy: EnvoyProcess, cluster: str, addresses: list[str]) -> bool:
    health = await endpoint_health(envoy, cluster)
    return all(address in health and not health[address] for address in addresses)


async def test_backups_serve_while_every_primary_is_down_and_traffic_returns(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        one, two, backup = [await stack.enter_async_context(run_nginx(tmp_path, n)) for n in ("one", "two", "backup")]
        port = free_port()
        config = f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - name: app
    endpoints: ["{one.address}", "{two.address}", {{host: 127.0.0.1, port: {backup.port}, priority: 1}}]
    health_check: {CHECK}
routes:
  - {{name: app, upstream: app, retries: {{retry_on: [gateway-error, reset, connect-failure]}}}}
"""
        gateway = await stack.enter_async_context(run_gateway(config, tmp_path / "gw"))
        envoy = gateway.envoys[0]
        addresses = [one.address, two.address, backup.address]
        await wait_for(lambda: _healthy(envoy, "upstream/app", addresses), 10, "every endpoint healthy")
        loop = asyncio.get_running_loop()
        load = await stack.enter_async_context(steady_load("127.0.0.1", port, "/", rate=250))
        await load.wait_answers(200)
        assert set(load.served_by()) == {"one", "two"}  # the backup takes nothing while the primaries are up

        down = loop.time()
        await one.kill()
        await two.kill()

        def recent() -> dict[str, int]:
            return load.served_by(loop.time() - 0.2)

        await wait_for(lambda: set(recent()) == {"backup"} and recent()["backup"] > 20, 10, "the backup serving all")
        moved = loop.time()
        await one.start()
        await two.start()
        restarted = loop.time()
        await wait_for(lambda: {"one", "two"} <= set(recent()), 15, "traffic back on the primaries")
        returned = loop.time()
        await load.wait_answers(100, since=returned + 0.3)
        load.stopped.set()
        print(
            f"\nprimaries down -> backup serves all {1000 * (moved - down):.0f} ms; primaries up -> traffic back "
            f"{1000 * (returned - restarted):.0f} ms; answers {len(load.answers)}, errors {len(load.errors())}"
        )
        # Until the checks saw both primaries die, retries moved on to the backup after two tries on primaries.
        assert load.errors() == []
        assert set(load.served_by(returned + 0.3)) == {"one", "two"}


async def test_a_dead_split_target_gets_no_share_and_the_live_targets_take_it(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        x, y, z = [await stack.enter_async_context(run_nginx(tmp_path, name)) for name in "xyz"]
        port = free_port()
        # Only fields that existed before issue 15: this config runs unchanged on the code before it.
        config = f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - {{name: x, endpoints: ["{x.address}"], health_check: {CHECK}}}
  - {{name: y, endpoints: ["{y.address}"], health_check: {CHECK}}}
  - {{name: z, endpoints: ["{z.address}"], health_check: {CHECK}}}
routes:
  - name: split
    split: [{{upstream: x, weight: 50}}, {{upstream: y, weight: 30}}, {{upstream: z, weight: 20}}]
    retries: {{attempts: 2, retry_on: [5xx, reset, connect-failure]}}
"""
        gateway = await stack.enter_async_context(run_gateway(config, tmp_path / "gw"))
        envoy = gateway.envoys[0]
        for server in (x, y, z):
            await wait_for(
                functools.partial(_healthy, envoy, f"upstream/{server.name}", [server.address]), 10, "healthy"
            )
        loop = asyncio.get_running_loop()
        load = await stack.enter_async_context(steady_load("127.0.0.1", port, "/", rate=300))
        await load.wait_answers(300)
        before = load.served_by()

        killed = loop.time()
        await x.kill()

        async def x_down() -> bool:
            return bool((await endpoint_health(envoy, "upstream/x")).get(x.address))

        await wait_for(x_down, 10, "x's endpoint unhealthy")
        detected = loop.time()
        await load.wait_answers(600, since=detected)
        load.stopped.set()
        after = load.served_by(detected + 0.1)
        print(
            f"\nshares before {before}, after x died {after} (detected in {1000 * (detected - killed):.0f} ms); "
            f"answers {len(load.answers)}, errors {len(load.errors())}"
        )
        assert load.errors() == []
        assert "x" not in after
        assert set(after) == {"y", "z"}


async def test_health_and_ejections_survive_200_config_changes_during_a_fault(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        # Four endpoints, so that two may be ejected at once (max_ejection_percent 50).
        a, b, c, d = [await stack.enter_async_context(run_nginx(tmp_path, name)) for name in "abcd"]
        port = free_port()

        def config(version: int) -> str:
            # Each change edits a route (RDS) only; the upstream, and so its cluster, is the same object.
            return f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - name: app
    endpoints: ["{a.address}", "{b.address}", "{c.address}", "{d.address}"]
    health_check: {CHECK}
    outlier_detection: {{base_ejection_time: 60s}}
routes:
  - {{name: app, upstream: app, retries: {{retry_on: [gateway-error, reset, connect-failure]}}}}
  - {{name: probe, match: {{path: {{exact: /probe}}}}, direct_response: {{status: 200, body: "v{version}"}}}}
"""

        gateway = await stack.enter_async_context(run_gateway(config(0), tmp_path / "gw"))
        envoy = gateway.envoys[0]
        everyone = [a.address, b.address, c.address, d.address]
        await wait_for(lambda: _healthy(envoy, "upstream/app", everyone), 10, "every endpoint healthy")
        load = await stack.enter_async_context(steady_load("127.0.0.1", port, "/", rate=200, max_seconds=50))
        await load.wait_answers(100)
        a.fail()  # answers 503 while its /healthz still says ok: only outlier detection ejects it
        await c.kill()  # refused connections: the health check and outlier detection both see it

        async def faults_seen() -> bool:
            health = await endpoint_health(envoy, "upstream/app")
            return "failed_outlier_check" in health[a.address] and "failed_active_health_check" in health[c.address]

        await wait_for(faults_seen, 10, "a ejected and c unhealthy")
        modified = (await counters(envoy, "cluster_manager.cluster_modified")).get("cluster_manager.cluster_modified")
        ejections = await counters(envoy, "cluster.upstream/app.outlier_detection.ejections_enforced_total")
        seen: list[dict[str, set[str]]] = []

        async def watch() -> None:
            while True:
                seen.append(await endpoint_health(envoy, "upstream/app"))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            for version in range(1, 201):
                await gateway.apply(config(version))
        finally:
            watcher.cancel()
        took = loop.time() - started
        load.stopped.set()
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/probe")).text == "v200"
        stats = await counters(envoy, "cluster.upstream/app.outlier_detection.")
        after = (await counters(envoy, "cluster_manager.cluster_modified")).get("cluster_manager.cluster_modified")
        early = [health for health in seen if not health[a.address] or not health[c.address]]
        print(
            f"\n200 route changes in {took:.1f} s, {len(seen)} looks at the endpoints: {len(early)} with a faulty "
            f"endpoint back; ejections {stats['cluster.upstream/app.outlier_detection.ejections_enforced_total']}; "
            f"clusters modified {modified} -> {after}; answers {len(load.answers)}, errors {len(load.errors())}"
        )
        assert len(seen) >= 50
        assert early == []  # no faulty endpoint came back, not even for one look
        # No endpoint was let back and ejected again (a flap would count another ejection).
        assert stats["cluster.upstream/app.outlier_detection.ejections_enforced_total"] == sum(ejections.values())
        assert after == modified  # no cluster was rebuilt by a route change
        assert load.errors() == []


async def test_only_idempotent_requests_are_retried_once_they_may_have_reached_the_upstream(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        bad = await stack.enter_async_context(run_nginx(tmp_path, "bad"))
        good = await stack.enter_async_context(run_nginx(tmp_path, "good"))
        port = free_port()
        config = f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - {{name: app, endpoints: ["{bad.address}", "{good.address}"], outlier_detection: null}}
routes:
  - {{name: app, upstream: app, retries: {{retry_on: [5xx, reset, connect-failure]}}}}
"""
        gateway = await stack.enter_async_context(run_gateway(config, tmp_path / "gw"))
        envoy = gateway.envoys[0]
        bad.fail()
        url = f"http://127.0.0.1:{port}/"
        async with httpx.AsyncClient(timeout=5) as client:
            gets = [(await client.get(url)).status_code for _ in range(20)]
            retried = (await counters(envoy, "cluster.upstream/app.")).get("cluster.upstream/app.upstream_rq_retry", 0)
            # nginx answers POST to a `return` location like GET: the 503 of `bad` reaches the client.
            posts = [(await client.post(url, content=b"order")).status_code for _ in range(20)]
            stats = await counters(envoy, "cluster.upstream/app.")
            await bad.kill()
            refused = [(await client.post(url, content=b"order")).status_code for _ in range(20)]
        final = await counters(envoy, "cluster.upstream/app.")
        print(
            f"\nGET to a 503 endpoint: {gets.count(200)}/20 ok ({retried} retries); POST: {posts.count(503)}/20 "
            f"answered 503, not retried; POST to a dead endpoint: {refused.count(200)}/20 ok "
            f"({final['cluster.upstream/app.upstream_rq_retry'] - stats['cluster.upstream/app.upstream_rq_retry']}"
            " retries on connect failures)"
        )
        assert gets == [200] * 20 and retried >= 5  # round robin: every other GET met `bad` and was retried
        assert posts.count(503) >= 5 and set(posts) == {200, 503}
        assert stats["cluster.upstream/app.upstream_rq_retry"] == retried  # no POST was retried on a 503
        assert refused == [200] * 20  # never reached the dead endpoint: retried on the other
