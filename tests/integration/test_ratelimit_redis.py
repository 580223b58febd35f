"""The rate-limit service against a real redis-server: same decisions as memory, shared limits, outages, gRPC."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from envoy.service.ratelimit.v3 import rls_pb2 as rls_v3
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from xgate.ratelimit import (
    Decision,
    FailureMode,
    Limit,
    LimitTable,
    MemoryBackend,
    Rate,
    RedisBackend,
    serve,
)
from xgate.testing.redis import RedisProcess, run_redis

pytestmark = pytest.mark.integration

OK = rls_v3.RateLimitResponse.OK
OVER = rls_v3.RateLimitResponse.OVER_LIMIT
PER_IP = ("api", (("client_ip", None),))


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    async with run_redis(tmp_path) as server:
        yield server


class FakeClock:
    def __init__(self) -> None:
        self.start = time.time()
        self.elapsed = 0.0

    def __call__(self) -> float:
        return self.start + self.elapsed


def request(ip: str, *, domain: str = "api") -> rls_v3.RateLimitRequest:
    built = rls_v3.RateLimitRequest(domain=domain)
    built.descriptors.add().entries.add(key="client_ip", value=ip)
    return built


async def ask(port: int, requests: list[rls_v3.RateLimitRequest]) -> list[rls_v3.RateLimitResponse]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        return list(await asyncio.gather(*(stub.ShouldRateLimit(r, timeout=5) for r in requests)))


async def test_redis_and_memory_backends_decide_alike(redis_server: RedisProcess) -> None:
    clock = FakeClock()
    memory = MemoryBackend(clock)
    shared = RedisBackend.connect(redis_server.url, clock=clock, prefix=f"same-{os.getpid()}:")
    rates = [
        Rate(10, 1.0),
        Rate(10, 1.0, burst=25),
        Rate(3, 1.0),
        Rate(7, 60.0),
        Rate(10, 1.0, "gcra"),
        Rate(3, 1.0, "gcra", burst=4),
        Rate(100, 60.0, "gcra", burst=10),
    ]
    rng = random.Random(6)
    got: list[tuple[Decision, Decision]] = []
    try:
        for step in range(1500):
            index = rng.randrange(len(rates))
            key = f"{rates[index].algorithm}:{index}:{rng.randrange(3)}"
            hits = rng.choice((1, 1, 1, 1, 2, 5, 0))
            got.append((await memory.decide(key, rates[index], hits), await shared.decide(key, rates[index], hits)))
            if step % 3 == 0:
                clock.elapsed += rng.choice((0.0, 0.001, 0.05, 0.1, 1 / 3, 0.4, 2.0))
    finally:
        await shared.aclose()
    mismatches = [(i, m, r) for i, (m, r) in enumerate(got) if m != r]
    assert not mismatches, mismatches[:5]
    allowed = sum(m.allowed for m, _ in got)
    assert 0 < allowed < len(got)  # the sequence exercised both answers


@pytest.mark.parametrize("limit", [Limit(20, 60.0), Limit(20, 60.0, "gcra", burst=20)], ids=["token_bucket", "gcra"])
async def test_two_instances_share_one_limit(redis_server: RedisProcess, limit: Limit) -> None:
    table = LimitTable({PER_IP: limit})
    # A generous backend timeout: this test is about sharing; on a loaded machine 50 ms can pass and the
    # service would fail open (let extra requests through), which is the failure test's business.
    (one, one_port), (two, two_port) = [await serve(table, redis_url=redis_server.url, timeout=2.0) for _ in range(2)]
    try:
        ip = f"10.0.0.{limit.burst}"
        answers = await asyncio.gather(ask(one_port, [request(ip)] * 20), ask(two_port, [request(ip)] * 20))
        codes = [answer.overall_code for batch in answers for answer in batch]
        assert codes.count(OK) == 20
        assert all(any(a.overall_code == OK for a in batch) for batch in answers)  # both took part
        assert (await ask(one_port, [request("10.0.0.99")]))[0].overall_code == OK  # another IP, another bucket
    finally:
        await one.stop()
        await two.stop()


async def _latencies(port: int, count: int, ip: str) -> tuple[list[int], list[float]]:
    codes, took = [], []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        for _ in range(count):
            started = time.monotonic()
            answer = await stub.ShouldRateLimit(request(ip), timeout=5)
            took.append(time.monotonic() - started)
            codes.append(answer.overall_code)
    return codes, took


@pytest.mark.parametrize(("mode", "code"), [("open", OK), ("closed", OVER)])
async def test_redis_outage_follows_failure_mode_and_recovers(
    redis_server: RedisProcess, mode: FailureMode, code: int
) -> None:
    table = LimitTable({PER_IP: Limit(3, 60.0, name="per-ip")})
    server, port = await serve(table, redis_url=redis_server.url, failure_mode=mode, timeout=0.05)
    try:
        codes, _ = await _latencies(port, 4, "a")
        assert codes == [OK, OK, OK, OVER]

        await redis_server.kill()  # refused at once
        codes, took = await _latencies(port, 20, "a")
        assert codes == [code] * 20
        print(f"\n{mode}, redis killed: p50 {statistics.median(took) * 1e3:.1f} ms, max {max(took) * 1e3:.1f} ms")
        assert max(took) < 0.3

        await redis_server.start()  # an empty Redis on the same port
        os.kill(redis_server.pid or 0, signal.SIGSTOP)  # hung: connections open, no answers
        try:
            codes, took = await _latencies(port, 10, "b")
        finally:
            os.kill(redis_server.pid or 0, signal.SIGCONT)
        assert codes == [code] * 10
        print(f"{mode}, redis stopped: p50 {statistics.median(took) * 1e3:.1f} ms, max {max(took) * 1e3:.1f} ms")
        assert statistics.median(took) > 0.04 and max(took) < 0.3  # waited for the timeout, not longer

        deadline = time.monotonic() + 5
        while (await _latencies(port, 1, "probe"))[0] != [OK] or server.service.metrics()["per-ip"]["errors"] == 0:
            assert time.monotonic() < deadline, "no recovery after Redis came back"
            await asyncio.sleep(0.05)
        codes, _ = await _latencies(port, 4, "c")
        assert codes == [OK, OK, OK, OVER]
        assert server.service.metrics()["per-ip"]["errors"] == 30
    finally:
        await server.stop()


async def test_grpc_client_gets_over_limit_with_headers(redis_server: RedisProcess) -> None:
    table = LimitTable({PER_IP: Limit(2, 1.0, name="per-ip")})
    server, port = await serve(table, redis_url=redis_server.url)
    try:
        answers = await _sequential(port, [request("h")] * 3)
        assert [a.overall_code for a in answers] == [OK, OK, OVER]
        over = answers[-1]
        assert {h.key: h.value for h in over.response_headers_to_add} == {
            "x-ratelimit-limit": "2",
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": "1",
        }
        status = over.statuses[0]
        assert (status.code, status.current_limit.requests_per_unit, status.limit_remaining) == (OVER, 2, 0)
        assert 0 < status.duration_until_reset.ToMilliseconds() <= 500
        assert server.service.metrics()["per-ip"]["limited"] == 1

        server.service.set_limits(LimitTable({PER_IP: Limit(5, 1.0, name="per-ip")}))  # no restart
        assert (await _sequential(port, [request("h")]))[0].overall_code == OK
    finally:
        await server.stop()


async def test_shadow_mode_counts_but_allows(redis_server: RedisProcess) -> None:
    table = LimitTable({PER_IP: Limit(2, 60.0, shadow=True, name="trial")})
    server, port = await serve(table, redis_url=redis_server.url)
    try:
        answers = await _sequential(port, [request("s")] * 5)
        assert [a.overall_code for a in answers] == [OK] * 5
        assert server.service.metrics()["trial"]["shadow_limited"] == 3
        assert server.service.metrics()["trial"]["allowed"] == 2
    finally:
        await server.stop()


async def test_idle_keys_expire_in_redis(redis_server: RedisProcess) -> None:
    table = LimitTable({PER_IP: Limit(10, 60.0), ("api", (("user", None),)): Limit(10, 60.0, "gcra")})
    server, port = await serve(table, redis_url=redis_server.url)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        user = rls_v3.RateLimitRequest(domain="api")
        user.descriptors.add().entries.add(key="user", value="u1")
        await _sequential(port, [request("e"), user])
        ttls = [await client.pttl(key) for key in await client.keys("xgate:rl:*")]
        assert len(ttls) == 2
        assert all(5000 < ttl <= 6002 for ttl in ttls)  # one token / one interval: 6 s, plus 1 ms
    finally:
        await client.aclose()
        await server.stop()


async def _sequential(port: int, requests: list[rls_v3.RateLimitRequest]) -> list[rls_v3.RateLimitResponse]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        return [await stub.ShouldRateLimit(r, timeout=5) for r in requests]
