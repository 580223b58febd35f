"""Benchmark: a saved config file -> the first correct response through a real Envoy, and where the time goes.

Run from the repository: `.venv/bin/python bench/propagation.py [--changes N] [--routes 100,10000] [--json]`.
See bench/README.md for the method. The control plane runs in a child process (this same file, started with
the hidden `--serve-controlplane` flag) whose classes are wrapped to report CLOCK_MONOTONIC timestamps on
stdout; the poller runs here, alone, on a blocking keep-alive connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from _harness import (
    ADD_EVERY,
    LISTENER,
    ROUTE_TYPE,
    UPSTREAMS,
    WARMUP,
    ControlPlaneChild,
    Poller,
    dist,
    emit,
    install_ads_hooks,
    now,
    pair,
    print_log_tails,
    rds_stats,
)
from _harness import ms as _ms
from xgate.pipeline import revision_of
from xgate.proxy.bootstrap import build_bootstrap
from xgate.proxy.process import EnvoyProcess
from xgate.testing.gateway import free_port

# -- the config under test ------------------------------------------------------------------------------------


@dataclass
class ConfigState:
    """What the config file says: the probe's generation and the routes added so far."""

    routes: int
    port: int
    generation: int = 0
    added: list[int] = field(default_factory=list)

    def render(self) -> str:
        """`routes` routes in all: the probe, the steady route and `/svc-<n>/` prefixes to a few upstreams."""
        lines = [
            "xgate: v1",
            "listeners:",
            f"  - {{name: {LISTENER}, address: 127.0.0.1, port: {self.port}}}",
            "upstreams:",
            # Never requested: a closed port is fine, and the clusters do not change between revisions.
            *(f"  - {{name: pool-{u}, endpoints: ['127.0.0.1:9']}}" for u in range(UPSTREAMS)),
            "routes:",
            "  - {name: bench-probe, match: {path: {exact: /probe}},"
            f" direct_response: {{status: 200, body: gen-{self.generation}}}}}",
            "  - {name: bench-steady, match: {path: {exact: /steady}}, direct_response: {status: 200, body: steady}}",
            *(
                f"  - {{name: svc-{n}, match: {{path: {{prefix: /svc-{n}/}}}}, upstream: pool-{n % UPSTREAMS}}}"
                for n in range(max(0, self.routes - 2))
            ),
            *(
                f"  - {{name: new-{k}, match: {{path: {{exact: /new-{k}}}}},"
                f" direct_response: {{status: 200, body: new-{k}}}}}"
                for k in self.added
            ),
        ]
        return "\n".join(lines) + "\n"


# -- the control plane child: run_controlplane with timestamped hooks ----------------------------------------


def serve_controlplane(config_path: str) -> None:
    """Child mode: serve `config_path` and print one JSON line per hooked event (monotonic seconds)."""
    import logging

    from xgate.controlplane import ControlPlane
    from xgate.runtime import Bound, run_controlplane
    from xgate.sources.file import FileSource
    from xgate.sources.revision import Revision

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    original_read = FileSource._read

    async def read(self: FileSource) -> Revision | None:
        started = now()
        revision = await original_read(self)
        if revision is not None:
            emit(ev="read", rev=revision.revision, t=started, done=now(), ok=revision.error is None)
        return revision

    FileSource._read = read  # type: ignore[method-assign]
    install_ads_hooks()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

        def ready(bound: Bound) -> None:
            emit(ev="ready", xds=bound.xds[1], status=bound.status[1])

        await run_controlplane(
            config_path, xds=("127.0.0.1", 0), status=("127.0.0.1", 0), on_ready=ready, stop=stop, plane=ControlPlane()
        )

    asyncio.run(main())


def _child(config_path: Path, log_path: Path) -> ControlPlaneChild:
    argv = [sys.executable, str(Path(__file__).absolute()), "--serve-controlplane", str(config_path)]
    return ControlPlaneChild(argv, log_path)


# -- one size -------------------------------------------------------------------------------------------------


@dataclass
class Change:
    kind: str  # "edit" (a direct response body) or "add" (a new route)
    total_ms: float | None  # None: timed out
    baseline_ms: float
    unexpected: int
    stages_ms: dict[str, float | None]


@dataclass
class SizeResult:
    routes: int
    config_bytes: int
    changes: list[Change]
    envoy_rds: dict[str, int]
    poll_errors: int


