"""Benchmark: a saved config change -> every consumer (the Envoy and xgate's services) ACKed, beside Envoy alone.

Run from the repository: `.venv/bin/python bench/consumers.py [--changes N] [--routes 100,10000] [--json]`.
See bench/README.md for the method. As in propagation.py, the control plane runs in a child process (this file,
started with the hidden `--serve-controlplane` flag) whose classes report CLOCK_MONOTONIC timestamps per config
revision; a real Envoy and `xgate authz`, `xgate dyeing` and `xgate ratelimit` processes follow it over ADS.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import aiohttp

import _cli
import propagation
from _harness import ROUTE_TYPE, WARMUP, Change, Rig, emit, ms, now, pair, rds_stats, run_rig
from xgate.api import DYEING_SETTINGS, RATE_LIMIT
from xgate.sources.revision import revision_of
from xgate.testing import free_port, run_authz_service, run_dyeing_service, run_ratelimit_service, scrape

# The authz service imports the policy the guarded route names from here (it sees this process' sys.path).
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policies"
LINES = {
    "a": "Envoy-only change, no service connected",
    "b": "Envoy-only change, 3 services connected",
    "c": "dye rule (ext_proc): dyeing, then Envoy",
    "d": "global limit: ratelimit, then Envoy",
}
# Whose ACK a line's service stage waits for; a and b change nothing a service takes and skip that stage.
SERVICE_TYPE = {"c": DYEING_SETTINGS, "d": RATE_LIMIT}
SERVICE_KIND = {"c": "dyeing", "d": "ratelimit"}
PLUGIN_ROUTES = 2  # the guarded and the limited route, counted in --routes
STAGES = (
    "compiled",
    "service_push",
    "service_apply",
    "handover",
    "envoy_push",
    "envoy_apply",
    "service_stage",
    "envoy_stage",
    "seen",
    "seen_to_all",
    "seen_to_service",
    "seen_to_envoy",
)
HISTOGRAM = "xgate_config_propagation_seconds"
KINDS = {"envoy": "seen_to_envoy", "dyeing": "seen_to_service", "ratelimit": "seen_to_service"}  # -> our stage
KIND_LINES = {"envoy": tuple(LINES), "dyeing": ("c",), "ratelimit": ("d",)}


# -- the config under test ------------------------------------------------------------------------------------


@dataclass
class ServicesState(propagation.ConfigState):
    """propagation.py's config (the probe, the steady route, `/svc-<n>/` prefixes) plus the services' plugins:
    dyeing on every route through ext_proc (a sticky rule, which Envoy cannot run itself), a policy on one
    route and a global limit on another. Construct it with `routes` less PLUGIN_ROUTES."""

    services: dict[str, int] = field(default_factory=dict)  # service -> the port the config names
    percent: int = 0  # the sticky rule's share in hundredths of a percent: each value is a new settings key
    limit: int = 1000  # the limited route's requests per hour

    def step(self, line: str) -> None:
        """Make the next change of `line`: the probe's body (a, b), the dye rule (c) or the limit (d)."""
        if line == "c":
            self.percent = (self.percent + 1) % 10_001
        elif line == "d":
            self.limit += 1
        else:
            self.generation += 1

    def render(self) -> str:
        address = {name: f"127.0.0.1:{port}" for name, port in self.services.items()}
        rule = {"stage": "canary", "sticky": {"percent": self.percent / 100, "key": {"header": "x-user"}}}
        plugins = {
            "dyeing": {"mode": "ext_proc", "service": address["dyeing"], "rules": [rule]},
            "policy": {"service": address["authz"], "policies": {"admins": "xgate_example_policies:allow_admins"}},
            "rate_limit": {"service": address["ratelimit"]},
        }
        routes = [
            {"name": "bench-guarded", "match": {"path": {"exact": "/guarded"}},
             "direct_response": {"status": 200, "body": "guarded"}, "plugins": {"policy": {"name": "admins"}}},
            {"name": "bench-limited", "match": {"path": {"prefix": "/limited"}}, "upstream": "pool-0",
             "plugins": {"rate_limit": {"global": {"requests": self.limit, "per": "1h"}}}},
        ]  # fmt: skip
        # Routes is the last key of propagation.py's document; JSON is YAML's flow style.
        added = "".join(f"  - {json.dumps(route)}\n" for route in routes)
        return super().render() + added + f"plugins: {json.dumps(plugins)}\n"


# -- the control plane child ----------------------------------------------------------------------------------


