"""Benchmark: an etcd put -> the first correct response through a real Envoy, and where the time goes.

Run from the repository: `.venv/bin/python bench/etcd_propagation.py [--changes N] [--routes 100,10000] [--json]`.
See bench/README.md for the method. Per size: a 1-member etcd (Debian's etcd on loopback, temporary data dir)
loaded in transactions of at most 128 puts, the control plane in a child process (this same file, started with
the hidden `--serve-controlplane` flag) following etcd with timestamped hooks, a real Envoy, and the poller and
the etcd writer here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from aetcd.rpc import rpc_pb2

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
    ms,
    now,
    pair,
    print_log_tails,
    rds_stats,
)
from xgate.proxy.bootstrap import build_bootstrap
from xgate.proxy.process import EnvoyProcess
from xgate.sources.etcd.client import EtcdClient, EtcdSettings, EtcdUnavailableError
from xgate.sources.etcd.layout import DEFAULT_PREFIX, encode, key_of
from xgate.testing.etcd import run_etcd
from xgate.testing.gateway import free_port

# etcd 3.4 refuses a transaction of more than --max-txn-ops (default 128) operations: "too many operations in
# txn request". A 10,000-route config is therefore loaded in batches.
TXN_OPS = 128
STAGES = (
    "put",
    "watch",
    "decode",
    "source",
    "compile",
    "push",
    "watch_to_written",
    "controlplane",
    "envoy",
    "envoy_ack",
)


# -- the config under test: one etcd key per object -----------------------------------------------------------


def _route(name: str, exact: str, body: str) -> dict[str, Any]:
    return {"name": name, "match": {"path": {"exact": exact}}, "direct_response": {"status": 200, "body": body}}


@dataclass
class EtcdState:
    """What etcd holds: the probe's generation and the routes added so far (the same config as propagation.py)."""

    routes: int
    port: int
    generation: int = 0
    added: list[int] = field(default_factory=list)

    def key(self, kind: str, name: str) -> bytes:
        return key_of(DEFAULT_PREFIX, kind, name)

    def probe(self) -> tuple[bytes, bytes]:
        return self.key("route", "bench-probe"), encode(_route("bench-probe", "/probe", f"gen-{self.generation}"))

    def added_route(self, index: int) -> tuple[bytes, bytes]:
        return self.key("route", f"new-{index}"), encode(_route(f"new-{index}", f"/new-{index}", f"new-{index}"))

    def initial(self) -> dict[bytes, bytes]:
        """`routes` routes in all: the probe, the steady route and `/svc-<n>/` prefixes to a few upstreams."""
        values = {self.key("listener", LISTENER): encode({"address": "127.0.0.1", "port": self.port})}
        for u in range(UPSTREAMS):
            # Never requested: a closed port is fine, and the clusters do not change between revisions.
            values[self.key("upstream", f"pool-{u}")] = encode({"endpoints": ["127.0.0.1:9"]})
        values.update([self.probe()])
        values[self.key("route", "bench-steady")] = encode(_route("bench-steady", "/steady", "steady"))
        for n in range(max(0, self.routes - 2)):
            route = {"match": {"path": {"prefix": f"/svc-{n}/"}}, "upstream": f"pool-{n % UPSTREAMS}"}
            values[self.key("route", f"svc-{n}")] = encode(route)
        return values


async def load(client: EtcdClient, values: dict[bytes, bytes]) -> tuple[int, int]:
    """Put every key in transactions of at most TXN_OPS puts; returns (etcd revision, transactions)."""
    items = list(values.items())
    revision, batches = 0, 0
    for start in range(0, len(items), TXN_OPS):
        operations = [
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))
            for key, value in items[start : start + TXN_OPS]
        ]
        succeeded, revision = await client.txn([], operations)
        if not succeeded:
            raise RuntimeError("an unconditional etcd transaction did not succeed")
        batches += 1
    return revision, batches


# -- the control plane child: run_controlplane on etcd with timestamped hooks ---------------------------------


