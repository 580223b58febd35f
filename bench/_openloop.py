"""An open-loop HTTP/1.1 load generator: requests at a fixed rate, latency measured from each request's
scheduled send time, so a stall is charged to every request it delays (no coordinated omission).

    python bench/_openloop.py URL --rate 2500 --seconds 10 [--connections 64] [-H 'Name: value'] [--json]

wrk (4.1, Debian's) is closed-loop: a slow answer delays that connection's next request, and the requests
that should have been sent meanwhile are never measured. Here request i is due at start + i / rate whatever
happened before; it waits for a free keep-alive connection (of `--connections`, opened up front) and its
latency is answer time - due time, so waiting for a connection and a late scheduler both count. Runs in a
process of its own (the benchmark starts it) so it does not share an event loop or GIL with what it measures.

bench/openloop.c does the same in C, with the same command line and output, and is what the benchmarks run
(`generator_argv("c")` compiles it on demand): it costs less CPU per request on a machine Envoy shares, and it
sleeps on a timerfd, where asyncio rounds each sleep up to whole milliseconds. This one stays as the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

GENERATORS = ("c", "python")
_C_SOURCE = Path(__file__).with_name("openloop.c")
_GCC = ("gcc", "-O2", "-Wall", "-Wextra")


def generator_argv(kind: str) -> list[str]:
    """The command starting the `kind` generator (one of GENERATORS), to which URL and options are added; "c"
    compiles bench/openloop.c first if this source and these flags have no binary in the cache yet."""
    if kind == "python":
        return [sys.executable, str(Path(__file__).resolve())]
    if kind != "c":
        raise ValueError(f"unknown generator {kind!r}, expected one of {GENERATORS}")
    source = _C_SOURCE.read_bytes()
    key = hashlib.sha256(source + "\0".join(_GCC).encode()).hexdigest()[:16]
    binary = _cache_dir() / f"openloop-{key}"
    if not binary.exists():
        # Compiled under a name of its own, then renamed: a concurrent run never starts a half-written binary.
        partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
        try:
            subprocess.run([*_GCC, "-o", str(partial), str(_C_SOURCE), "-lm"], check=True)
        except (OSError, subprocess.CalledProcessError) as error:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"cannot compile {_C_SOURCE.name} ({error}); try --generator python") from None
        os.replace(partial, binary)
    return [str(binary)]


def _cache_dir() -> Path:
    """This user's directory for compiled generators, under the temp dir; refused if someone else could write
    there, since what it holds gets run."""
    path = Path(tempfile.gettempdir()) / f"xgate-openloop-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    status = path.stat()
    if status.st_uid != os.getuid() or status.st_mode & 0o022:
        raise RuntimeError(f"{path} is not this user's alone; remove it")
    return path


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one request, read the whole answer; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run(url: str, rate: float, seconds: float, connections: int, headers: list[str]) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{header}\r\n" for header in headers)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}\r\n".encode()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await _connect(host, port))
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    latencies: list[float] = []
    failures = 0

    async def one(due: float) -> None:
        nonlocal failures
        reader, writer = await pool.get()
        try:
            status = await _exchange(reader, writer, request)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            failures += 1
            writer.close()
            pool.put_nowait(await _connect(host, port))
            return
        latencies.append(loop.time() - due)
        if status != 200:
            failures += 1
        pool.put_nowait((reader, writer))

    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.05
    sent = 0
    while sent < total:
        now = loop.time()
        while sent < total and start + sent / rate <= now:
            task = asyncio.create_task(one(start + sent / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
    if tasks:
        _, unanswered = await asyncio.wait(tasks, timeout=30)
        failures += len(unanswered)
    elapsed = loop.time() - start
    while not pool.empty():
        pool.get_nowait()[1].close()
    latencies.sort()

    def percentile(share: float) -> float:
        return latencies[min(len(latencies) - 1, int(share * len(latencies)))] * 1e3 if latencies else float("nan")

    return {
        "rate": rate,
        "achieved": len(latencies) / elapsed,
        "requests": float(total),
        "failures": float(failures),
        "p50_ms": percentile(0.50),
        "p90_ms": percentile(0.90),
        "p99_ms": percentile(0.99),
        "max_ms": latencies[-1] * 1e3 if latencies else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("-H", "--header", action="append", default=[])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.rate, args.seconds, args.connections, args.header))
    print(json.dumps(result) if args.json else "  ".join(f"{key} {value:,.2f}" for key, value in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