def serve_controlplane(config_path: str) -> None:
    """Child mode: propagation.py's hooks, plus `staged`: the services' part of a revision set while its Envoy
    part waits for their ACKs (discovery.rollout)."""
    from xgate.discovery.cache import SnapshotCache
    from xgate.discovery.snapshot import Snapshot

    original_set = SnapshotCache.set

    def set_snapshot(self: SnapshotCache, snapshot: Snapshot) -> None:
        if snapshot.services_revision not in (None, snapshot.revision):
            emit(ev="staged", rev=snapshot.services_revision, t=now())
        original_set(self, snapshot)

    SnapshotCache.set = set_snapshot  # type: ignore[method-assign]
    propagation.serve_controlplane(config_path)


# -- one size -------------------------------------------------------------------------------------------------


class Saved(NamedTuple):
    """A change saved: its line, when, the config revision it makes, and whether it is counted."""

    line: str
    t0: float  # just before os.replace
    revision: str
    counted: bool


@dataclass
class SizeResult:
    routes: int
    config_bytes: int
    changes: list[Change]
    envoy_rds: dict[str, int]
    histogram: dict[str, dict[str, dict[str, float]]]  # phase -> kind -> count and sum (s), the control plane's
    nacks: int


def _stages(saved: Saved, events: dict[str, dict[str, Any]]) -> Change:
    """Split t0 -> every consumer ACKed at the control plane's timestamps for the revision."""
    at = {key: event.get("t") for key, event in events.items()}
    read, staged, served = at.get("read"), at.get("staged"), at.get("set")
    service_type = SERVICE_TYPE.get(saved.line, "")
    service, service_written = at.get(f"ack:{service_type}"), at.get(f"written:{service_type}")
    written, envoy = at.get(f"written:{ROUTE_TYPE}"), at.get(f"ack:{ROUTE_TYPE}")
    # Every consumer has the change: the service ACKed it, and the Envoy ACKed its routes, or (nothing in its
    # resources changed, as for a limit's value) was served the revision.
    needed = [served, *([service] if saved.line in SERVICE_TYPE else [])]
    needed += [envoy] if written is not None or saved.line != "d" else []
    last = None if None in needed else max(t for t in needed if t is not None)
    t0 = saved.t0
    stages = {
        "compiled": ms(staged or served, t0),  # read, parse, compile -> a snapshot set
        "service_push": ms(service_written, staged),  # the services' part set -> the service's response written
        "service_apply": ms(service, service_written),  # written -> the service applied it and ACKed
        "handover": ms(served, service),  # that ACK -> the Envoys' part set
        "envoy_push": ms(written, served),  # set -> the RDS response written
        "envoy_apply": ms(envoy, written),  # written -> Envoy's ACK
        "service_stage": ms(service, t0),
        "envoy_stage": ms(envoy, service or t0),
        "seen": ms(read, t0),  # os.replace -> the file source read it (its seen_at)
        "seen_to_all": ms(last, read),
        # What the control plane's histogram observes, per kind of consumer (cross-checked in the report).
        "seen_to_service": ms(service, read),
        "seen_to_envoy": ms(envoy, read),
    }
    return Change(saved.line, ms(last, t0), 0.0, 0, stages)


class Runner:
    """Makes the changes, one at a time: each starts once every consumer has the previous one."""

    def __init__(self, rig: Rig, state: ServicesState, config_path: Path, timeout: float) -> None:
        self.rig, self.state, self.config_path, self.timeout = rig, state, config_path, timeout
        self.saved: list[Saved] = []
        self.histogram: dict[str, dict[str, dict[str, float]]] = {}

    async def wait(self, revision: str, key: str, deadline: float) -> bool:
        # In a thread, so the services' stdout drains (run_service's task) keep running on this loop.
        found = await asyncio.to_thread(self.rig.plane.wait_event, revision, key, max(0.0, deadline - now()))
        return found is not None

    async def change(self, line: str, counted: bool) -> None:
        self.state.step(line)
        t0, revision, _ = propagation.save(self.state, self.config_path)
        self.saved.append(Saved(line, t0, revision, counted))
        deadline = t0 + self.timeout
        keys = ["set", *([f"ack:{SERVICE_TYPE[line]}"] if line in SERVICE_TYPE else [])]
        keys += [] if line == "d" else [f"ack:{ROUTE_TYPE}"]
        for key in keys:
            if not await self.wait(revision, key, deadline):
                break
        # Decorrelate from timers in Envoy, the source and the control plane. A limit's value changes no route:
        # if an RDS response went out after all, its ACK is waited for too.
        await asyncio.sleep(random.uniform(0.02, 0.06))
        if f"written:{ROUTE_TYPE}" in self.rig.plane.events(revision):
            await self.wait(revision, f"ack:{ROUTE_TYPE}", deadline)

    async def phase(self, name: str, line: str, count: int) -> None:
        """WARMUP changes of `line`, then `count` counted ones; the control plane's histogram is read around
        the counted ones. One line at a time: a full compile (c) leaves a collection (DeferredFreeze) that would
        land in whatever change came next."""
        url = f"http://127.0.0.1:{self.rig.plane.status_port}/metrics"
        for _ in range(WARMUP):
            await self.change(line, counted=False)
        before = await scrape(url)
        for _ in range(count):
            await self.change(line, counted=True)
        after = await scrape(url)
        self.histogram[name] = {
            kind: {part: after[f'{HISTOGRAM}_{part}{{kind="{kind}"}}'] - before[f'{HISTOGRAM}_{part}{{kind="{kind}"}}']
                   for part in ("count", "sum")}
            for kind in KINDS
        }  # fmt: skip

    async def services_in(self, count: int) -> None:
        """Until GET /status lists `count` service instances, every consumer in sync."""
        url = f"http://127.0.0.1:{self.rig.plane.status_port}/status"
        deadline = now() + 30
        async with aiohttp.ClientSession() as session:
            while now() < deadline:
                async with session.get(url) as answer:
                    report = await answer.json()
                if len(report["services"]) == count and report["all_in_sync"]:
                    return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the control plane did not list {count} services, all in sync, within 30 s")


