"""Fault tests under steady load, through a real Envoy to real nginx upstreams (issue 15): an endpoint killed,
hung or answering 503 is ejected and the clients see no error; a full upstream answers 503 with a reason.

Timing figures are printed (`pytest -s` shows them). Where the issue sets a target (ejection within 1 s) the
test asserts it: the health check's expected time is one or two intervals (250-500 ms), outlier detection's a
few requests (milliseconds), so 1 s leaves twice the expected time or more for a busy 2-core machine. Times
without a target (a hung endpoint's ejection, a recovered one's return) are asserted only against what the
config allows, with the same kind of margin, and printed.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from xgate.proxy.process import EnvoyProcess
from xgate.testing import free_port, run_gateway, run_nginx
from xgate.testing.faults import counters, endpoint_health, steady_load
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration

# What the README recommends for idempotent routes.
RETRIES = "{attempts: 2, retry_on: [gateway-error, reset, connect-failure], per_try_timeout: 500ms}"
CHECK = "{path: /healthz, interval: 250ms, timeout: 1s, unhealthy_threshold: 2}"
TARGET = 1.0  # s, the target for the time from a kill to the ejection


async def flagged_at(envoy: EnvoyProcess, cluster: str, address: str, timeout: float = 10.0) -> float:
    """Poll Envoy until `address` in `cluster` has a health flag; return the loop time it was first seen."""
    loop = asyncio.get_running_loop()

    async def flagged() -> bool:
        return bool((await endpoint_health(envoy, cluster)).get(address))

    await wait_for(flagged, timeout, f"{address} ejected from {cluster}", interval=0.005)
    return loop.time()


async def test_a_killed_endpoint_is_ejected_within_a_second_and_no_client_sees_an_error(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a, b, c = [await stack.enter_async_context(run_nginx(tmp_path, name)) for name in "abc"]
        port = free_port()
        endpoints = f'["{a.address}", "{b.address}", "{c.address}"]'
        # The same endpoints twice: one upstream ejects by active health checks alone, the other by outlier
        # detection alone, so one kill measures both.
        config = f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - {{name: checked, endpoints: {endpoints}, health_check: {CHECK}, outlier_detection: null}}
  - {{name: passive, endpoints: {endpoints}}}
routes:
  - {{name: checked, match: {{path: {{prefix: /checked}}}}, upstream: checked, retries: {RETRIES}}}
  - {{name: passive, match: {{path: {{prefix: /passive}}}}, upstream: passive, retries: {RETRIES}}}
"""
        gateway = await stack.enter_async_context(run_gateway(config, tmp_path / "gw"))
        envoy = gateway.envoys[0]
        await wait_for(lambda: _all_healthy(envoy, "upstream/checked", 3), 10, "health checks to pass")
        loop = asyncio.get_running_loop()
        checked = await stack.enter_async_context(steady_load("127.0.0.1", port, "/checked", rate=250))
        passive = await stack.enter_async_context(steady_load("127.0.0.1", port, "/passive", rate=250))
        await checked.wait_answers(200)
        await passive.wait_answers(200)

        killed = loop.time()
        await a.kill()
        by_checks, by_outliers = await asyncio.gather(
            flagged_at(envoy, "upstream/checked", a.address), flagged_at(envoy, "upstream/passive", a.address)
        )
        after = loop.time()
        await checked.wait_answers(250, since=after)
        await passive.wait_answers(250, since=after)
        checked.stopped.set()
        passive.stopped.set()

        stats = await counters(envoy, "cluster.upstream/")
        print(
            f"\nkill -> ejected: health check (250 ms x 2) {1000 * (by_checks - killed):.0f} ms, "
            f"outlier detection {1000 * (by_outliers - killed):.0f} ms; answers {len(checked.answers)} + "
            f"{len(passive.answers)}, errors {len(checked.errors())} + {len(passive.errors())}; retries "
            f"{stats.get('cluster.upstream/checked.upstream_rq_retry', 0)} + "
            f"{stats.get('cluster.upstream/passive.upstream_rq_retry', 0)}"
        )
        assert checked.errors() == [] and passive.errors() == []
        assert by_checks - killed <= TARGET
        assert by_outliers - killed <= TARGET
        assert stats.get("cluster.upstream/passive.outlier_detection.ejections_enforced_total") == 1
        assert stats.get("cluster.upstream/checked.upstream_rq_retry_overflow", 0) == 0
        assert stats.get("cluster.upstream/passive.upstream_rq_retry_overflow", 0) == 0
        # Traffic goes on to the two endpoints left, none to the dead one.
        assert set(passive.served_by(after)) == {"b", "c"} and set(checked.served_by(after)) == {"b", "c"}


async def _all_healthy(envoy: EnvoyProcess, cluster: str, count: int) -> bool:
    health = await endpoint_health(envoy, cluster)
    return len(health) == count and not any(health.values())


