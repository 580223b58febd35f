"""The global rate limit through real Envoys, xgate's rate-limit service and a real Redis: the limit holds
across the fleet, GCRA admits no burst, a Redis outage follows the failure mode, limits follow the config."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from xgate.demo.upstream import DemoUpstream
from xgate.proxy.process import EnvoyProcess
from xgate.testing import Gateway, free_port, run_gateway, run_ratelimit_service, scrape, write_atomic
from xgate.testing.gateway import wait_for
from xgate.testing.redis import RedisProcess, run_redis

pytestmark = pytest.mark.integration


def config(port: int, upstream: int, service: int, limit: str, extra: str = "") -> str:
    return f"""
plugins:
  rate_limit: {{global: {{requests: 1000000}}, service: "127.0.0.1:{service}", timeout: 100ms}}
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: app, endpoints: ["127.0.0.1:{upstream}"]}}]
routes:
  - name: limited
    match: {{path: {{prefix: /limited}}}}
    upstream: app
    plugins:
      rate_limit: {{global: {limit}, service: "127.0.0.1:{service}", timeout: 100ms}}
  - name: other
    upstream: app
{extra}"""


@contextlib.asynccontextmanager
async def service(gateway: Gateway, port: int, redis: RedisProcess | None = None) -> AsyncIterator[int]:
    """Run the rate-limit service on `port`, configured by the gateway; yields the port of its /metrics API."""
    args = ["--timeout", "0.05", *(["--redis", redis.url] if redis else [])]
    async with run_ratelimit_service(gateway.xds_port, port, args=args) as running:
        yield running.status_port


async def limited_until(gateway: Gateway, port: int, count: int) -> list[int]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        return [(await client.get("/limited")).status_code for _ in range(count)]


async def test_limit_headers_clients_and_live_changes(upstreams: dict[str, DemoUpstream], tmp_path: Path) -> None:
    port, rls = free_port(), free_port()
    text = config(port, upstreams["v1"].port, rls, "{requests: 5, per: 10s}")
    extra = f"""
  - name: per-client
    match: {{path: {{prefix: /client}}}}
    upstream: app
    plugins:
      rate_limit: {{global: {{requests: 2, per: 10s, by: client_ip}}, service: "127.0.0.1:{rls}", timeout: 100ms}}
"""
    async with run_gateway(text + extra, tmp_path / "gw") as gateway:
        assert gateway.config_path is not None
        async with service(gateway, rls) as metrics_port:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url) as client:
                await wait_for(_limits_loaded(client), 10, "the service to have the limits")
                answers = [await client.get("/limited") for _ in range(8)]
                codes = [answer.status_code for answer in answers]
                assert codes.count(200) == 4 and codes[-1] == 429, codes  # one was used by the wait above
                assert answers[-1].headers["x-ratelimit-limit"].startswith("5")
                assert answers[-1].headers["x-ratelimit-remaining"] == "0"
                assert all(answer.status_code == 200 for answer in [await client.get("/other") for _ in range(10)])
                metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).json()
                # The pre-limit (5 + one step) refused the last ones itself: the service saw one over the limit.
                assert metrics["limits"]["limited"]["limited"] >= 1, metrics
                assert answers[-1].headers["x-xgate-rate-limited"] == "global"
                assert metrics["limits"]["limited"]["allowed"] == 5, metrics
                scraped = await scrape(f"http://127.0.0.1:{metrics_port}/metrics")
                assert scraped['xgate_ratelimit_decisions_total{limit="limited",outcome="allowed"}'] == 5
            async with (
                httpx.AsyncClient(base_url=url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.1")) as a,
                httpx.AsyncClient(base_url=url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.3")) as b,
            ):
                assert [(await a.get("/client")).status_code for _ in range(3)] == [200, 200, 429]
                assert [(await b.get("/client")).status_code for _ in range(3)] == [200, 200, 429]

            # The same config change reaches Envoy and the service: the new limit applies, nothing restarted.
            write_atomic(gateway.config_path, (text + extra).replace("requests: 5,", "requests: 500,"))
            async with httpx.AsyncClient(base_url=url) as client:

                async def raised() -> bool:
                    return (await client.get("/limited")).status_code == 200

                await wait_for(raised, 10, "the raised limit")
                assert [(await client.get("/limited")).status_code for _ in range(20)] == [200] * 20


def _limits_loaded(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return "x-ratelimit-limit" in (await client.get("/limited")).headers

    return check


async def ratelimit_stats(envoy: EnvoyProcess) -> Counter[str]:
    """Envoy's ratelimit filter counters for the route's cluster: ok, over_limit, error, failure_mode_allowed;
    and `prelimited`: the requests each Envoy's pre-limit refused without asking the service."""
    status, body = await envoy.admin_get("/stats?filter=ratelimit|prelimit")
    assert status == 200, body
    prefix = "cluster.upstream/app.ratelimit."
    lines = (line.partition(": ") for line in body.splitlines())
    pairs = [(key, int(value)) for key, _, value in lines if value.isdigit()]  # counters, not histograms
    counts = Counter({key.removeprefix(prefix): value for key, value in pairs if key.startswith(prefix)})
    counts["prelimited"] = sum(
        value for key, value in pairs if key.endswith("prelimit.http_local_rate_limit.rate_limited")
    )
    return counts


