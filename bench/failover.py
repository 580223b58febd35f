"""Failover figures through a real Envoy to real nginx upstreams (Debian's nginx-light), in one run (issue 15),
and what health checks plus outlier detection cost in requests per second.

    flock /tmp/xgate-test.lock flock /tmp/xgate-bench.lock .venv/bin/python bench/failover.py
        [--seconds 5] [--connections 32] [--threads 1] [--rounds 3]

Faults, each under a steady paced load (xgate.testing.faults.steady_load, ~300 requests/s per route, GET) with
the retries the README recommends ({attempts: 2, retry_on: [gateway-error, reset, connect-failure],
per_try_timeout}): one of 3 endpoints SIGKILLed (time to ejection by a 250 ms health check alone and by outlier
detection alone), SIGSTOPped, answering 503 and recovering, every primary down then back, a split target dead.
Then the issue's own measurement: one of 2 endpoints SIGKILLed under wrk -t1 -c16 (health check 1 s x 2, retries
{attempts: 2, retry_on: [5xx, reset, connect-failure]}), with the default outlier detection and retry budget and
without outlier detection. Last, wrk alternately on two routes over the same 3 nginx endpoints: `plain` (no
health check, no outlier detection) and `guarded` (health check every 250 ms, default outlier detection); the
target is guarded >= 97% of plain. Everything listens on 127.0.0.1 and is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import _stalls
from _cli import JOBS_TITLE
from _wrk import best_table, have_wrk, wrk, wrk_parser
from xgate.proxy.process import EnvoyProcess
from xgate.testing import Gateway, NginxProcess, free_port, run_gateway, run_nginx
from xgate.testing.faults import counters, endpoint_health, steady_load
from xgate.testing.gateway import wait_for

RETRIES = "{attempts: 2, retry_on: [gateway-error, reset, connect-failure], per_try_timeout: 300ms}"
CHECK = "{path: /healthz, interval: 250ms, timeout: 1s, unhealthy_threshold: 2}"
RATE = 300.0


@asynccontextmanager
async def setup(work: Path, names: str, body: str) -> AsyncIterator[tuple[list[NginxProcess], Gateway, int]]:
    """nginx servers named by the letters of `names`, and a gateway on a free port whose upstreams and routes
    are `body`, where @x stands for server x's address and @x_port for its port."""
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(run_nginx(work, name)) for name in names]
        port = free_port()
        for server in servers:
            body = body.replace(f"@{server.name}_port", str(server.port)).replace(f"@{server.name}", server.address)
        config = f"listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]\n" + body
        gateway = await stack.enter_async_context(run_gateway(config, work / "gw"))
        yield servers, gateway, port


async def flagged(envoy: EnvoyProcess, cluster: str, address: str, timeout: float = 15.0) -> float:
    async def seen() -> bool:
        return bool((await endpoint_health(envoy, cluster)).get(address))

    await wait_for(seen, timeout, f"{address} ejected", interval=0.005)
    return asyncio.get_running_loop().time()


async def kill_one_of_three(work: Path) -> str:
    body = f"""upstreams:
  - {{name: checked, endpoints: ["@a", "@b", "@c"], health_check: {CHECK}, outlier_detection: null}}
  - {{name: passive, endpoints: ["@a", "@b", "@c"]}}
routes:
  - {{name: checked, match: {{path: {{prefix: /checked}}}}, upstream: checked, retries: {RETRIES}}}
  - {{name: passive, match: {{path: {{prefix: /passive}}}}, upstream: passive, retries: {RETRIES}}}
"""
    async with setup(work, "abc", body) as (servers, gateway, port):
        envoy, loop = gateway.envoys[0], asyncio.get_running_loop()
        await asyncio.sleep(1.0)  # the first health checks
        async with (
            steady_load("127.0.0.1", port, "/checked", rate=RATE) as checked,
            steady_load("127.0.0.1", port, "/passive", rate=RATE) as passive,
        ):
            await checked.wait_answers(300)
            killed = loop.time()
            await servers[0].kill()
            by_check, by_outlier = await asyncio.gather(
                flagged(envoy, "upstream/checked", servers[0].address),
                flagged(envoy, "upstream/passive", servers[0].address),
            )
            await checked.wait_answers(300, since=loop.time())
        errors = len(checked.errors()) + len(passive.errors())
        return (
            f"kill 1 of 3: ejected by the health check in {1000 * (by_check - killed):.0f} ms, by outlier detection "
            f"in {1000 * (by_outlier - killed):.0f} ms; {len(checked.answers) + len(passive.answers)} answers, "
            f"{errors} errors"
        )