async def measure(routes: int, count: int, args: argparse.Namespace, work: Path) -> SizeResult:
    """Start the control plane child and an Envoy on a `routes`-route config; `count` changes per line: half of
    (a), the services started, (b), (c), (d), the services stopped, the rest of (a)."""
    count = count or (200 if routes < 1000 else 50)
    work.mkdir()
    ports = {name: free_port() for name in ("authz", "dyeing", "ratelimit")}
    state = ServicesState(routes=routes - PLUGIN_ROUTES, port=free_port(), services=ports)
    config_path = work / "gateway.yaml"
    text = state.render()
    config_path.write_text(text, encoding="utf-8")
    argv = [sys.executable, str(Path(__file__).absolute()), "--serve-controlplane", str(config_path)]
    if str(EXAMPLES) not in sys.path:
        sys.path.append(str(EXAMPLES))
    async with run_rig(argv, state.port, args, work, [work / "controlplane.log", work / "envoy.log"]) as rig:
        if rig.plane.wait_event(revision_of(text), f"ack:{ROUTE_TYPE}", 10) is None:
            raise RuntimeError("the Envoy did not ACK the initial config within 10 s")
        runner = Runner(rig, state, config_path, args.timeout)
        await runner.phase("a, before", "a", count // 2)
        xds = rig.plane.wait_ready(0)
        async with (
            run_authz_service(xds, ports["authz"]),
            run_dyeing_service(xds, ports["dyeing"]),
            run_ratelimit_service(xds, ports["ratelimit"]),
        ):
            await runner.services_in(3)
            for line in "bcd":
                await runner.phase(line, line, count)
        await runner.services_in(0)
        await runner.phase("a, after", "a", count - count // 2)
        changes = [_stages(saved, rig.plane.events(saved.revision)) for saved in runner.saved if saved.counted]
        nacks = sum(
            bool(event.get("nack")) for saved in runner.saved for event in rig.plane.events(saved.revision).values()
        )
        return SizeResult(routes, len(text), changes, await rds_stats(rig.envoy), runner.histogram, nacks)


# -- figures --------------------------------------------------------------------------------------------------


def summarize(result: SizeResult) -> dict[str, Any]:
    """Per line the distributions; per kind of consumer, the control plane's histogram over the counted
    changes (count, mean ms) next to the same from the timestamps."""
    check = {}
    for kind, stage in KINDS.items():
        ours = [v for c in result.changes if c.kind in KIND_LINES[kind] and (v := c.stages_ms[stage]) is not None]
        count = sum(phase[kind]["count"] for phase in result.histogram.values())
        total = sum(phase[kind]["sum"] for phase in result.histogram.values())
        check[kind] = {
            "histogram": [count, round(total * 1000 / count, 2) if count else 0.0],
            "timestamps": [len(ours), round(sum(ours) / len(ours), 2) if ours else 0.0],
        }
    return {
        "routes": result.routes,
        "config_bytes": result.config_bytes,
        "envoy_rds": result.envoy_rds,
        "nacks": result.nacks,
        "propagation_histogram": check,
        "by_kind": _cli.by_kind(result.changes, STAGES, ("all", *LINES)),
    }


def _ratio(row: dict[str, Any], base: dict[str, Any], q: str) -> str:
    return f"{row['total_ms'][q] / base['total_ms'][q]:.2f}" if base["total_ms"][q] else "-"


def print_report(summaries: list[dict[str, Any]], args: argparse.Namespace, out: IO[str]) -> None:
    write = functools.partial(print, file=out)
    write(
        "config file change (os.replace) -> every consumer ACKed it; changes per line: "
        f"{args.changes or '200 below 1,000 routes, 50 from there'} ({WARMUP} warm-up changes not counted), "
        f"(a) half before the services start and half after they stop; Envoy --concurrency {args.concurrency}"
        f"{'; pinned: control plane on CPU 0, the rest on CPU 1' if args.pin else ''}"
    )
    write(
        f"{'routes':>6} {'line':<44} {'n':>4} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'fail':>4} | "
        f"{'seen->all p50/p99':>17} | {'/(a) p50':>8} {'p99':>5}"
    )
    for summary in summaries:
        rows = summary["by_kind"]
        for line, title in LINES.items():
            row, total = rows[line], rows[line]["total_ms"]
            write(
                f"{summary['routes']:>6} {line + ' ' + title:<44} {row['changes']:>4} {total['p50']:>7.1f} "
                f"{total['p90']:>7.1f} {total['p99']:>7.1f} {total['max']:>7.1f} {row['failures']:>4} | "
                f"{pair(row['stages_ms']['seen_to_all']):>17} | "
                f"{_ratio(row, rows['a'], 'p50'):>8} {_ratio(row, rows['a'], 'p99'):>5}"
            )
    write("\nwhere the time goes, p50/p99 ms (control plane timestamps from hooks in its process):")
    write(
        f"{'routes':>6} {'line':>4} | {'compiled':>12} | {'svc: push':>10} {'apply+ACK':>11} | {'handover':>8} | "
        f"{'envoy: push':>10} {'apply+ACK':>11} || {'service stage':>13} {'envoy stage':>12}"
    )
    for summary in summaries:
        for line in LINES:
            stages = summary["by_kind"][line]["stages_ms"]
            cells = [pair(stages[name]) if stages[name]["n"] else "-" for name in STAGES[:8]]
            write(
                f"{summary['routes']:>6} {line:>4} | {cells[0]:>12} | {cells[1]:>10} {cells[2]:>11} | {cells[3]:>8} | "
                f"{cells[4]:>10} {cells[5]:>11} || {cells[6]:>13} {cells[7]:>12}"
            )
    write("\nthe control plane's own xgate_config_propagation_seconds over the counted changes, n and mean ms, next")
    write("to the same figure from the timestamps (seen -> that consumer's ACK); Envoy RDS updates ok/rejected; NACKs")
    for summary in summaries:
        cells = [
            f"{kind} {check['histogram'][0]:.0f}/{check['histogram'][1]:.1f} ({check['timestamps'][0]}/"
            f"{check['timestamps'][1]:.1f})"
            for kind, check in summary["propagation_histogram"].items()
        ]
        rds = summary["envoy_rds"]
        write(
            f"{summary['routes']:>6} | {'; '.join(cells)} | RDS {rds.get('update_success', -1)}/"
            f"{rds.get('update_rejected', -1)} | NACKs {summary['nacks']}"
        )
    notes = [
        "",
        "total = t0 (just before os.replace of the config file) -> the last consumer has the revision: each service",
        "  instance that takes a changed resource ACKed it, and the Envoy ACKed its routes (or, when none changed,",
        "  as for a limit's value, was served the revision). seen->all = the file source read it -> the same.",
        "compiled = t0 -> the snapshot set (the services' part, staged, for c and d); svc: push = staged -> the",
        "  service's response written; apply+ACK = written -> its ACK; handover = that ACK -> the Envoys' part set;",
        "  envoy: push = set -> RDS response written; apply+ACK = written -> Envoy's ACK.",
        "service stage = t0 -> the service's ACK; envoy stage = the service's ACK (a, b: t0) -> Envoy's ACK.",
        "Clocks: CLOCK_MONOTONIC in all processes. p99 of < 100 samples is interpolated between the two largest.",
    ]
    write("\n".join(notes))


# -- command line ---------------------------------------------------------------------------------------------


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save", metavar="FILE", type=Path, help="also write the JSON (every change) to FILE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _cli.parse_args(argv, __doc__, "FILE", _options, changes=(0, "200 below 1,000 routes, 50 from there"))


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    return _cli.main(
        parse_args(argv),
        out,
        serve=serve_controlplane,
        measure=measure,
        summarize=summarize,
        print_report=print_report,
        work_prefix="xgate-bench-consumers-",
    )


if __name__ == "__main__":
    sys.exit(main())
