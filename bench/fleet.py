"""Benchmark: one config change reaching a fleet, 1,000 simulated Envoys and a few real ones, SotW and delta.

Run from the repository, with both locks held:
`flock /tmp/xgate-test.lock flock /tmp/xgate-bench.lock .venv/bin/python bench/fleet.py [--clients 1000]
[--envoys 5] [--changes 10] [--protocols sotw,delta] [--json]`. See bench/README.md for the method.

The control plane is `xgate controlplane` in a process of its own, so its CPU time is its own (read from
/proc around each change). The simulated Envoys (xgate.testing.adsload) run in `--workers` processes of this
same file (the hidden `--serve-clients` mode), the real Envoys as EnvoyProcess children.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

import _stalls
from _harness import percentile, stop_process
from xgate.discovery import typeurls
from xgate.proxy.bootstrap import build_bootstrap
from xgate.proxy.process import EnvoyProcess
from xgate.testing.gateway import free_port, write_atomic

LISTENER = "bench"
UPSTREAMS = 10
_READY = re.compile(r"xgate control plane ready: xds [^:\s]+:(\d+) status http://[^:\s]+:(\d+)")


def render(routes: int, port: int, generation: int) -> str:
    """`routes` routes: the probe (a direct response `gen-<generation>`) and `/svc-<n>/` prefixes to upstreams."""
    lines = [
        "xgate: v1",
        f"listeners: [{{name: {LISTENER}, address: 127.0.0.1, port: {port}}}]",
        "upstreams:",
        *(f"  - {{name: pool-{u}, endpoints: ['127.0.0.1:9']}}" for u in range(UPSTREAMS)),
        "routes:",
        "  - {name: probe, match: {path: {exact: /probe}},"
        f" direct_response: {{status: 200, body: gen-{generation}}}}}",
        *(
            f"  - {{name: svc-{n}, match: {{path: {{prefix: /svc-{n}/}}}}, upstream: pool-{n % UPSTREAMS}}}"
            for n in range(max(0, routes - 1))
        ),
    ]
    return "\n".join(lines) + "\n"


# -- the simulated Envoys, in worker processes -----------------------------------------------------------------


def serve_clients(target: str, count: int, delta: bool, prefix: str) -> None:
    """Worker mode: `count` simulated Envoys; answers the benchmark's lines on stdin with JSON lines on stdout:
    `ready` once every client has its config, `wait T` once every client ACKed one more route response than
    at the last answer (or T s passed): the clients' last ACK times (time.monotonic, the benchmark's clock too)."""
    from xgate.testing.adsload import Fleet

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue()
        threading.Thread(target=_read_lines, args=(loop, lines), daemon=True).start()
        stop = asyncio.Event()
        fleet = Fleet(target, count, delta=delta, prefix=prefix)
        running = asyncio.create_task(fleet.run(stop))
        await fleet.connected(120)
        base = [count for count, _ in fleet.acks(typeurls.ROUTE)]
        _reply(ready=True)
        while (line := await lines.get()) != "":
            deadline = loop.time() + float(line.split()[1])
            while loop.time() < deadline and any(
                count <= before for (count, _), before in zip(fleet.acks(typeurls.ROUTE), base, strict=True)
            ):
                await asyncio.sleep(0.002)
            acks = fleet.acks(typeurls.ROUTE)
            done = [at for (count, at), before in zip(acks, base, strict=True) if count > before]
            _reply(acked_at=done, missing=len(acks) - len(done))
            base = [count for count, _ in acks]
        stop.set()
        await running

    asyncio.run(main())


def _read_lines(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line.strip())
    loop.call_soon_threadsafe(lines.put_nowait, "")


def _reply(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Workers:
    """The worker processes of one protocol's fleet."""

    def __init__(self, xds_port: int, clients: int, workers: int, delta: bool, prefix: str) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        share = [clients // workers + (index < clients % workers) for index in range(workers)]
        for index, count in enumerate(share):
            argv = [sys.executable, __file__, "--serve-clients", str(count), "--xds", f"127.0.0.1:{xds_port}"]
            argv += ["--prefix", f"{prefix}-{index}", "--delta" if delta else "--sotw"]
            self.procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))

    def ask(self, line: str | None) -> list[dict[str, Any]]:
        """Send `line` to every worker (None: only read), then read one answer from each."""
        for proc in self.procs:
            assert proc.stdin is not None
            if line is not None:
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
        answers = []
        for proc in self.procs:
            assert proc.stdout is not None
            text = proc.stdout.readline()
            if not text:
                raise RuntimeError(f"a client worker ended (exit {proc.wait()})")
            answers.append(json.loads(text))
        return answers

    def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                stop_process(proc)