async def hang_one_of_three(work: Path) -> str:
    body = f"""upstreams: [{{name: app, endpoints: ["@a", "@b", "@c"]}}]
routes: [{{name: app, upstream: app, retries: {RETRIES}}}]
"""
    async with setup(work, "abc", body) as (servers, gateway, port):
        envoy, loop = gateway.envoys[0], asyncio.get_running_loop()
        async with steady_load("127.0.0.1", port, "/", rate=RATE) as load:
            await load.wait_answers(300)
            frozen = loop.time()
            servers[0].freeze()
            ejected = await flagged(envoy, "upstream/app", servers[0].address)
            await load.wait_answers(300, since=ejected)
        servers[0].thaw()
        slowest = max(answer.done - answer.sent for answer in load.since(frozen))
        timeouts = (await counters(envoy, "cluster.upstream/app.upstream_rq_per_try_timeout")).popitem()[1]
        return (
            f"SIGSTOP 1 of 3: ejected in {1000 * (ejected - frozen):.0f} ms; {timeouts} per-try timeouts (300 ms) "
            f"retried elsewhere, slowest answer {1000 * slowest:.0f} ms; {len(load.answers)} answers, "
            f"{len(load.errors())} errors"
        )


async def answer_503(work: Path) -> str:
    body = f"""upstreams: [{{name: app, endpoints: ["@a", "@b", "@c"]}}]
routes: [{{name: app, upstream: app, retries: {RETRIES}}}]
"""
    async with setup(work, "abc", body) as (servers, gateway, port):
        envoy, loop = gateway.envoys[0], asyncio.get_running_loop()
        async with steady_load("127.0.0.1", port, "/", rate=RATE) as load:
            await load.wait_answers(300)
            failing = loop.time()
            servers[0].fail()
            ejected = await flagged(envoy, "upstream/app", servers[0].address)
            recovered = loop.time()
            servers[0].recover()
            await wait_for(lambda: load.served_by(recovered).get("a", 0) > 0, 30, "a serving again")
            back = loop.time()
        return (
            f"503 from 1 of 3: ejected in {1000 * (ejected - failing):.0f} ms; recovered -> serving again in "
            f"{back - recovered:.2f} s (base_ejection_time 5 s, checked every 1 s); {len(load.answers)} answers, "
            f"{len(load.errors())} errors"
        )


async def primaries_down(work: Path) -> str:
    body = f"""upstreams:
  - name: app
    endpoints: ["@a", "@b", {{host: 127.0.0.1, port: @c_port, priority: 1}}]
    health_check: {CHECK}
routes: [{{name: app, upstream: app, retries: {RETRIES}}}]
"""
    async with setup(work, "abc", body) as (servers, _, port):
        loop = asyncio.get_running_loop()
        async with steady_load("127.0.0.1", port, "/", rate=RATE) as load:
            await load.wait_answers(300)
            down = loop.time()
            await servers[0].kill()
            await servers[1].kill()
            await wait_for(lambda: set(load.served_by(loop.time() - 0.2)) == {"c"}, 15, "the backup alone")
            moved = loop.time()
            await servers[0].start()
            await servers[1].start()
            up = loop.time()
            await wait_for(lambda: set(load.served_by(loop.time() - 0.2)) == {"a", "b"}, 30, "primaries again")
            back = loop.time()
        return (
            f"2 primaries down: the backup serves alone after {1000 * (moved - down):.0f} ms; primaries up: traffic "
            f"back on both after {back - up:.2f} s; {len(load.answers)} answers, {len(load.errors())} errors"
        )


async def dead_split_target(work: Path) -> str:
    body = f"""upstreams:
  - {{name: x, endpoints: ["@x"], health_check: {CHECK}}}
  - {{name: y, endpoints: ["@y"], health_check: {CHECK}}}
  - {{name: z, endpoints: ["@z"], health_check: {CHECK}}}
routes:
  - name: split
    split: [{{upstream: x, weight: 50}}, {{upstream: y, weight: 30}}, {{upstream: z, weight: 20}}]
    retries: {RETRIES}
"""
    async with setup(work, "xyz", body) as (servers, _, port):
        loop = asyncio.get_running_loop()
        async with steady_load("127.0.0.1", port, "/", rate=RATE) as load:
            await load.wait_answers(300)
            before = load.served_by()
            killed = loop.time()
            await servers[0].kill()
            await load.wait_answers(600, since=killed)
        return (
            f"split 50/30/20, x dead: shares before {before}, after {load.served_by(killed + 0.5)}; "
            f"{len(load.errors())} errors"
        )


