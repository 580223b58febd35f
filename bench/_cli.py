"""The propagation benchmarks' command line, summaries and the parts of the report they share.

Each benchmark (propagation.py, etcd_propagation.py) passes its own measure/summarize/print_report and the
options only it has; `main` runs the sizes and prints the JSON or the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import _stalls
from _harness import Change, dist, pair

KINDS = ("all", "edit", "add")
# The line under each probe's: the floor those gaps put under the p99 of work of that length (Stalls.job).
JOBS_TITLE = "so a job of N ms of CPU alone there takes, p50/p99 ms"


class SizeResult(Protocol):
    """What main needs of a benchmark's result for one size."""

    routes: int
    changes: list[Change]


R = TypeVar("R", bound=SizeResult)


# -- command line ---------------------------------------------------------------------------------------------


def _sizes(value: str) -> list[int]:
    sizes = [int(part) for part in value.split(",") if part.strip()]
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError("give route counts >= 2, e.g. 100,10000")
    return sizes


def host_options(parser: argparse.ArgumentParser) -> None:
    """--hosts and --route-tables: the routes spread over N hosts, as one table or a table per host."""
    parser.add_argument("--hosts", type=int, default=0, help="spread the routes over N hosts (default: none)")
    parser.add_argument(
        "--route-tables",
        choices=("one", "per_host"),
        default="one",
        help="the listener's route_tables (per_host needs --hosts)",
    )


