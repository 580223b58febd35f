"""How often this machine stops a running thread: the floor under every p99 the benchmarks print.

    python bench/_stalls.py [--seconds 2]

One busy thread per CPU (a child process pinned to it) reads the clock in a loop for `--seconds`; a gap of
more than 1 ms between two reads is time the thread was not running although it never waited. On these 2-core
VMs such gaps come and go with the host's load (seen: none over 2.5 ms in 5 s, and 12-25 a second minutes
later). /proc/stat's steal counter sums the lost time (seen: 180 ms in 10 s next to 8 gaps a second), but only
as a total in 10 ms ticks; a p99 depends on how long each gap is. The benchmarks run it before and after their
measurements, when nothing else of theirs runs, so the figures next to a p99 say how noisy the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import NamedTuple

SECONDS = 2.0  # how long a probe spins by default


class Stalls(NamedTuple):
    cpu: int
    per_second: float  # gaps of more than 1 ms
    over_2_5ms: float  # per second
    max_ms: float

    def __str__(self) -> str:
        return (
            f"CPU {self.cpu}: {self.per_second:.1f}/s over 1 ms, {self.over_2_5ms:.1f}/s over 2.5 ms, "
            f"max {self.max_ms:.1f} ms"
        )


def busy(seconds: float) -> dict[str, float]:
    """Spin for `seconds` and count the gaps between clock reads (run pinned to one CPU)."""
    over_1 = over_2_5 = 0
    longest = 0.0
    clock = time.perf_counter
    last = start = clock()
    end = start + seconds
    while last < end:
        now = clock()
        gap = now - last
        if gap > 0.001:
            over_1 += 1
            over_2_5 += gap > 0.0025
            longest = max(longest, gap)
        last = now
    elapsed = last - start
    return {"per_second": over_1 / elapsed, "over_2_5ms": over_2_5 / elapsed, "max_ms": longest * 1e3}


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
        stalls.append(Stalls(cpu, figures["per_second"], figures["over_2_5ms"], figures["max_ms"]))
    return stalls


def line(stalls: list[Stalls]) -> str:
    return "; ".join(str(item) for item in stalls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(busy(args.seconds)))
    else:
        print(line(measure(args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
