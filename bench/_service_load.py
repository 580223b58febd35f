"""What the gRPC service benchmarks (authz_service.py, ratelimit_service.py) share: the service in a child
process (with a core of its own and its CPU time read from /proc), closed-loop callers, and the table."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from _harness import percentile
from xgate.supervisor import die_with_parent, terminate

WARMUP = 500
Request = TypeVar("Request")
Response = TypeVar("Response")


class _Server(Protocol):
    async def wait_for_termination(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...


async def serve_bare(register: Callable[[grpc.aio.Server], None]) -> None:
    """Child: a grpc.aio server with the handler `register` adds, on any port (printed as "port N")."""
    server = grpc.aio.server()
    register(server)
    print(f"port {server.add_insecure_port('127.0.0.1:0')}", flush=True)
    await server.start()
    await server.wait_for_termination()


async def serve_started(server: _Server, port: int) -> None:
    """Child: announce the port of a started xgate service ("port N") and serve until killed."""
    print(f"port {port}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(0)


async def start_child(script: str, *options: str) -> tuple[asyncio.subprocess.Process, int]:
    """`script --serve ...options` in a new session, dying with this process; returns it and its port."""
    argv = [sys.executable, script, "--serve", *options]
    proc = await asyncio.create_subprocess_exec(
        *die_with_parent(argv), stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 15)
    if not line.startswith(b"port "):
        await terminate(proc, 2)
        raise RuntimeError(f"service child did not start: {line!r}")
    return proc, int(line.split()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    call: Callable[[Request], Awaitable[Response]],
    requests: Sequence[Request],
    counted: Callable[[Response], bool],
    calls: int,
    seconds: float,
    concurrency: int,
) -> tuple[list[float], int, float]:
    """`concurrency` callers sending `requests` in turn through `call`, after WARMUP calls, until `calls` calls or
    `seconds` seconds; returns (latencies in s, answers `counted` said yes to, wall s)."""
    latencies: list[float] = []
    count = 0
    sent = 0

    async def caller(budget: int, deadline: float, record: bool) -> None:
        nonlocal sent, count
        while sent < budget and time.monotonic() < deadline:
            request = requests[sent % len(requests)]
            sent += 1
            started = time.perf_counter()
            answer = await call(request)
            if record:
                latencies.append(time.perf_counter() - started)
                count += counted(answer)

    await asyncio.gather(*(caller(WARMUP, time.monotonic() + 10, False) for _ in range(concurrency)))
    sent = 0
    started = time.monotonic()
    await asyncio.gather(*(caller(calls, started + seconds, True) for _ in range(concurrency)))
    return latencies, count, time.monotonic() - started


def latency_ms(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(latencies) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 99) * 1e3, 3),
    }


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Rows as right-aligned columns: (row key, title) each."""
    widths = [max(len(title), *(len(str(row[key])) for row in rows)) for key, title in columns]
    print("  ".join(title.rjust(width) for (_, title), width in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[key]).rjust(width) for (key, _), width in zip(columns, widths, strict=True)))