def parse_args(
    argv: list[str] | None,
    doc: str | None,
    serve_metavar: str,
    extra: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
    changes: tuple[int, str] = (60, "60"),
) -> argparse.Namespace:
    """The options every propagation benchmark has; `extra` adds a benchmark's own (shown after --json);
    `changes`: the default of --changes and how its help says it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument(
        "--changes", type=int, default=changes[0], help=f"measured changes per size (default {changes[1]})"
    )
    parser.add_argument("--routes", type=_sizes, default=[100, 10000], help="route counts (default 100,10000)")
    parser.add_argument("--json", action="store_true", help="print JSON (summaries and every change)")
    extra(parser)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a change may take (default 10)")
    parser.add_argument(
        "--poll-interval-ms",
        type=float,
        default=1.0,
        help="sleep between polls; 0 polls flat out but then competes with Envoy for 2 cores",
    )
    parser.add_argument("--concurrency", type=int, default=1, choices=(1, 2), help="Envoy worker threads")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="control plane on CPU 0, everything else (Envoy, etcd, poller) on CPU 1, as on separate machines",
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=_stalls.SECONDS,
        help="before each size and after the last, how long bench/_stalls.py probes the machine (0: not at all)",
    )
    parser.add_argument("--serve-controlplane", metavar=serve_metavar, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


PIN_VARIABLE = "XGATE_BENCH_CONTROLPLANE_CPU"


def main(
    args: argparse.Namespace,
    out: IO[str],
    *,
    serve: Callable[[str], None],
    measure: Callable[[int, int, argparse.Namespace, Path], Awaitable[R]],
    summarize: Callable[[R], dict[str, Any]],
    print_report: Callable[[list[dict[str, Any]], argparse.Namespace, IO[str]], None],
    work_prefix: str,
) -> int:
    """Child mode with --serve-controlplane; otherwise measure every size in a temporary directory, print the
    JSON (--json) or the report, write the JSON to --save if the benchmark has that option. Exit code 1 if a
    change failed."""
    if args.serve_controlplane:
        if cpu := os.environ.get(PIN_VARIABLE):
            os.sched_setaffinity(0, {int(cpu)})
        serve(args.serve_controlplane)
        return 0
    if args.pin:
        # Children inherit CPU 1; the control plane child moves itself to CPU 0.
        os.sched_setaffinity(0, {1})
        os.environ[PIN_VARIABLE] = "0"

    machine: list[tuple[str, list[_stalls.Stalls]]] = []

    def probe(when: str) -> None:
        if args.stall_seconds > 0:
            machine.append((when, _stalls.measure(args.stall_seconds)))

    async def run_all() -> list[R]:
        results = []
        with tempfile.TemporaryDirectory(prefix=work_prefix) as name:
            for routes in args.routes:
                probe(f"before {routes:,} routes")
                results.append(await measure(routes, args.changes, args, Path(name) / f"routes-{routes}"))
        probe("after")
        return results

    results = asyncio.run(run_all())
    summaries = [summarize(result) for result in results]
    data = {
        "summaries": summaries,
        "changes": {r.routes: [asdict(c) for c in r.changes] for r in results},
        "machine_stalls": {when: [stall.summary() for stall in stalls] for when, stalls in machine},
    }
    if getattr(args, "save", None):
        args.save.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if args.json:
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        print_report(summaries, args, out)
        if machine:
            print(f"\nmachine: a busy thread per CPU for {args.stall_seconds:g} s (bench/_stalls.py), gaps", file=out)
            for when, stalls in machine:
                print(f"  {when:>20}: {_stalls.line(stalls)}", file=out)
                print(f"  {'':>20}  {JOBS_TITLE}: {_stalls.jobs_line(stalls)}", file=out)
    return 1 if any(s["by_kind"]["all"]["failures"] for s in summaries) else 0


# -- figures --------------------------------------------------------------------------------------------------


def by_kind(changes: list[Change], stages: Sequence[str], kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    """Per kind of change (all, edit, add): counts and the distributions of the total, baseline and `stages`."""
    rows: dict[str, Any] = {}
    for kind in kinds:
        picked = [c for c in changes if kind in ("all", c.kind)]
        rows[kind] = {
            "changes": len(picked),
            "failures": sum(c.total_ms is None for c in picked),
            "unexpected_answers": sum(c.unexpected for c in picked),
            "total_ms": dist([c.total_ms for c in picked if c.total_ms is not None]),
            "baseline_ms": dist([c.baseline_ms for c in picked]),
            "stages_ms": {
                stage: dist([v for c in picked if (v := c.stages_ms.get(stage)) is not None]) for stage in stages
            },
        }
    return rows


def print_totals(summaries: list[dict[str, Any]], write: Callable[..., None]) -> None:
    """The first table: total, baseline, control plane and Envoy per size and kind of change."""
    write(
        f"{'routes':>6} {'kind':>4} {'changes':>7} {'p50_ms':>8} {'p90_ms':>8} {'p99_ms':>8} {'max_ms':>8} "
        f"{'failures':>8}  | {'baseline p50/p99':>16} | {'control plane p50/p99':>21} | {'envoy p50/p99':>14}"
    )
    for summary in summaries:
        for kind, row in summary["by_kind"].items():
            if not row["changes"]:
                continue
            total, stages = row["total_ms"], row["stages_ms"]
            write(
                f"{summary['routes']:>6} {kind:>4} {row['changes']:>7} {total['p50']:>8.1f} {total['p90']:>8.1f} "
                f"{total['p99']:>8.1f} {total['max']:>8.1f} {row['failures']:>8}  | "
                f"{pair(row['baseline_ms']):>16} | {pair(stages['controlplane']):>21} | "
                f"{pair(stages['envoy']):>14}"
            )


WHERE_THE_TIME_GOES = (
    "\nwhere the time goes, all changes, p50/p99 ms (control plane timestamps from hooks in its process):"
)


def envoy_cell(summary: dict[str, Any]) -> str:
    """The end of a "where the time goes" row: Envoy's ACK and first ok, its RDS counters, odd answers."""
    stages = summary["by_kind"]["all"]["stages_ms"]
    rds = summary["envoy_rds"]
    return (
        f"{pair(stages['envoy_ack']):>12} {pair(stages['envoy']):>11} | "
        f"{rds.get('update_success', -1):>7}/{rds.get('update_rejected', -1):<7} "
        f"{summary['by_kind']['all']['unexpected_answers']:>11}"
    )


ENVOY_HEADER = f"{'envoy: ->ACK':>12} {'->first ok':>11} | {'RDS ok/rejected':>15} {'odd answers':>11}"


def common_notes(processes: str) -> list[str]:
    """The notes after a benchmark's own: Envoy, the baseline, odd answers, p99. `processes`: "both" or "all"."""
    return [
        "envoy = RDS written -> t1 (so total = control plane + envoy); ->ACK = RDS written -> Envoy's ACK seen",
        f"  by the control plane. Clocks: CLOCK_MONOTONIC in {processes} processes.",
        "baseline = the same poll loop timing a no-op change that lands at a random moment on a route already",
        "  served: the poller's detection delay, included in total and envoy; subtract it.",
        "odd answers = anything but the old or the new answer while a change propagated (should be 0).",
        "p99 of < 100 samples is interpolated between the two largest values.",
    ]
