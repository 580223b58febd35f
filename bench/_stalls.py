"""How often this machine stops a running thread: the floor under every p99 the benchmarks print.

    python bench/_stalls.py [--seconds 2]

One busy thread per CPU (a child process pinned to it) reads the clock in a loop for `--seconds`; a gap of
more than 1 ms between two reads is time the thread was not running although it never waited. On these 2-core
VMs such gaps come and go with the host's load (seen: none over 2.5 ms in 5 s, and 12-25 a second minutes
later). /proc/stat's steal counter sums the lost time (seen: 180 ms in 10 s next to 8 gaps a second), but only
as a total in 10 ms ticks; a p99 depends on how long each gap is. The benchmarks run it before and after their
measurements, when nothing else of theirs runs, so the figures next to a p99 say how noisy the machine was.
`Stalls.job` turns the gaps into that floor for a given stretch of work: how long a job needing `ms` of CPU
would have taken, started at any moment of the probe, with nothing else on its CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

SECONDS = 2.0  # how long a probe spins by default
KEPT = 0.0001  # gaps kept (for Stalls.job) when longer than this, in seconds: 0.1 ms
JOB_STARTS = 2000  # moments at which Stalls.job starts its job, evenly over the probe
JOBS_MS = (1.0, 2.5, 5.0)  # the job lengths the reports show


class Stalls(NamedTuple):
    cpu: int
    per_second: float  # gaps of more than 1 ms
    over_2_5ms: float  # per second
    max_ms: float
    seconds: float = 0.0  # how long the probe spun
    gaps: tuple[tuple[float, float], ...] = ()  # (start, length) in s from the probe's start, each > KEPT

    def __str__(self) -> str:
        return (
            f"CPU {self.cpu}: {self.per_second:.1f}/s over 1 ms, {self.over_2_5ms:.1f}/s over 2.5 ms, "
            f"max {self.max_ms:.1f} ms"
        )

    def summary(self) -> dict[str, object]:
        """The figures and the JOBS_MS jobs' [p50, p99], without the gaps themselves (for JSON)."""
        figures = {"cpu": self.cpu, "per_second": self.per_second, "over_2_5ms": self.over_2_5ms}
        return figures | {"max_ms": self.max_ms, "jobs_ms": {f"{ms:g}": list(self.job(ms)) for ms in JOBS_MS}}

    def job(self, ms: float) -> tuple[float, float]:
        """p50 and p99, in ms, of the wall time of a job needing `ms` of CPU, started at JOB_STARTS moments
        evenly over the probe (the last `ms` left out), each stretched by the gaps it meets."""
        need = ms / 1e3
        span = self.seconds - need
        if span <= 0:
            return ms, ms
        walls = []
        for index in range(JOB_STARTS):
            begin = span * index / JOB_STARTS
            now, left = begin, need
            for start, length in self.gaps:
                if start + length <= now:
                    continue
                if start > now:
                    if start - now >= left:
                        break
                    left -= start - now
                now = start + length  # a job started inside a gap begins at its end
            walls.append((now + left - begin) * 1e3)
        cuts = statistics.quantiles(walls, n=100)
        return cuts[49], cuts[98]


def busy(seconds: float) -> dict[str, object]:
    """Spin for `seconds` and count the gaps between clock reads (run pinned to one CPU); keep those > KEPT."""
    over_1 = over_2_5 = 0
    longest = 0.0
    gaps: list[tuple[float, float]] = []
    clock = time.perf_counter
    last = start = clock()
    end = start + seconds
    while last < end:
        now = clock()
        gap = now - last
        if gap > KEPT:
            gaps.append((last - start, gap))
            if gap > 0.001:
                over_1 += 1
                over_2_5 += gap > 0.0025
                longest = max(longest, gap)
        last = now
    elapsed = last - start
    return {
        "per_second": over_1 / elapsed,
        "over_2_5ms": over_2_5 / elapsed,
        "max_ms": longest * 1e3,
        "seconds": elapsed,
        "gaps": gaps,
    }


def measure(seconds: float = SECONDS) -> list[Stalls]:
    """One busy child per CPU, all at once; their figures."""
    children = []
    for cpu in range(os.cpu_count() or 1):
        argv = [sys.executable, __file__, "--child", "--seconds", str(seconds)]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        os.sched_setaffinity(child.pid, {cpu})
        children.append((cpu, child))
    stalls = []
    for cpu, child in children:
        out, _ = child.communicate(timeout=seconds + 30)
        figures = json.loads(out)
        gaps = tuple((start, length) for start, length in figures["gaps"])
        stalls.append(
            Stalls(cpu, figures["per_second"], figures["over_2_5ms"], figures["max_ms"], figures["seconds"], gaps)
        )
    return stalls


def line(stalls: list[Stalls]) -> str:
    return "; ".join(str(item) for item in stalls)


def jobs_line(stalls: list[Stalls], lengths_ms: tuple[float, ...] = JOBS_MS) -> str:
    """What the gaps make of jobs of `lengths_ms` of CPU on each CPU: "p50/p99" wall ms each."""
    parts = []
    for item in stalls:
        walls = ", ".join(
            f"{ms:g} -> {p50:.1f}/{p99:.1f}" for ms, (p50, p99) in ((ms, item.job(ms)) for ms in lengths_ms)
        )
        parts.append(f"CPU {item.cpu}: {walls}")
    return "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(busy(args.seconds)))
    else:
        stalls = measure(args.seconds)
        print(line(stalls))
        print(f"jobs of N ms of CPU, wall p50/p99 ms: {jobs_line(stalls)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