# -- the benchmark ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    protocol: str
    clients: int
    envoys: int
    ack_ms: list[float] = field(default_factory=list)  # change -> each consumer's route ACK (control plane's view)
    cpu_ms: list[float] = field(default_factory=list)  # the control plane's CPU per change, idle time taken off
    idle_ms_per_s: float = 0.0
    status_ms: float = 0.0  # the control plane's CPU for one /status of the whole fleet
    missing: int = 0

    def summary(self) -> dict[str, Any]:
        consumers = self.clients + self.envoys
        per_client = [cpu / consumers for cpu in self.cpu_ms]
        return {
            "protocol": self.protocol,
            "consumers": consumers,
            "changes": len(self.cpu_ms),
            "ack_p50_ms": percentile(self.ack_ms, 50) if self.ack_ms else None,
            "ack_p99_ms": percentile(self.ack_ms, 99) if self.ack_ms else None,
            "ack_max_ms": max(self.ack_ms) if self.ack_ms else None,
            "ack_samples": len(self.ack_ms),
            "cpu_ms_per_change": statistics.median(self.cpu_ms) if self.cpu_ms else None,
            "cpu_ms_per_client_per_change": statistics.median(per_client) if per_client else None,
            "cpu_ms_per_client_range": [min(per_client), max(per_client)] if per_client else None,
            "idle_cpu_ms_per_s": self.idle_ms_per_s,
            "status_cpu_ms": self.status_ms,
            "missing_acks": self.missing,
        }