async def issue_measurement(work: Path, outlier: bool) -> str:
    """The issue's: wrk -t1 -c16, one of 2 endpoints SIGKILLed after 1 s of 4, health check 1 s x 2."""
    body = f"""upstreams:
  - name: app
    endpoints: ["@a", "@b"]
    health_check: {{path: /healthz, interval: 1s, timeout: 1s, unhealthy_threshold: 2}}
    {"" if outlier else "outlier_detection: null"}
routes: [{{name: app, upstream: app, retries: {{attempts: 2, retry_on: [5xx, reset, connect-failure]}}}}]
"""
    async with setup(work, "ab", body) as (servers, gateway, port):
        argv = ["wrk", "-t1", "-c16", "-d4s", f"http://127.0.0.1:{port}/"]
        process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(1.0)
        await servers[0].kill()
        output = (await process.communicate())[0].decode()
        stats = await counters(gateway.envoys[0], "cluster.upstream/app.")
    non_2xx = next((line.split()[-1] for line in output.splitlines() if "Non-2xx" in line), "0")
    total = next((line.split()[0] for line in output.splitlines() if "requests in" in line), "?")
    return (
        f"wrk -c16, 1 of 2 killed, {'default outlier detection' if outlier else 'no outlier detection'}: "
        f"{non_2xx} non-2xx of {total}; retries {stats.get('cluster.upstream/app.upstream_rq_retry', 0)}, "
        f"refused by the budget {stats.get('cluster.upstream/app.upstream_rq_retry_overflow', 0)}"
    )


async def cost(work: Path, args: argparse.Namespace) -> str:
    body = f"""upstreams:
  - {{name: plain, endpoints: ["@a", "@b", "@c"], outlier_detection: null}}
  - {{name: guarded, endpoints: ["@a", "@b", "@c"], health_check: {CHECK}}}
routes:
  - {{name: plain, match: {{path: {{prefix: /plain}}}}, upstream: plain}}
  - {{name: guarded, match: {{path: {{prefix: /guarded}}}}, upstream: guarded}}
"""
    async with setup(work, "abc", body) as (_, _, port):
        results: dict[str, list[tuple[float, float]]] = {"plain": [], "guarded": []}
        for _ in range(args.rounds):
            for route in results:
                url = f"http://127.0.0.1:{port}/{route}"
                results[route].append(await asyncio.to_thread(wrk, url, args.seconds, args.connections, args.threads))
    best = {route: max(rps for rps, _ in runs) for route, runs in results.items()}
    return (
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, Envoy --concurrency 1, 3 nginx endpoints\n"
        + best_table(results, "plain")
        + f"\nguarded / plain = {best['guarded'] / best['plain']:.1%} (target >= 97%)"
    )


async def main(args: argparse.Namespace) -> int:
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    machine = [("before", _stalls.measure())]
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="xgate-bench-failover-") as directory:
        work = Path(directory)
        for step in (kill_one_of_three, hang_one_of_three, answer_503, primaries_down, dead_split_target):
            lines.append(await step(work / step.__name__))
            print(lines[-1], flush=True)
        for outlier in (True, False):
            lines.append(await issue_measurement(work / f"issue-{outlier}", outlier))
            print(lines[-1], flush=True)
        print(await cost(work / "cost", args))
    machine.append(("after", _stalls.measure()))
    print(f"machine (bench/_stalls.py, a busy thread per CPU for {_stalls.SECONDS:g} s, gaps):")
    for when, stalls in machine:
        print(f"  {when:>6}: {_stalls.line(stalls)}")
        print(f"  {'':>6}  {JOBS_TITLE}: {_stalls.jobs_line(stalls)}")
    return 0


if __name__ == "__main__":
    parser = wrk_parser(__doc__)
    parser.set_defaults(rounds=3)
    sys.exit(asyncio.run(main(parser.parse_args())))
