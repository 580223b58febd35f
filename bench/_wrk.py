"""wrk runs for the throughput benchmarks (Debian's wrk on loopback), and the table they print."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_P50 = re.compile(r"50%\s+([\d.]+)(us|ms|s)")
_P99 = re.compile(r"99%\s+([\d.]+)(us|ms|s)")
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_REQUESTS = re.compile(r"(\d+) requests in")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
SOCKET_ERRORS = ("connect", "read", "write", "timeout")


def wrk_counts(output: str) -> dict[str, int]:
    """What wrk's report counts besides the rate: requests, non-2xx answers, socket errors by kind (0 when
    wrk printed no such line)."""
    requests, non_2xx, socket = _REQUESTS.search(output), _NON_2XX.search(output), _SOCKET.search(output)
    errors = [int(found) for found in socket.groups()] if socket else [0] * len(SOCKET_ERRORS)
    return {
        "requests": int(requests.group(1)) if requests else 0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        **dict(zip(SOCKET_ERRORS, errors, strict=True)),
    }


def wrk_parser(doc: str | None) -> argparse.ArgumentParser:
    """The command line every wrk benchmark shares: run length, connections, threads, alternated rounds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per route, alternated (default 2)")
    return parser


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


@dataclass(frozen=True)
class WrkRun:
    """One wrk run: requests per second, median and p99 latency in ms, and whether wrk saw errors
    (non-2xx answers or socket errors)."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: bool
    output: str


def wrk_run(
    url: str, seconds: int, connections: int, threads: int, headers: Sequence[str] = (), script: Path | None = None
) -> WrkRun:
    """One bounded wrk run against `url` with extra `headers` ("name: value") and a Lua `script`, if any."""
    argv = ["wrk", "--latency", f"-t{threads}", f"-c{connections}", f"-d{seconds}s"]
    for header in headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    result = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30, check=True)
    rps, p50, p99 = _RPS.search(result.stdout), _P50.search(result.stdout), _P99.search(result.stdout)
    assert rps and p50 and p99, result.stdout
    p50_ms, p99_ms = (float(found.group(1)) * _UNIT[found.group(2)] for found in (p50, p99))
    errors = "Non-2xx" in result.stdout or "Socket errors" in result.stdout
    return WrkRun(float(rps.group(1)), p50_ms, p99_ms, errors, result.stdout)


def wrk(
    url: str, seconds: int, connections: int, threads: int, headers: Sequence[str] = (), script: Path | None = None
) -> tuple[float, float]:
    """(requests per second, p99 in ms) of one bounded wrk run."""
    run = wrk_run(url, seconds, connections, threads, headers, script)
    return run.rps, run.p99_ms


def best_table(results: dict[str, list[tuple[float, float]]], baseline: str) -> str:
    """Each route's runs, its best rate and that run's p99, and its share of the baseline's best rate."""
    best = {route: max(runs) for route, runs in results.items()}
    width = max(8, *map(len, results))
    head = f"{'route':{width}} {'rps (each run)':>28} {'best rps':>10} {'p99 ms (best run)':>18} {'of ' + baseline:>9}"
    lines = [head]
    for route, runs in results.items():
        each = ", ".join(f"{rps:,.0f}" for rps, _ in runs)
        share = best[route][0] / best[baseline][0]
        lines.append(f"{route:{width}} {each:>28} {best[route][0]:>10,.0f} {best[route][1]:>18.2f} {share:>9.1%}")
    return "\n".join(lines)
