"""Benchmark: Check calls per second and latency of the authz service with a trivial allow policy, next to a bare
grpc.aio Authorization handler.

Run from the repository: `.venv/bin/python bench/authz_service.py [--seconds 5] [--calls 20000]
[--concurrency 32] [--json]`.

The service runs in a child process (this file with the hidden `--serve` flag) so that it has a core of its
own; this process is the gRPC client: `concurrency` callers on one channel sending the same CheckRequest (a
route's context_extensions, six headers, a seven-claim jwt_authn payload in metadata_context) until `calls`
calls or `seconds` seconds, whichever comes first, after 500 warm-up calls. "per core" divides the calls by the
CPU seconds the service process used (from /proc).

Rows: `grpc-bare` answers OK at once (the grpc.aio ceiling on this machine); `inline`, `async` and `thread` are
the service with the same allow policy run each way (an `@inline` function, an `async def`, a plain function
in the thread pool); `*/direct` call the servicer's `check` in this process without gRPC: xgate's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as auth_v3
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from google.protobuf import struct_pb2

from xgate.authz import Allow, AuthorizationService, PolicyRegistry, Request, inline, serve
from xgate.authz.service import JWT_FILTER, JWT_PAYLOAD_KEY, POLICY_KEY, ROUTE_KEY
from xgate.supervisor import die_with_parent, terminate

WARMUP = 500
MODES = ("inline", "async", "thread")


# -- the policies (loaded by the child as "__main__:<name>") ------------------------------------------------


@inline
def allow_inline(request: Request, claims: dict[str, Any]) -> Allow:
    return Allow()


async def allow_async(request: Request, claims: dict[str, Any]) -> Allow:
    return Allow()


def allow_thread(request: Request, claims: dict[str, Any]) -> Allow:
    return Allow()


def registry(module: str) -> PolicyRegistry:
    policies = PolicyRegistry()
    errors = policies.load({mode: f"{module}:allow_{mode}" for mode in MODES})
    if errors:
        raise SystemExit(f"policies failed to load: {errors}")
    return policies


# -- the service child --------------------------------------------------------------------------------------


class BareService(auth_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: auth_v3.CheckRequest, context: grpc.aio.ServicerContext) -> auth_v3.CheckResponse:
        return auth_v3.CheckResponse(ok_response=auth_v3.OkHttpResponse())


async def serve_child(kind: str) -> None:
    if kind == "grpc-bare":
        bare = grpc.aio.server()
        auth_grpc.add_AuthorizationServicer_to_server(BareService(), bare)
        print(f"port {bare.add_insecure_port('127.0.0.1:0')}", flush=True)
        await bare.start()
        await bare.wait_for_termination()
        return
    server, port = await serve(registry("__main__"))
    print(f"port {port}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(0)


# -- the client ---------------------------------------------------------------------------------------------


def check_request(policy: str) -> auth_v3.CheckRequest:
    request = auth_v3.CheckRequest()
    attributes = request.attributes
    attributes.context_extensions[POLICY_KEY] = policy
    attributes.context_extensions[ROUTE_KEY] = "bench-route"
    attributes.source.address.socket_address.address = "127.0.0.1"
    http = attributes.request.http
    http.method, http.path = "GET", "/orders/42"
    http.headers.update(
        {
            ":authority": "api.example.com", ":method": "GET", ":path": "/orders/42", ":scheme": "http",
            "user-agent": "wrk", "authorization": "Bearer " + "x" * 300,
        }
    )  # fmt: skip
    payload = struct_pb2.Struct()
    payload.update(
        {
            "iss": "https://issuer.example.com", "sub": "user-42", "aud": "api", "exp": 2_000_000_000,
            "iat": 1_700_000_000, "roles": ["admin", "dev"], "tenant": "acme",
        }
    )  # fmt: skip
    attributes.metadata_context.filter_metadata[JWT_FILTER].fields[JWT_PAYLOAD_KEY].struct_value.CopyFrom(payload)
    return request


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start_child(kind: str) -> tuple[asyncio.subprocess.Process, int]:
    argv = [sys.executable, __file__, "--serve", kind]
    proc = await asyncio.create_subprocess_exec(
        *die_with_parent(argv), stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 15)
    if not line.startswith(b"port "):
        await terminate(proc, 2)
        raise RuntimeError(f"service child did not start: {line!r}")
    return proc, int(line.split()[1])


Call = Callable[[auth_v3.CheckRequest], Awaitable[auth_v3.CheckResponse]]


async def drive(
    call: Call, request: auth_v3.CheckRequest, calls: int, seconds: float, concurrency: int
) -> tuple[list[float], int, float]:
    """`concurrency` callers after the warm-up; returns (latencies in s, answers that were not OK, wall s)."""
    latencies: list[float] = []
    refused = 0
    sent = 0

    async def caller(budget: int, deadline: float, record: bool) -> None:
        nonlocal sent, refused
        while sent < budget and time.monotonic() < deadline:
            sent += 1
            started = time.perf_counter()
            answer = await call(request)
            if record:
                latencies.append(time.perf_counter() - started)
                refused += not answer.HasField("ok_response")

    await asyncio.gather(*(caller(WARMUP, time.monotonic() + 10, False) for _ in range(concurrency)))
    sent = 0
    started = time.monotonic()
    await asyncio.gather(*(caller(calls, started + seconds, True) for _ in range(concurrency)))
    return latencies, refused, time.monotonic() - started


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def row(name: str, latencies: list[float], refused: int, wall: float, cpu: float) -> dict[str, Any]:
    done = len(latencies)
    return {
        "service": name,
        "calls": done,
        "refused": refused,
        "seconds": round(wall, 3),
        "calls_per_s": round(done / wall),
        "service_cpu_s": round(cpu, 2),
        "per_service_core": round(done / cpu) if cpu else None,
        "p50_ms": round(statistics.median(latencies) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
    }


async def measure(kind: str, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    proc, port = await start_child(kind)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = auth_grpc.AuthorizationStub(channel)
            cpu_before = cpu_seconds(proc.pid)
            latencies, refused, wall = await drive(
                lambda request: stub.Check(request, timeout=5),
                check_request(policy),
                args.calls,
                args.seconds,
                args.concurrency,
            )
            cpu = cpu_seconds(proc.pid) - cpu_before
    finally:
        await terminate(proc, 5)
    return row(kind if kind == "grpc-bare" else policy, latencies, refused, wall, cpu)


async def measure_direct(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    service = AuthorizationService(registry(__name__))
    try:
        cpu_before = time.process_time()
        latencies, refused, wall = await drive(
            service.check, check_request(policy), args.calls, args.seconds, args.concurrency
        )
        cpu = time.process_time() - cpu_before
    finally:
        service.close()
    return row(f"{policy}/direct", latencies, refused, wall, cpu)


def report(rows: list[dict[str, Any]]) -> None:
    columns = [
        ("service", "service"),
        ("calls", "calls"),
        ("calls_per_s", "calls/s"),
        ("per_service_core", "per service core"),
        ("service_cpu_s", "service CPU s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("refused", "refused"),
    ]
    widths = [max(len(title), *(len(str(row[key])) for row in rows)) for key, title in columns]
    print("  ".join(title.rjust(width) for (_, title), width in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[key]).rjust(width) for (key, _), width in zip(columns, widths, strict=True)))


async def main(args: argparse.Namespace) -> int:
    rows = [await measure("grpc-bare", "inline", args)]
    rows += [await measure("xgate", mode, args) for mode in MODES]
    rows += [await measure_direct(mode, args) for mode in MODES]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"concurrency {args.concurrency}, at most {args.calls} calls or {args.seconds} s per row")
        report(rows)
    return 0 if all(row["refused"] == 0 for row in rows) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # child: "grpc-bare" or "xgate"
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        asyncio.run(serve_child(arguments.serve))
    else:
        sys.exit(asyncio.run(main(arguments)))