async def service_counts(metrics_port: int) -> Counter[str]:
    """The service's decisions on the `limited` limit, once they stop changing (a decision Envoy stopped
    waiting for may still be running)."""
    async with httpx.AsyncClient() as client:
        previous: Counter[str] | None = None
        while True:
            metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).json()
            counts = Counter(metrics["limits"].get("limited", {}))
            if counts == previous:
                return counts
            previous = counts
            await asyncio.sleep(0.2)


async def test_two_envoys_share_one_limit_and_gcra_admits_no_burst(
    upstreams: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    """Offered 3L for 10 s through two Envoys: about 10L pass, and no second passes more than L + burst.

    burst 2: GCRA tolerates one request ahead of schedule. With none, a request arriving between two
    emission times is refused and discrete arrivals (here every 16.7 ms) admit only 15/s of 20/s.

    On a busy machine some requests pass by the documented fail-open: Envoy got no answer within the plugin's
    timeout (its failure_mode_allowed), or the service got none from Redis within its own (its `errors`). Such
    a pass carries no x-ratelimit-* header (no decision was made for it); each is matched against those
    counters, and the bound is checked exactly on the passes GCRA decided. A decision is made between the
    request's sending and its answer, so a window's bound is L per second of that span, plus the burst."""
    limit, burst = 20, 2
    port, rls = free_port(), free_port()
    text = config(port, upstreams["v1"].port, rls, f"{{requests: {limit}, per: 1s, algorithm: gcra, burst: {burst}}}")
    async with run_redis(tmp_path / "redis") as redis, run_gateway(text, tmp_path / "gw", envoys=2) as gateway:
        assert gateway.config_path is not None
        async with service(gateway, rls, redis) as metrics_port:
            ports = [await envoy.wait_listener_port("listener/public") for envoy in gateway.envoys]
            assert ports == [port, port]  # both Envoys bind the same port (reuse_port): the kernel spreads
            clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") for _ in range(12)]
            try:
                # Warm every path (client -> Envoy -> service -> Redis) so the first second is not spent
                # connecting, then leave GCRA idle: no stored state gives no burst either.
                await asyncio.gather(*(http.get("/limited") for http in clients))
                await asyncio.sleep(1.5)
                envoy_before = [await ratelimit_stats(envoy) for envoy in gateway.envoys]
                service_before = await service_counts(metrics_port)
                decided: list[tuple[float, float]] = []  # (sent, answered) of each pass GCRA allowed
                failed_open: list[float] = []  # sent, of each pass without a decision
                denied = 0
                started = time.monotonic()

                async def offer(http: httpx.AsyncClient, offset: float) -> None:
                    nonlocal denied
                    tick = started + offset
                    while tick < started + 10:
                        await asyncio.sleep(max(0.0, tick - time.monotonic()))
                        sent = time.monotonic()
                        response = await http.get("/limited")
                        if response.status_code != 200:
                            assert response.status_code == 429, response.status_code
                            denied += 1
                        elif "x-ratelimit-limit" in response.headers:
                            decided.append((sent, time.monotonic()))
                        else:
                            failed_open.append(sent)
                        tick += 0.2  # 5 requests per second per client

                # 12 connections, 60/s = 3L; the kernel spreads connections over both Envoys (SO_REUSEPORT).
                await asyncio.gather(*(offer(http, index / 12) for index, http in enumerate(clients)))
            finally:
                for http in clients:
                    await http.aclose()
            envoy_counts: Counter[str] = Counter()
            for envoy, before in zip(gateway.envoys, envoy_before, strict=True):
                envoy_counts += await ratelimit_stats(envoy) - before
            service_counts_delta = await service_counts(metrics_port) - service_before
            passed = len(decided) + len(failed_open)
            per_second = Counter(int(sent - started) for sent, _ in decided)
            print(
                f"passed {passed} in 10 s at limit {limit}/s: {len(decided)} decided by GCRA, {len(failed_open)} "
                f"failed open; per second: {sorted(per_second.items())}; Envoy: {dict(envoy_counts)}; "
                f"service: {dict(service_counts_delta)}; slowest answer "
                f"{max(answered - sent for sent, answered in decided):.3f} s"
            )
            # Every request is accounted for by Envoy, and every pass without a decision by a fail-open counter;
            # a refusal is the service's or (without asking it) the pre-limit's.
            assert envoy_counts["ok"] + envoy_counts["failure_mode_allowed"] == passed
            assert envoy_counts["over_limit"] + envoy_counts["prelimited"] == denied
            assert envoy_counts["error"] == envoy_counts["failure_mode_allowed"]
            without_answer = envoy_counts["failure_mode_allowed"]  # Envoy's timeout: no answer, no header
            assert without_answer <= len(failed_open) <= without_answer + service_counts_delta["errors"]
            assert len(decided) <= service_counts_delta["allowed"]  # each decided pass is a decision of Redis
            # What GCRA decided holds its bound exactly: over the whole run and in every second.
            first, last = min(sent for sent, _ in decided), max(answered for _, answered in decided)
            assert len(decided) <= burst + math.floor(limit * (last - first)), (len(decided), last - first)
            for second, count in per_second.items():
                end = max(answered for sent, answered in decided if int(sent - started) == second)
                assert count <= burst + math.floor(limit * (end - (started + second))), (second, count, end)
            assert passed >= 10 * limit * 0.95, passed  # and the limiter does not deny what it should pass
            for envoy in gateway.envoys:
                _, stats = await envoy.admin_get("/stats?filter=^http.public.downstream_rq_total$")
                assert int(stats.split(": ")[1]) > 20, stats  # each Envoy took part


async def test_redis_outage_fails_open_quickly_and_recovers(upstreams: dict[str, DemoUpstream], tmp_path: Path) -> None:
    port, rls = free_port(), free_port()
    # The service's own fail-open path: without the pre-limit (which would hold each Envoy to 3 per 30 s).
    text = config(port, upstreams["v1"].port, rls, "{requests: 3, per: 30s, prelimit: false}")
    async with run_redis(tmp_path / "redis") as redis, run_gateway(text, tmp_path / "gw") as gateway:
        assert gateway.config_path is not None
        async with (
            service(gateway, rls, redis),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
        ):
            await wait_for(_limits_loaded(http), 10, "the service to have the limits")
            codes = [(await http.get("/limited")).status_code for _ in range(4)]
            # The readiness wait above spent some of the 3: the 4th request here is over the limit in any case.
            assert codes[-1] == 429, codes
            await redis.kill()
            timings = []
            for _ in range(20):
                begun = time.monotonic()
                assert (await http.get("/limited")).status_code == 200  # fail open
                timings.append(time.monotonic() - begun)
            assert max(timings) < 0.5, timings  # bounded by the service's 50 ms, never seconds
            await redis.start()

            async def limited_again() -> bool:
                return (await http.get("/limited")).status_code == 429

            await wait_for(limited_again, 10, "limits enforced again after Redis returned")


async def test_unreachable_service_fails_open_within_envoys_timeout(
    upstreams: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    port, rls = free_port(), free_port()  # nothing listens on rls
    text = config(port, upstreams["v1"].port, rls, "{requests: 1, per: 1m, prelimit: false}")
    async with run_gateway(text, tmp_path / "gw"), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        timings = []
        for _ in range(10):
            begun = time.monotonic()
            assert (await http.get("/limited")).status_code == 200  # failure_mode open (the default)
            timings.append(time.monotonic() - begun)
        assert max(timings) < 1.0, timings
    closed = text.replace("timeout: 100ms}", "timeout: 100ms, failure_mode: closed}")
    async with run_gateway(closed, tmp_path / "gw2"), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert (await http.get("/limited")).status_code == 503  # failure_mode closed: Envoy denies


async def test_failing_open_each_envoy_still_holds_to_the_limit(
    upstreams: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    """The service unreachable (failure_mode open): without the pre-limit every request passed; with it (the
    default) an Envoy passes the limit (plus one refill step) and refuses the rest itself, saying so."""
    port, rls = free_port(), free_port()  # nothing listens on rls
    text = config(port, upstreams["v1"].port, rls, "{requests: 3, per: 1m}")
    async with run_gateway(text, tmp_path / "gw"), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        answers = [await http.get("/limited") for _ in range(10)]
    codes = [answer.status_code for answer in answers]
    assert codes == [200] * 4 + [429] * 6, codes  # 3 a minute, plus one step (20 s) of headroom
    refused = answers[-1].headers
    assert refused["x-xgate-rate-limited"] == "global" and refused["x-ratelimit-limit"] == "3", refused
    assert refused["x-ratelimit-remaining"] == "0" and refused["x-ratelimit-reset"] == "20", refused