async def test_a_hung_endpoint_is_hidden_by_per_try_timeouts_and_ejected_and_a_full_upstream_says_so(
    tmp_path: Path,
) -> None:
    async with AsyncExitStack() as stack:
        a, b, c = [await stack.enter_async_context(run_nginx(tmp_path, name)) for name in "abc"]
        lone = await stack.enter_async_context(run_nginx(tmp_path, "lone"))
        port = free_port()
        config = f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - {{name: app, endpoints: ["{a.address}", "{b.address}", "{c.address}"]}}
  - name: lone
    endpoints: ["{lone.address}"]
    circuit_breakers: {{max_connections: 2, max_pending_requests: 2}}
routes:
  - {{name: lone, match: {{path: {{prefix: /lone}}}}, upstream: lone, timeout: 3s, retries: null}}
  - name: app
    upstream: app
    retries: {{attempts: 2, retry_on: [gateway-error, reset, connect-failure], per_try_timeout: 200ms}}
"""
        gateway = await stack.enter_async_context(run_gateway(config, tmp_path / "gw"))
        envoy = gateway.envoys[0]
        loop = asyncio.get_running_loop()
        load = await stack.enter_async_context(steady_load("127.0.0.1", port, "/", rate=300, connections=12))
        await load.wait_answers(200)

        frozen = loop.time()
        a.freeze()  # connections still open (the kernel's backlog); nothing answers
        ejected = await flagged_at(envoy, "upstream/app", a.address)
        await load.wait_answers(250, since=ejected)
        load.stopped.set()
        slowest = max(answer.done - answer.sent for answer in load.since(frozen))
        stats = await counters(envoy, "cluster.upstream/app.")
        print(
            f"\nSIGSTOP -> ejected {1000 * (ejected - frozen):.0f} ms; answers {len(load.answers)}, errors "
            f"{len(load.errors())}; per-try timeouts {stats.get('cluster.upstream/app.upstream_rq_per_try_timeout')}"
            f", slowest answer {1000 * slowest:.0f} ms"
        )
        assert load.errors() == []
        # A request that met the hung endpoint waited one per-try timeout (200 ms) and was answered by another.
        assert stats.get("cluster.upstream/app.upstream_rq_per_try_timeout", 0) >= 1
        assert slowest < 2.0
        # Ejection: 3 timeouts in a row or 30% failed in a 1 s interval: within 2 intervals; 5 s is the margin.
        assert ejected - frozen <= 5.0
        assert load.served_by(ejected + 0.3).keys() <= {"b", "c"}

        # The breaker: 2 connections and 2 pending requests to a hung endpoint; the rest is answered at once.
        lone.freeze()
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=20)) as client:
            url = f"http://127.0.0.1:{port}/lone"
            answers = await asyncio.gather(*(client.get(url) for _ in range(10)))
        lone.thaw()
        refused = [answer for answer in answers if answer.status_code == 503]
        stats = await counters(envoy, "cluster.upstream/lone.")
        print(f"breaker: {len(refused)} of 10 answered 503 overloaded; the others {[a.status_code for a in answers]}")
        assert len(refused) >= 5
        for answer in refused:
            assert answer.headers["x-envoy-overloaded"] == "true"
            assert "overflow" in answer.text
        assert stats["cluster.upstream/lone.upstream_rq_pending_overflow"] == len(refused)


async def test_an_endpoint_answering_503_is_ejected_and_comes_back_when_it_recovers(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a, b, c = [await stack.enter_async_context(run_nginx(tmp_path, name)) for name in "abc"]
        port = free_port()
        config = f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - name: app
    endpoints: ["{a.address}", "{b.address}", "{c.address}"]
    outlier_detection: {{base_ejection_time: 2s}}
routes:
  - {{name: app, upstream: app, retries: {RETRIES}}}
"""
        gateway = await stack.enter_async_context(run_gateway(config, tmp_path / "gw"))
        envoy = gateway.envoys[0]
        loop = asyncio.get_running_loop()
        load = await stack.enter_async_context(steady_load("127.0.0.1", port, "/", rate=300))
        await load.wait_answers(200)

        failing = loop.time()
        a.fail()
        ejected = await flagged_at(envoy, "upstream/app", a.address)
        await load.wait_answers(100, since=ejected)
        recovered = loop.time()
        a.recover()

        async def healthy() -> bool:
            return not (await endpoint_health(envoy, "upstream/app")).get(a.address)

        await wait_for(healthy, 10, "the endpoint back in the balancing", interval=0.005)
        back = loop.time()
        await wait_for(lambda: load.served_by(back).get("a", 0) >= 10, 10, "traffic back on the endpoint")
        served = loop.time()
        load.stopped.set()
        stats = await counters(envoy, "cluster.upstream/app.outlier_detection.")
        print(
            f"\n503 -> ejected {1000 * (ejected - failing):.0f} ms; recovered -> back {1000 * (back - recovered):.0f}"
            f" ms (ejected for 2 s, checked every 1 s), -> serving {1000 * (served - recovered):.0f} ms; "
            f"answers {len(load.answers)}, errors {len(load.errors())}"
        )
        assert load.errors() == []  # the 503s were retried on the others (gateway-error)
        assert ejected - failing <= TARGET
        assert stats["cluster.upstream/app.outlier_detection.ejections_enforced_consecutive_gateway_failure"] == 1
        # Back after base_ejection_time (2 s, from the ejection) on the next 1 s tick: at most 3 s after the
        # ejection; 3 s more is the margin.
        assert back - ejected <= 6.0