def serve_controlplane(endpoint: str) -> None:
    """Child mode: follow etcd at `endpoint` and print one JSON line per hooked event (monotonic seconds)."""
    import logging

    from xgate.controlplane import ControlPlane
    from xgate.runtime import Bound, run_controlplane
    from xgate.sources.etcd.source import EtcdSource
    from xgate.sources.revision import Revision

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    original_watch = EtcdClient.watch_prefix
    original_revision = EtcdSource._revision

    async def watch_prefix(
        self: EtcdClient, prefix: bytes, start_revision: int
    ) -> AsyncGenerator[tuple[int, list[Any]], None]:
        inner = original_watch(self, prefix, start_revision)
        try:
            async for revision, events in inner:
                if events:  # the watch response has been received and parsed; EtcdSource gets it next
                    emit(ev="watch", rev=f"etcd-{revision}", t=now(), events=len(events))
                yield revision, events
        finally:
            await inner.aclose()

    def revision_of(self: EtcdSource, seen_at: float) -> Revision:
        started = now()
        revision = original_revision(self, seen_at)
        emit(ev="revision", rev=revision.revision, t=started, done=now())
        return revision

    EtcdClient.watch_prefix = watch_prefix  # type: ignore[method-assign]
    EtcdSource._revision = revision_of  # type: ignore[method-assign]
    install_ads_hooks()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

        def ready(bound: Bound) -> None:
            emit(ev="ready", xds=bound.xds[1], status=bound.status[1])

        await run_controlplane(
            None,
            etcd=EtcdSettings(endpoints=(endpoint,)),
            prefix=DEFAULT_PREFIX,
            xds=("127.0.0.1", 0),
            status=("127.0.0.1", 0),
            on_ready=ready,
            stop=stop,
            plane=ControlPlane(),
        )

    asyncio.run(main())


# -- one size -------------------------------------------------------------------------------------------------


@dataclass
class Change:
    kind: str  # "edit" (the probe's direct response body) or "add" (a new route key)
    total_ms: float | None  # None: the put failed or the answer did not come in time
    baseline_ms: float
    unexpected: int
    stages_ms: dict[str, float | None]


@dataclass
class SizeResult:
    routes: int
    keys: int
    value_bytes: int
    load_txns: int
    load_s: float
    ready_s: float  # the control plane child started -> it read etcd, compiled and opened its xDS port
    changes: list[Change]
    envoy_rds: dict[str, int]
    poll_errors: int


def _stages(events: dict[str, dict[str, Any]], t0: float, put_done: float, t1: float | None) -> dict[str, float | None]:
    """Split t0 (the etcd put sent) -> t1 (first correct response) at the control plane's timestamps."""
    watch = events.get("watch", {}).get("t")
    built = events.get("revision", {})
    snapshot_set = events.get("set", {}).get("t")
    written = events.get(f"written:{ROUTE_TYPE}", {}).get("t")
    return {
        "put": ms(put_done, t0),  # the Put RPC, as the writer sees it (committed by etcd)
        "watch": ms(watch, t0),  # put sent -> the watch response is in the control plane
        "decode": ms(built.get("t"), watch),  # the event's value: JSON + schema validation (EtcdSource._put)
        "source": ms(built.get("done"), built.get("t")),  # EtcdSource._revision: a ConfigSet of every key
        "compile": ms(snapshot_set, built.get("done")),  # IR + translate + pack -> SnapshotCache.set
        "push": ms(written, snapshot_set),  # set -> RDS response written
        "watch_to_written": ms(written, watch),
        "controlplane": ms(written, t0),
        "envoy": ms(t1, written),  # RDS written -> first correct response
        "envoy_ack": ms(events.get(f"ack:{ROUTE_TYPE}", {}).get("t"), written),
    }