def _stages(events: dict[str, dict[str, Any]], t0: float, t1: float | None) -> dict[str, float | None]:
    """Split t0 (os.replace) -> t1 (first correct response) at the control plane's timestamps."""
    read = events.get("read", {})
    written = events.get(f"written:{ROUTE_TYPE}", {}).get("t")
    return {
        "watch": _ms(read.get("t"), t0),  # os.replace -> the file watcher hands the event over
        "parse": _ms(read.get("done"), read.get("t")),  # read + YAML + schema validation
        "compile": _ms(events.get("set", {}).get("t"), read.get("done")),  # IR + translate + pack
        "push": _ms(written, events.get("set", {}).get("t")),  # snapshot set -> RDS response written
        "controlplane": _ms(written, t0),
        "envoy": _ms(t1, written),  # RDS written -> first correct response
        "envoy_ack": _ms(events.get(f"ack:{ROUTE_TYPE}", {}).get("t"), written),
    }


def run_changes(
    state: ConfigState, config_path: Path, plane: ControlPlaneChild, poller: Poller, count: int, timeout: float
) -> list[Change]:
    changes: list[Change] = []
    for index in range(1, count + WARMUP + 1):
        # Baseline: the same loop timing a "change" that needs no control plane. It lands at a random moment
        # t while the poller is already polling a route that is served; the answer counts when its request
        # was sent at or after t. That is the detection delay (poll interval + one request) a real change has.
        baseline_ms = poller.baseline_ms(timeout)

        kind = "add" if index % ADD_EVERY == 0 else "edit"
        if kind == "add":
            state.added.append(index)
            path, wanted = f"/new-{index}", (200, f"new-{index}".encode())
            allowed = {(404, b"")}
        else:
            old = (200, f"gen-{state.generation}".encode())
            state.generation += 1
            path, wanted, allowed = "/probe", (200, f"gen-{state.generation}".encode()), {old}
        text = state.render()
        revision = revision_of(text)
        temporary = config_path.with_name(f".{config_path.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        t0 = now()
        os.replace(temporary, config_path)
        t1, unexpected = poller.wait_for(path, wanted, allowed, t0 + timeout)
        # Do not start the next change before Envoy ACKed this one (or it got lost): changes must not overlap.
        plane.wait_event(revision, f"ack:{ROUTE_TYPE}", timeout if t1 is not None else 1.0)
        if t1 is None:  # resynchronise before the next change
            poller.wait_for(path, wanted, set(), now() + timeout)
        if index > WARMUP:
            stages = _stages(plane.events(revision), t0, t1)
            changes.append(Change(kind, _ms(t1, t0), baseline_ms, unexpected, stages))
        time.sleep(random.uniform(0.02, 0.06))  # decorrelate from timers in Envoy and the watcher
    return changes


async def measure(routes: int, count: int, args: argparse.Namespace, work: Path) -> SizeResult:
    """Start a control plane child and an Envoy on a `routes`-route config; time `count` changes."""
    work.mkdir()
    state = ConfigState(routes=routes, port=free_port())
    config_path = work / "gateway.yaml"
    text = state.render()
    config_path.write_text(text, encoding="utf-8")
    plane = _child(config_path, work / "controlplane.log")
    envoy: EnvoyProcess | None = None
    envoy_log = (work / "envoy.log").open("wb")
    poller = Poller(state.port, args.poll_interval_ms / 1000)
    try:
        xds_port = plane.wait_ready(120)
        bootstrap = build_bootstrap(
            node_id="bench", node_cluster="bench", xds_servers=[("127.0.0.1", xds_port)], admin_port=0
        )
        envoy = EnvoyProcess(
            bootstrap,
            work / "envoy",
            concurrency=args.concurrency,
            output=envoy_log,
            extra_args=["--drain-time-s", "1"],
        )
        await envoy.start()
        await envoy.wait_ready(120)
        if poller.wait_for("/probe", (200, b"gen-0"), set(), now() + 60)[0] is None:
            raise RuntimeError("Envoy did not serve the initial config within 60 s")
        plane.wait_event(revision_of(text), f"ack:{ROUTE_TYPE}", 10)
        # The poller blocks this event loop on purpose: nothing else runs on it while measuring.
        changes = run_changes(state, config_path, plane, poller, count, args.timeout)
        rds = await rds_stats(envoy)
        return SizeResult(routes, len(text), changes, rds, poller.errors)
    except BaseException:
        print_log_tails([work / "controlplane.log", work / "envoy.log"])
        raise
    finally:
        poller.close()
        if envoy is not None:
            await envoy.stop()
        plane.stop()
        envoy_log.close()


# -- figures --------------------------------------------------------------------------------------------------


def _values(changes: list[Change], stage: str) -> list[float]:
    return [v for c in changes if (v := c.stages_ms.get(stage)) is not None]


def summarize(result: SizeResult) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for kind in ("all", "edit", "add"):
        picked = [c for c in result.changes if kind in ("all", c.kind)]
        rows[kind] = {
            "changes": len(picked),
            "failures": sum(c.total_ms is None for c in picked),
            "unexpected_answers": sum(c.unexpected for c in picked),
            "total_ms": dist([c.total_ms for c in picked if c.total_ms is not None]),
            "baseline_ms": dist([c.baseline_ms for c in picked]),
            "stages_ms": {
                s: dist(_values(picked, s))
                for s in ("watch", "parse", "compile", "push", "controlplane", "envoy", "envoy_ack")
            },
        }
    return {
        "routes": result.routes,
        "config_bytes": result.config_bytes,
        "envoy_rds": result.envoy_rds,
        "poll_errors": result.poll_errors,
        "by_kind": rows,
    }


def print_report(summaries: list[dict[str, Any]], args: argparse.Namespace, out: IO[str]) -> None:
    write = functools.partial(print, file=out)

    write(
        f"file change (os.replace) -> first correct response through Envoy; {args.changes} changes per size "
        f"({WARMUP} warm-up changes not counted), every {ADD_EVERY}th adds a route, the others edit a "
        f"direct response; Envoy --concurrency {args.concurrency}; poll interval {args.poll_interval_ms} ms"
    )
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
    write("\nwhere the time goes, all changes, p50/p99 ms (control plane timestamps from hooks in its process):")
    write(
        f"{'routes':>6} {'config':>8} | {'watch':>11} {'parse':>11} {'compile':>11} {'push':>11} | "
        f"{'envoy: ->ACK':>12} {'->first ok':>11} | {'RDS ok/rejected':>15} {'odd answers':>11}"
    )
    for summary in summaries:
        stages = summary["by_kind"]["all"]["stages_ms"]
        rds = summary["envoy_rds"]
        write(
            f"{summary['routes']:>6} {summary['config_bytes'] // 1024:>6}KB | "
            f"{pair(stages['watch']):>11} {pair(stages['parse']):>11} {pair(stages['compile']):>11} "
            f"{pair(stages['push']):>11} | {pair(stages['envoy_ack']):>12} {pair(stages['envoy']):>11} | "
            f"{rds.get('update_success', -1):>7}/{rds.get('update_rejected', -1):<7} "
            f"{summary['by_kind']['all']['unexpected_answers']:>11}"
        )
    notes = [
        "",
        "total = t0 (just before os.replace of the config file) -> t1 (the poller first gets the new answer).",
        "control plane = t0 -> the RDS DiscoveryResponse written by grpc (its send op completed) in the",
        "  control plane child = watch (os.replace -> FileSource reads the file) + parse (read, YAML, schema)",
        "  + compile (IR, translate, pack -> SnapshotCache.set) + push (set -> RDS response written).",
        "envoy = RDS written -> t1 (so total = control plane + envoy); ->ACK = RDS written -> Envoy's ACK seen",
        "  by the control plane. Clocks: CLOCK_MONOTONIC in both processes.",
        "baseline = the same poll loop timing a no-op change that lands at a random moment on a route already",
        "  served: the poller's detection delay, included in total and envoy; subtract it.",
        "odd answers = anything but the old or the new answer while a change propagated (should be 0).",
        "p99 of < 100 samples is interpolated between the two largest values.",
    ]
    write("\n".join(notes))


# -- command line ---------------------------------------------------------------------------------------------


def _sizes(value: str) -> list[int]:
    sizes = [int(part) for part in value.split(",") if part.strip()]
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError("give route counts >= 2, e.g. 100,10000")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--changes", type=int, default=60, help="measured changes per size (default 60)")
    parser.add_argument("--routes", type=_sizes, default=[100, 10000], help="route counts (default 100,10000)")
    parser.add_argument("--json", action="store_true", help="print JSON (summaries and every change)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a change may take (default 10)")
    parser.add_argument(
        "--poll-interval-ms",
        type=float,
        default=1.0,
        help="sleep between polls; 0 polls flat out but then competes with Envoy for 2 cores",
    )
    parser.add_argument("--concurrency", type=int, default=1, choices=(1, 2), help="Envoy worker threads")
    parser.add_argument("--serve-controlplane", metavar="FILE", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@contextlib.contextmanager
def _work_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="xgate-bench-") as name:
        yield Path(name)


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    args = parse_args(argv)
    if args.serve_controlplane:
        serve_controlplane(args.serve_controlplane)
        return 0

    async def run_all() -> list[SizeResult]:
        with _work_dir() as work:
            return [await measure(routes, args.changes, args, work / f"routes-{routes}") for routes in args.routes]

    results = asyncio.run(run_all())
    summaries = [summarize(result) for result in results]
    if args.json:
        data = {"summaries": summaries, "changes": {r.routes: [asdict(c) for c in r.changes] for r in results}}
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        print_report(summaries, args, out)
    return 1 if any(s["by_kind"]["all"]["failures"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
