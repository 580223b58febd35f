"""Benchmark: the rate-limit service's decisions per second (and per CPU second) on the memory and Redis backends.

Run from the repository: `.venv/bin/python bench/ratelimit_service.py [--seconds 5] [--calls 20000]
[--concurrency 32] [--algorithm token_bucket|gcra] [--json]`. Needs redis-server on PATH for the Redis run.

The service runs in a child process (this file with the hidden `--serve` flag) so that it has a core of its
own; this process is the gRPC client: `concurrency` callers on one channel, each sending ShouldRateLimit with
one descriptor (client_ip out of 1,000) under a limit that is never reached, until `calls` calls or `seconds`
seconds, whichever comes first, after 500 warm-up calls. "per core" divides the decisions by the CPU seconds
the service process used during the run, read from /proc (redis-server's CPU is shown apart).

Rows: `grpc-bare` is the same gRPC server with a handler that answers OK at once (the ceiling grpc.aio sets on
this machine); `memory` and `redis` are the service over gRPC; `memory/direct` and `redis/direct` call the
servicer's method in this process without gRPC (same callers, same bounds): the cost of xgate's own code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2 as rls_v3
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from _service_load import cpu_seconds, drive, latency_ms, print_table, serve_bare, serve_started, start_child
from xgate.ratelimit import Backend, Limit, LimitTable, MemoryBackend, RateLimitService, RedisBackend, serve
from xgate.supervisor import terminate
from xgate.testing.redis import run_redis

IPS = 1000
DOMAIN = "bench"


def table(algorithm: str) -> LimitTable:
    # Never reached: every call is a full decision (read, compute, write), none is short-circuited.
    limit = Limit(1_000_000, 1.0, algorithm, burst=1_000_000, name="per-ip")  # type: ignore[arg-type]
    return LimitTable({(DOMAIN, (("client_ip", None),)): limit})


# -- the service child ----------------------------------------------------------------------------------------


class BareService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(
        self, request: rls_v3.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_v3.RateLimitResponse:
        return rls_v3.RateLimitResponse(overall_code=rls_v3.RateLimitResponse.OK)


async def serve_child(backend: str, algorithm: str) -> None:
    if backend == "grpc-bare":
        await serve_bare(lambda server: rls_pb2_grpc.add_RateLimitServiceServicer_to_server(BareService(), server))
        return
    redis_url = None if backend == "memory" else backend
    await serve_started(*await serve(table(algorithm), redis_url=redis_url, timeout=1.0))


# -- the client -----------------------------------------------------------------------------------------------


async def load(port: int, calls: int, seconds: float, concurrency: int) -> tuple[list[float], int, float]:
    """Send calls over gRPC; returns (latencies of the measured calls in s, how many were OVER_LIMIT, wall s)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        call = stub.ShouldRateLimit
        return await drive(lambda request: call(request, timeout=5), requests(), _over, calls, seconds, concurrency)


def requests() -> list[rls_v3.RateLimitRequest]:
    """One request per client IP (IPS of them), each with the one descriptor the limit counts."""
    made = []
    for index in range(IPS):
        request = rls_v3.RateLimitRequest(domain=DOMAIN)
        request.descriptors.add().entries.add(key="client_ip", value=f"10.0.{index // 256}.{index % 256}")
        made.append(request)
    return made


def _over(answer: rls_v3.RateLimitResponse) -> bool:
    return bool(answer.overall_code == rls_v3.RateLimitResponse.OVER_LIMIT)


def row(
    name: str, algorithm: str, latencies: list[float], over: int, wall: float, cpu: float, redis_cpu: float
) -> dict[str, Any]:
    done = len(latencies)
    return {
        "backend": name,
        "algorithm": algorithm,
        "decisions": done,
        "over_limit": over,
        "seconds": round(wall, 3),
        "decisions_per_s": round(done / wall),
        "service_cpu_s": round(cpu, 2),
        "redis_cpu_s": round(redis_cpu, 2),
        "per_service_core": round(done / cpu) if cpu else None,
        **latency_ms(latencies),
    }


async def measure(
    backend: str, algorithm: str, args: argparse.Namespace, redis_pid: int | None = None
) -> dict[str, Any]:
    """The service (or the bare gRPC server) in a child process, driven over gRPC."""
    proc, port = await start_child(__file__, backend, "--algorithm", algorithm)
    try:
        cpu_before = cpu_seconds(proc.pid)
        redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
        latencies, over, wall = await load(port, args.calls, args.seconds, args.concurrency)
        service_cpu = cpu_seconds(proc.pid) - cpu_before
        redis_cpu = (cpu_seconds(redis_pid) - redis_before) if redis_pid else 0.0
    finally:
        await terminate(proc, 5)
    name = backend if backend in ("memory", "grpc-bare") else "redis"
    return row(name, algorithm, latencies, over, wall, service_cpu, redis_cpu)


async def measure_direct(
    redis_url: str | None, algorithm: str, args: argparse.Namespace, redis_pid: int | None = None
) -> dict[str, Any]:
    """The servicer's method called in this process, no gRPC: xgate's own cost per decision."""
    backend: Backend = MemoryBackend() if redis_url is None else RedisBackend.connect(redis_url, timeout=1.0)
    service = RateLimitService(table(algorithm), backend, timeout=1.0)
    try:
        cpu_before = time.process_time()
        redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
        latencies, over, wall = await drive(
            service.should_rate_limit, requests(), _over, args.calls, args.seconds, args.concurrency
        )
        cpu = time.process_time() - cpu_before
        redis_cpu = (cpu_seconds(redis_pid) - redis_before) if redis_pid else 0.0
    finally:
        await backend.aclose()
    name = "memory/direct" if redis_url is None else "redis/direct"
    return row(name, algorithm, latencies, over, wall, cpu, redis_cpu)


def report(rows: list[dict[str, Any]]) -> None:
    columns = [
        ("backend", "backend"),
        ("algorithm", "algorithm"),
        ("decisions", "decisions"),
        ("decisions_per_s", "decisions/s"),
        ("per_service_core", "per service core"),
        ("service_cpu_s", "service CPU s"),
        ("redis_cpu_s", "redis CPU s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("over_limit", "over limit"),
    ]
    print_table(rows, columns)


async def main(args: argparse.Namespace) -> int:
    rows = [
        await measure("grpc-bare", args.algorithm, args),
        await measure("memory", args.algorithm, args),
        await measure_direct(None, args.algorithm, args),
    ]
    with tempfile.TemporaryDirectory(prefix="xgate-bench-rl-") as work_dir:
        async with run_redis(work_dir) as redis_server:
            rows.append(await measure(redis_server.url, args.algorithm, args, redis_server.pid))
            rows.append(await measure_direct(redis_server.url, args.algorithm, args, redis_server.pid))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"concurrency {args.concurrency}, at most {args.calls} calls or {args.seconds} s per backend")
        report(rows)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--algorithm", choices=("token_bucket", "gcra"), default="token_bucket")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # child: "grpc-bare", "memory" or a Redis URL
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        asyncio.run(serve_child(arguments.serve, arguments.algorithm))
    else:
        sys.exit(asyncio.run(main(arguments)))