async def run_changes(
    state: EtcdState, client: EtcdClient, plane: ControlPlaneChild, poller: Poller, count: int, timeout: float
) -> list[Change]:
    changes: list[Change] = []
    for index in range(1, count + WARMUP + 1):
        # Baseline: the poller's detection delay, measured in the same loop (see Poller.baseline_ms).
        baseline_ms = poller.baseline_ms(timeout)
        kind = "add" if index % ADD_EVERY == 0 else "edit"
        if kind == "add":
            state.added.append(index)
            key, value = state.added_route(index)
            path, wanted = f"/new-{index}", (200, f"new-{index}".encode())
            allowed = {(404, b"")}
        else:
            old = (200, f"gen-{state.generation}".encode())
            state.generation += 1
            key, value = state.probe()
            path, wanted, allowed = "/probe", (200, f"gen-{state.generation}".encode()), {old}
        t0 = now()
        try:
            # The poller starts once etcd answered the put (about 1-2 ms on loopback): the new answer can
            # only appear after the watch event, which etcd sends after the same commit.
            etcd_revision = await asyncio.wait_for(client.put(key, value), timeout)
        except (EtcdUnavailableError, TimeoutError) as exc:
            print(f"change {index}: the etcd put failed: {exc}", file=sys.stderr)
            if index > WARMUP:
                changes.append(Change(kind, None, baseline_ms, 0, {}))
            continue
        put_done = now()
        revision = f"etcd-{etcd_revision}"
        t1, unexpected = poller.wait_for(path, wanted, allowed, t0 + timeout)
        # Do not start the next change before Envoy ACKed this one (or it got lost): changes must not overlap.
        # The poller and this wait block the event loop on purpose: the etcd client has nothing to do meanwhile.
        plane.wait_event(revision, f"ack:{ROUTE_TYPE}", timeout if t1 is not None else 1.0)
        if t1 is None:  # resynchronise before the next change
            poller.wait_for(path, wanted, set(), now() + timeout)
        if index > WARMUP:
            stages = _stages(plane.events(revision), t0, put_done, t1)
            changes.append(Change(kind, ms(t1, t0), baseline_ms, unexpected, stages))
        time.sleep(random.uniform(0.02, 0.06))  # decorrelate from timers in Envoy, etcd and the control plane
    return changes


async def measure(routes: int, count: int, args: argparse.Namespace, work: Path) -> SizeResult:
    """Start etcd, load a `routes`-route config, start a control plane child and an Envoy; time `count` puts."""
    work.mkdir()
    state = EtcdState(routes=routes, port=free_port())
    values = state.initial()
    logs = [work / "controlplane.log", work / "envoy.log", work / "etcd" / "etcd0.log"]
    async with run_etcd(work / "etcd") as cluster:
        endpoint = cluster.endpoints[0]
        async with EtcdClient(EtcdSettings(endpoints=(endpoint,), timeout=args.timeout)) as client:
            started = now()
            _, txns = await load(client, values)
            load_s = now() - started
            started = now()
            argv = [sys.executable, str(Path(__file__).absolute()), "--serve-controlplane", endpoint]
            plane = ControlPlaneChild(argv, work / "controlplane.log")
            envoy: EnvoyProcess | None = None
            envoy_log = (work / "envoy.log").open("wb")
            poller = Poller(state.port, args.poll_interval_ms / 1000)
            try:
                xds_port = plane.wait_ready(120)
                ready_s = now() - started
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
                changes = await run_changes(state, client, plane, poller, count, args.timeout)
                rds = await rds_stats(envoy)
                value_bytes = sum(len(value) for value in values.values())
                return SizeResult(routes, len(values), value_bytes, txns, load_s, ready_s, changes, rds, poller.errors)
            except BaseException:
                print_log_tails(logs)
                raise
            finally:
                poller.close()
                if envoy is not None:
                    await envoy.stop()
                plane.stop()
                envoy_log.close()
                if args.keep_logs:
                    args.keep_logs.mkdir(parents=True, exist_ok=True)
                    for log in logs:
                        if log.exists():
                            shutil.copy(log, args.keep_logs / f"{routes}-{log.name}")


# -- figures --------------------------------------------------------------------------------------------------


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
                stage: dist([v for c in picked if (v := c.stages_ms.get(stage)) is not None]) for stage in STAGES
            },
        }
    return {
        "routes": result.routes,
        "keys": result.keys,
        "value_bytes": result.value_bytes,
        "load_txns": result.load_txns,
        "load_s": round(result.load_s, 3),
        "ready_s": round(result.ready_s, 3),
        "envoy_rds": result.envoy_rds,
        "poll_errors": result.poll_errors,
        "by_kind": rows,
    }