class ControlPlane:
    def __init__(self, config: Path, log: Path) -> None:
        argv = [sys.executable, "-m", "xgate", "controlplane", "-f", str(config), "--xds", "127.0.0.1:0"]
        argv += ["--status", "127.0.0.1:0", "--log-level", "warning"]
        self._log = log.open("w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        found = _READY.search(self.proc.stdout.readline())
        if found is None:
            stop_process(self.proc)
            raise RuntimeError(f"the control plane did not start: see {log}")
        self.xds_port, self.status_port = int(found.group(1)), int(found.group(2))

    def cpu_ms(self) -> float:
        """CPU time of every thread of the process (grpc's own threads too), from the scheduler's nanosecond
        counters: psutil's user + system time counts 10 ms ticks, too coarse for one change."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile
        return total / 1e6

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"http://127.0.0.1:{self.status_port}/status") as response:
            report: dict[str, Any] = await response.json()
            return report

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


async def run_protocol(
    args: argparse.Namespace, plane: ControlPlane, config: Path, port: int, work: Path, protocol: str, first: int
) -> tuple[Result, int]:
    """One fleet speaking `protocol` through `args.changes` changes; returns the result and the next generation."""
    delta = protocol == "delta"
    result = Result(protocol, args.clients, args.envoys)
    generation = first
    workers = Workers(plane.xds_port, args.clients, args.workers, delta, f"sim-{protocol}")
    envoys: list[EnvoyProcess] = []
    quiet = (work / f"envoys-{protocol}.log").open("wb")
    async with aiohttp.ClientSession() as session:
        try:
            workers.ask(None)  # every simulated client has its config
            for index in range(args.envoys):
                bootstrap = build_bootstrap(
                    node_id=f"envoy-{protocol}-{index}",
                    node_cluster="bench",
                    xds_servers=[("127.0.0.1", plane.xds_port)],
                    admin_port=0,
                    delta=delta,
                )
                envoy = EnvoyProcess(bootstrap, work / f"envoy-{protocol}-{index}", concurrency=1, output=quiet)
                await envoy.start()
                envoys.append(envoy)
            for envoy in envoys:
                await envoy.wait_ready(60)
            await _all_in_sync(plane, session, args.clients + args.envoys)
            idle_start_cpu, idle_start = plane.cpu_ms(), time.monotonic()
            await asyncio.sleep(2)
            result.idle_ms_per_s = (plane.cpu_ms() - idle_start_cpu) / (time.monotonic() - idle_start)
            result.status_ms = await _status_cost(plane, session, result.idle_ms_per_s)
            consumers = args.clients + args.envoys
            acks_before = await _route_acks(envoys)
            profiler = _profile(args.py_spy, plane, protocol) if args.py_spy else None
            for change in range(1, args.changes + 1):
                generation += 1
                cpu0, wall0, t0 = plane.cpu_ms(), time.time(), time.monotonic()
                write_atomic(config, render(args.routes, port, generation))
                answers = workers.ask(f"wait {args.timeout}")
                await _envoys_acked(envoys, [count + change for count in acks_before], args.timeout)
                missing = sum(answer["missing"] for answer in answers)
                # A client counts its ACK once written; the control plane may not have read it yet. Its status
                # says when it did (the times measured); the polls' own CPU, measured at idle, is taken off.
                acked, polls = await _acked_at(plane, session, wall0, consumers - missing, args.timeout)
                spent = plane.cpu_ms() - cpu0 - polls * result.status_ms
                result.cpu_ms.append(spent - result.idle_ms_per_s * (time.monotonic() - t0))
                result.missing += consumers - len(acked)
                result.ack_ms += [(at - wall0) * 1000 for at in acked]
                await asyncio.sleep(0.2)
            if profiler is not None:
                profiler.send_signal(2)  # SIGINT: py-spy writes what it has
                profiler.wait(30)
        finally:
            for envoy in envoys:
                await envoy.stop()
            workers.stop()
            quiet.close()
    return result, generation


def _profile(prefix: str, plane: ControlPlane, protocol: str) -> subprocess.Popen[bytes]:
    """py-spy sampling the control plane (every thread, native frames too) while the changes run."""
    argv = ["py-spy", "record", "-p", str(plane.proc.pid), "-r", "500", "--native", "-f", "raw"]
    argv += ["-o", f"{prefix}-{protocol}.txt"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _all_in_sync(plane: ControlPlane, session: aiohttp.ClientSession, consumers: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        report = await plane.status(session)
        if len(report["proxies"]) >= consumers and report["all_in_sync"]:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the fleet of {consumers} did not get in sync within 120 s")


async def _status_cost(plane: ControlPlane, session: aiohttp.ClientSession, idle_ms_per_s: float) -> float:
    """The control plane's CPU for one /status (median of 5), idle time taken off."""
    costs = []
    for _ in range(5):
        cpu0, t0 = plane.cpu_ms(), time.monotonic()
        await plane.status(session)
        costs.append(plane.cpu_ms() - cpu0 - idle_ms_per_s * (time.monotonic() - t0))
    return statistics.median(costs)


async def _acked_at(
    plane: ControlPlane, session: aiohttp.ClientSession, since: float, wanted: int, timeout: float
) -> tuple[list[float], int]:
    """Poll /status until `wanted` consumers ACKed a route response after `since` (time.time()); return those
    ACK times and the number of polls."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        report = await plane.status(session)
        polls += 1
        found = [
            at
            for proxy in report["proxies"]
            if (at := proxy["types"].get("RDS", {}).get("acked_at")) is not None and at >= since
        ]
        if len(found) >= wanted or time.monotonic() > deadline:
            return found, polls
        await asyncio.sleep(0.02)


async def _route_acks(envoys: Sequence[EnvoyProcess]) -> list[int]:
    counts = []
    for envoy in envoys:
        _, body = await envoy.admin_get(f"/stats?filter=rds\\.routes/{LISTENER}\\.update_success$")
        counts.append(sum(int(line.rpartition(": ")[2]) for line in body.splitlines() if ": " in line))
    return counts


async def _envoys_acked(envoys: Sequence[EnvoyProcess], wanted: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(have >= want for have, want in zip(await _route_acks(envoys), wanted, strict=True)):
            return
        await asyncio.sleep(0.005)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--envoys", type=int, default=5)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="processes running the simulated Envoys")
    parser.add_argument("--protocols", default="sotw,delta")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--stall-seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--py-spy", metavar="PREFIX", help="profile the control plane into PREFIX-<protocol>.txt")
    parser.add_argument("--serve-clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--xds", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="sim", help=argparse.SUPPRESS)
    parser.add_argument("--delta", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sotw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_clients is not None:
        serve_clients(args.xds, args.serve_clients, args.delta, args.prefix)
        return 0
    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    stalls_before = _stalls.measure(args.stall_seconds) if args.stall_seconds else []
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="xgate-fleet-") as tmp:
        work = Path(tmp)
        port = free_port()
        config = work / "gateway.yaml"
        config.write_text(render(args.routes, port, 0))
        plane = ControlPlane(config, work / "controlplane.log")
        generation = 0
        try:
            for protocol in args.protocols.split(","):
                result, generation = await run_protocol(args, plane, config, port, work, protocol, generation)
                results.append(result)
        finally:
            plane.stop()
    stalls_after = _stalls.measure(args.stall_seconds) if args.stall_seconds else []
    summaries = [result.summary() for result in results]
    if args.json:
        print(json.dumps({"results": summaries, "stalls": [s.summary() for s in stalls_before + stalls_after]}))
        return 0
    print(f"{args.clients} simulated + {args.envoys} real Envoys, {args.routes} routes, {args.changes} changes each")
    print(f"{'protocol':9} {'ACK p50':>9} {'ACK p99':>9} {'max':>9} {'CPU/change':>11} {'CPU/client/change':>18}")
    for s in summaries:
        if not s["ack_samples"]:
            print(f"{s['protocol']:9} no ACK seen after a change (missing ACKs {s['missing_acks']})")
            continue
        print(
            f"{s['protocol']:9} {s['ack_p50_ms']:8.1f}ms {s['ack_p99_ms']:8.1f}ms {s['ack_max_ms']:8.1f}ms "
            f"{s['cpu_ms_per_change']:9.1f}ms {s['cpu_ms_per_client_per_change']:15.3f} ms"
            f"  (range {s['cpu_ms_per_client_range'][0]:.3f}-{s['cpu_ms_per_client_range'][1]:.3f}; "
            f"idle {s['idle_cpu_ms_per_s']:.1f} ms/s; {s['ack_samples']} ACKs timed; missing {s['missing_acks']})"
        )
    for when, stalls in (("before", stalls_before), ("after", stalls_after)):
        if stalls:
            print(f"machine {when}: {_stalls.line(stalls)}")
            print(f"  floor (job CPU ms -> p50/p99 wall ms): {_stalls.jobs_line(stalls)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
