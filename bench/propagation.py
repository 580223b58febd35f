"""Benchmark: a saved config file -> the first correct response through a real Envoy, and where the time goes.

Run from the repository: `.venv/bin/python bench/propagation.py [--changes N] [--routes 100,10000] [--json]
[--hosts N [--route-tables one|per_host]]` (as in bench/etcd_propagation.py).
See bench/README.md for the method. The control plane runs in a child process (this same file, started with
the hidden `--serve-controlplane` flag) whose classes are wrapped to report CLOCK_MONOTONIC timestamps on
stdout; the poller runs here, alone, on a blocking keep-alive connection.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import _cli
import _harness
from _harness import (
    ADD_EVERY,
    LISTENER,
    ROUTE_TYPE,
    UPSTREAMS,
    WARMUP,
    Change,
    Made,
    RouteState,
    emit,
    ms,
    now,
    pair,
    rds_stats,
    run_changes,
    run_rig,
)
from xgate.sources.revision import revision_of
from xgate.testing.gateway import free_port

STAGES = ("watch", "parse", "compile", "push", "controlplane", "envoy", "envoy_ack")


# -- the config under test ------------------------------------------------------------------------------------


@dataclass
class ConfigState(RouteState):
    """What the config file says: the probe's generation and the routes added so far; with `hosts`, every route
    names one of them (the probe, the steady and the added routes the first)."""

    hosts: int = 0
    route_tables: str = "one"

    def _hosts(self, n: int = 0) -> str:
        return f", hosts: [host-{n % self.hosts}]" if self.hosts else ""

    def render(self) -> str:
        """`routes` routes in all: the probe, the steady route and `/svc-<n>/` prefixes to a few upstreams."""
        lines = [
            "xgate: v1",
            "listeners:",
            f"  - {{name: {LISTENER}, address: 127.0.0.1, port: {self.port}, route_tables: {self.route_tables}}}",
            "upstreams:",
            # Never requested: a closed port is fine, and the clusters do not change between revisions.
            *(f"  - {{name: pool-{u}, endpoints: ['127.0.0.1:9']}}" for u in range(UPSTREAMS)),
            "routes:",
            f"  - {{name: bench-probe, match: {{path: {{exact: /probe}}{self._hosts()}}},"
            f" direct_response: {{status: 200, body: gen-{self.generation}}}}}",
            f"  - {{name: bench-steady, match: {{path: {{exact: /steady}}{self._hosts()}}},"
            " direct_response: {status: 200, body: steady}}",
            *(
                f"  - {{name: svc-{n}, match: {{path: {{prefix: /svc-{n}/}}{self._hosts(n)}}},"
                f" upstream: pool-{n % UPSTREAMS}}}"
                for n in range(max(0, self.routes - 2))
            ),
            *(
                f"  - {{name: new-{k}, match: {{path: {{exact: /new-{k}}}{self._hosts()}}},"
                f" direct_response: {{status: 200, body: new-{k}}}}}"
                for k in self.added
            ),
        ]
        return "\n".join(lines) + "\n"

    def render_files(self, files: int) -> dict[str, str]:
        """The same config as a directory of `files` files: the listener and upstreams in one, the probe in one
        (a change edits that file alone), each added route in one, the `/svc-<n>/` routes spread over the rest."""
        lines = self.render().splitlines()
        routes = lines.index("routes:")
        probe, steady = lines[routes + 1 : routes + 3]
        svc = lines[routes + 3 : routes + 3 + max(0, self.routes - 2)]
        found = {"00-base.yaml": "\n".join(lines[:routes]) + "\n", "01-probe.yaml": f"routes:\n{probe}\n{steady}\n"}
        parts = max(1, files - 2)
        for part in range(parts):
            chunk = svc[part::parts]
            if chunk:
                found[f"svc-{part:05d}.yaml"] = "routes:\n" + "\n".join(chunk) + "\n"
        for index, line in zip(self.added, lines[routes + 3 + len(svc) :], strict=True):
            found[f"new-{index:05d}.yaml"] = f"routes:\n{line}\n"
        return found


def directory_revision(files: dict[str, str]) -> str:
    """The revision the file source gives a directory holding `files` (sources/file.py: names and texts)."""
    return revision_of(json.dumps([[name, files[name]] for name in sorted(files)]))


# -- the control plane child: run_controlplane with timestamped hooks ----------------------------------------


def serve_controlplane(config_path: str) -> None:
    """Child mode: serve `config_path` and print one JSON line per hooked event (monotonic seconds)."""
    from xgate.sources.file import FileSource
    from xgate.sources.revision import Revision

    original_read = FileSource._read

    async def read(self: FileSource) -> Revision | None:
        started = now()
        revision = await original_read(self)
        if revision is not None:
            emit(ev="read", rev=revision.revision, t=started, done=now(), ok=revision.error is None)
        return revision

    FileSource._read = read  # type: ignore[method-assign]
    _harness.serve_controlplane(config_path)


# -- one size -------------------------------------------------------------------------------------------------


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
        "watch": ms(read.get("t"), t0),  # os.replace -> the file watcher hands the event over
        "parse": ms(read.get("done"), read.get("t")),  # read + YAML + schema validation
        "compile": ms(events.get("set", {}).get("t"), read.get("done")),  # IR + translate + pack
        "push": ms(written, events.get("set", {}).get("t")),  # snapshot set -> RDS response written
        "controlplane": ms(written, t0),
        "envoy": ms(t1, written),  # RDS written -> first correct response
        "envoy_ack": ms(events.get(f"ack:{ROUTE_TYPE}", {}).get("t"), written),
    }


def save(state: ConfigState, config_path: Path, files: int = 1, kind: str = "edit") -> Made:
    """Write the config the way editors save: a temporary file, then os.replace over the config. With `files`
    over 1 the config is a directory: only the file that changed (the probe's, or the added route's) is written."""
    if files > 1:
        rendered = state.render_files(files)
        changed = (
            f"new-{state.added[-1]:05d}.yaml"
            if state.added and not (config_path / f"new-{state.added[-1]:05d}.yaml").exists()
            else "01-probe.yaml"
        )
        temporary = config_path / f".{changed}.tmp"
        temporary.write_text(rendered[changed], encoding="utf-8")
        t0 = now()
        os.replace(temporary, config_path / changed)
        return Made(t0, directory_revision(rendered), lambda events, t1: _stages(events, t0, t1))
    text = state.render()
    temporary = config_path.with_name(f".{config_path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    t0 = now()
    os.replace(temporary, config_path)
    return Made(t0, revision_of(text), lambda events, t1: _stages(events, t0, t1))


async def measure(routes: int, count: int, args: argparse.Namespace, work: Path) -> SizeResult:
    """Start a control plane child and an Envoy on a `routes`-route config; time `count` changes."""
    work.mkdir()
    state = ConfigState(routes=routes, port=free_port(), hosts=args.hosts, route_tables=args.route_tables)
    args.poll_host = "host-0" if args.hosts else None
    if args.files > 1:
        config_path = work / "config"
        config_path.mkdir()
        rendered = state.render_files(args.files)
        for name, content in rendered.items():
            (config_path / name).write_text(content, encoding="utf-8")
        text, revision = "".join(rendered.values()), directory_revision(rendered)
    else:
        config_path = work / "gateway.yaml"
        text = state.render()
        config_path.write_text(text, encoding="utf-8")
        revision = revision_of(text)
    argv = [sys.executable, str(Path(__file__).absolute()), "--serve-controlplane", str(config_path)]
    logs = [work / "controlplane.log", work / "envoy.log"]
    async with run_rig(argv, state.port, args, work, logs) as rig:
        rig.plane.wait_event(revision, f"ack:{ROUTE_TYPE}", 10)

        async def change(index: int, kind: str) -> Made:
            return save(state, config_path, args.files, kind)

        changes = await run_changes(state, rig, count, args.timeout, change)
        rds = await rds_stats(rig.envoy)
        return SizeResult(routes, len(text), changes, rds, rig.poller.errors)


# -- figures --------------------------------------------------------------------------------------------------


def summarize(result: SizeResult) -> dict[str, Any]:
    return {
        "routes": result.routes,
        "config_bytes": result.config_bytes,
        "envoy_rds": result.envoy_rds,
        "poll_errors": result.poll_errors,
        "by_kind": _cli.by_kind(result.changes, STAGES),
    }


def print_report(summaries: list[dict[str, Any]], args: argparse.Namespace, out: IO[str]) -> None:
    write = functools.partial(print, file=out)

    write(
        f"file change (os.replace) -> first correct response through Envoy; {args.changes} changes per size "
        f"({WARMUP} warm-up changes not counted), every {ADD_EVERY}th adds a route, the others edit a "
        f"direct response; Envoy --concurrency {args.concurrency}; poll interval {args.poll_interval_ms} ms; "
        + (f"routes over {args.hosts} hosts, route_tables: {args.route_tables}" if args.hosts else "no hosts")
        + f"{'; pinned: control plane on CPU 0, the rest on CPU 1' if args.pin else ''}"
    )
    _cli.print_totals(summaries, write)
    write(_cli.WHERE_THE_TIME_GOES)
    write(
        f"{'routes':>6} {'config':>8} | {'watch':>11} {'parse':>11} {'compile':>11} {'push':>11} | " + _cli.ENVOY_HEADER
    )
    for summary in summaries:
        stages = summary["by_kind"]["all"]["stages_ms"]
        write(
            f"{summary['routes']:>6} {summary['config_bytes'] // 1024:>6}KB | "
            f"{pair(stages['watch']):>11} {pair(stages['parse']):>11} {pair(stages['compile']):>11} "
            f"{pair(stages['push']):>11} | " + _cli.envoy_cell(summary)
        )
    notes = [
        "",
        "total = t0 (just before os.replace of the config file) -> t1 (the poller first gets the new answer).",
        "control plane = t0 -> the RDS DiscoveryResponse written by grpc (its send op completed) in the",
        "  control plane child = watch (os.replace -> FileSource reads the file) + parse (read, YAML, schema)",
        "  + compile (IR, translate, pack -> SnapshotCache.set) + push (set -> RDS response written).",
        *_cli.common_notes("both"),
    ]
    write("\n".join(notes))


# -- command line ---------------------------------------------------------------------------------------------


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--files", type=int, default=1, help="the config as a directory of this many files (default 1: one file)"
    )
    _cli.host_options(parser)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _cli.parse_args(argv, __doc__, "FILE", _options)


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    return _cli.main(
        parse_args(argv),
        out,
        serve=serve_controlplane,
        measure=measure,
        summarize=summarize,
        print_report=print_report,
        work_prefix="xgate-bench-",
    )


if __name__ == "__main__":
    sys.exit(main())