def print_report(summaries: list[dict[str, Any]], args: argparse.Namespace, out: IO[str]) -> None:
    write = functools.partial(print, file=out)
    write(
        f"etcd put -> first correct response through Envoy; {args.changes} changes per size ({WARMUP} warm-up "
        f"changes not counted), every {ADD_EVERY}th puts a new route key, the others put bench-probe with a new "
        f"direct response; 1-member etcd; Envoy --concurrency {args.concurrency}; "
        f"poll interval {args.poll_interval_ms} ms"
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
    write("\nwatch event -> RDS DiscoveryResponse written (in the control plane; target <= 5 ms p99 at 10,000 routes):")
    write(f"{'routes':>6} {'p50_ms':>8} {'p90_ms':>8} {'p99_ms':>8} {'max_ms':>8} {'n':>4}")
    for summary in summaries:
        w = summary["by_kind"]["all"]["stages_ms"]["watch_to_written"]
        write(f"{summary['routes']:>6} {w['p50']:>8.1f} {w['p90']:>8.1f} {w['p99']:>8.1f} {w['max']:>8.1f} {w['n']:>4}")
    write("\nwhere the time goes, all changes, p50/p99 ms (control plane timestamps from hooks in its process):")
    write(
        f"{'routes':>6} | {'put':>9} {'watch':>9} {'decode':>9} {'source':>11} {'compile':>11} {'push':>11} | "
        f"{'envoy: ->ACK':>12} {'->first ok':>11} | {'RDS ok/rejected':>15} {'odd answers':>11}"
    )
    for summary in summaries:
        stages = summary["by_kind"]["all"]["stages_ms"]
        rds = summary["envoy_rds"]
        write(
            f"{summary['routes']:>6} | {pair(stages['put']):>9} {pair(stages['watch']):>9} "
            f"{pair(stages['decode']):>9} {pair(stages['source']):>11} {pair(stages['compile']):>11} "
            f"{pair(stages['push']):>11} | {pair(stages['envoy_ack']):>12} {pair(stages['envoy']):>11} | "
            f"{rds.get('update_success', -1):>7}/{rds.get('update_rejected', -1):<7} "
            f"{summary['by_kind']['all']['unexpected_answers']:>11}"
        )
    write("\nsetup per size: keys loaded, value bytes, transactions, load time; control plane start -> xDS port open")
    for summary in summaries:
        write(
            f"{summary['routes']:>6} | {summary['keys']:>6} keys {summary['value_bytes'] // 1024:>5}KB "
            f"{summary['load_txns']:>4} txns {summary['load_s']:>6.2f} s | ready {summary['ready_s']:>6.2f} s"
        )
    notes = [
        "",
        "total = t0 (just before the etcd Put RPC, from this process) -> t1 (the poller first gets the new answer).",
        "control plane = t0 -> the RDS DiscoveryResponse written by grpc (its send op completed) in the control",
        "  plane child = watch (t0 -> the watch response reaches EtcdClient.watch_prefix) + decode (EtcdSource",
        "  applies the event: JSON + schema validation of the value) + source (EtcdSource._revision: a ConfigSet",
        "  of every key) + compile (merge, IR, translate, pack -> SnapshotCache.set) + push (set -> RDS written).",
        "  put = t0 -> etcd answered the Put (overlaps watch). watch->written = the control plane's own share.",
        "envoy = RDS written -> t1 (so total = control plane + envoy); ->ACK = RDS written -> Envoy's ACK seen",
        "  by the control plane. Clocks: CLOCK_MONOTONIC in all processes.",
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
    parser.add_argument("--save", metavar="FILE", type=Path, help="also write that JSON to FILE")
    parser.add_argument("--keep-logs", metavar="DIR", type=Path, help="copy each size's logs into DIR")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a change may take (default 10)")
    parser.add_argument(
        "--poll-interval-ms",
        type=float,
        default=1.0,
        help="sleep between polls; 0 polls flat out but then competes with Envoy for 2 cores",
    )
    parser.add_argument("--concurrency", type=int, default=1, choices=(1, 2), help="Envoy worker threads")
    parser.add_argument("--serve-controlplane", metavar="ENDPOINT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@contextlib.contextmanager
def _work_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="xgate-bench-etcd-") as name:
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
    data = {"summaries": summaries, "changes": {r.routes: [asdict(c) for c in r.changes] for r in results}}
    if args.save:
        args.save.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if args.json:
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        print_report(summaries, args, out)
    return 1 if any(s["by_kind"]["all"]["failures"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
