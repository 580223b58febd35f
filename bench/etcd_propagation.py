"""Benchmark: an etcd put -> the first correct response through a real Envoy, and where the time goes.

Run from the repository: `.venv/bin/python bench/etcd_propagation.py [--changes N] [--routes 100,10000] [--json]
[--hosts N [--route-tables one|per_host]]`: with --hosts the routes are spread over N hosts (the probe on the
first), served as one table (a virtual host per host) or as a table per host.
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
import shutil
import sys
import tempfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aetcd.rpc import rpc_pb2

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
    "respond",
    "send",
    "watch_to_written",
    "controlplane",
    "envoy",
    "envoy_ack",
)


# -- the config under test: one etcd key per object -----------------------------------------------------------


def _route(name: str, exact: str, body: str, host: str | None = None) -> dict[str, Any]:
    match: dict[str, Any] = {"path": {"exact": exact}} | ({"hosts": [host]} if host else {})
    return {"name": name, "match": match, "direct_response": {"status": 200, "body": body}}


def host_name(index: int) -> str:
    return f"host-{index}"


@dataclass
class EtcdState(RouteState):
    """What etcd holds: the probe's generation and the routes added so far (the same config as propagation.py);
    with `hosts`, every route names one of them (the probe, the steady and the added routes the first)."""

    hosts: int = 0
    route_tables: str = "one"

    @property
    def probe_host(self) -> str | None:
        return host_name(0) if self.hosts else None

    def key(self, kind: str, name: str) -> bytes:
        return key_of(DEFAULT_PREFIX, kind, name)

    def probe(self) -> tuple[bytes, bytes]:
        route = _route("bench-probe", "/probe", f"gen-{self.generation}", self.probe_host)
        return self.key("route", "bench-probe"), encode(route)

    def added_route(self, index: int) -> tuple[bytes, bytes]:
        route = _route(f"new-{index}", f"/new-{index}", f"new-{index}", self.probe_host)
        return self.key("route", f"new-{index}"), encode(route)

    def initial(self) -> dict[bytes, bytes]:
        """`routes` routes in all: the probe, the steady route and `/svc-<n>/` prefixes to a few upstreams."""
        listener = {"address": "127.0.0.1", "port": self.port, "route_tables": self.route_tables}
        values = {self.key("listener", LISTENER): encode(listener)}
        for u in range(UPSTREAMS):
            # Never requested: a closed port is fine, and the clusters do not change between revisions.
            values[self.key("upstream", f"pool-{u}")] = encode({"endpoints": ["127.0.0.1:9"]})
        values.update([self.probe()])
        values[self.key("route", "bench-steady")] = encode(_route("bench-steady", "/steady", "steady", self.probe_host))
        for n in range(max(0, self.routes - 2)):
            route: dict[str, Any] = {"match": {"path": {"prefix": f"/svc-{n}/"}}, "upstream": f"pool-{n % UPSTREAMS}"}
            if self.hosts:
                route["match"]["hosts"] = [host_name(n % self.hosts)]
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
    from xgate.sources.etcd.source import EtcdSource
    from xgate.sources.revision import Revision

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
    _harness.serve_controlplane(None, etcd=EtcdSettings(endpoints=(endpoint,)))


# -- one size -------------------------------------------------------------------------------------------------


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
    written_event = events.get(f"written:{ROUTE_TYPE}", {})
    written = written_event.get("t")
    return {
        "put": ms(put_done, t0),  # the Put RPC, as the writer sees it (committed by etcd)
        "watch": ms(watch, t0),  # put sent -> the watch response is in the control plane
        "decode": ms(built.get("t"), watch),  # the event's value: JSON + schema validation (EtcdSource._put)
        "source": ms(built.get("done"), built.get("t")),  # EtcdSource._revision: a ConfigSet of every key
        "compile": ms(snapshot_set, built.get("done")),  # IR + translate + pack -> SnapshotCache.set
        "push": ms(written, snapshot_set),  # set -> RDS response written = respond + send
        "respond": ms(written_event.get("built"), snapshot_set),  # set -> the stream woke and built the response
        "send": ms(written, written_event.get("built")),  # built -> grpc completed the send
        "watch_to_written": ms(written, watch),
        "controlplane": ms(written, t0),
        "envoy": ms(t1, written),  # RDS written -> first correct response
        "envoy_ack": ms(events.get(f"ack:{ROUTE_TYPE}", {}).get("t"), written),
    }


async def put(state: EtcdState, client: EtcdClient, index: int, kind: str, timeout: float) -> Made | None:
    """Put the probe (an edit) or the new route's key (an add); None if the put failed."""
    key, value = state.added_route(index) if kind == "add" else state.probe()
    t0 = now()
    try:
        # The poller starts once etcd answered the put (about 1-2 ms on loopback): the new answer can
        # only appear after the watch event, which etcd sends after the same commit.
        etcd_revision = await asyncio.wait_for(client.put(key, value), timeout)
    except (EtcdUnavailableError, TimeoutError) as exc:
        print(f"change {index}: the etcd put failed: {exc}", file=sys.stderr)
        return None
    put_done = now()
    # The poller and the waits then block the event loop on purpose: the etcd client has nothing to do meanwhile.
    return Made(t0, f"etcd-{etcd_revision}", lambda events, t1: _stages(events, t0, put_done, t1))


async def measure(routes: int, count: int, args: argparse.Namespace, work: Path) -> SizeResult:
    """Start etcd, load a `routes`-route config, start a control plane child and an Envoy; time `count` puts."""
    work.mkdir()
    with contextlib.ExitStack() as stack:
        etcd_home = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.etcd_dir))) if args.etcd_dir else work
        return await _measure(routes, count, args, work, etcd_home / "etcd")


async def _measure(routes: int, count: int, args: argparse.Namespace, work: Path, etcd_dir: Path) -> SizeResult:
    state = EtcdState(routes=routes, port=free_port(), hosts=args.hosts, route_tables=args.route_tables)
    args.poll_host = state.probe_host
    values = state.initial()
    logs = [work / "controlplane.log", work / "envoy.log", etcd_dir / "etcd0.log"]
    async with run_etcd(etcd_dir) as cluster:
        endpoint = cluster.endpoints[0]
        async with EtcdClient(EtcdSettings(endpoints=(endpoint,), timeout=args.timeout)) as client:
            started = now()
            _, txns = await load(client, values)
            load_s = now() - started
            argv = [sys.executable, str(Path(__file__).absolute()), "--serve-controlplane", endpoint]
            try:
                async with run_rig(argv, state.port, args, work, logs) as rig:

                    async def change(index: int, kind: str) -> Made | None:
                        return await put(state, client, index, kind, args.timeout)

                    changes = await run_changes(state, rig, count, args.timeout, change)
                    rds = await rds_stats(rig.envoy)
                    value_bytes = sum(len(value) for value in values.values())
                    return SizeResult(
                        routes, len(values), value_bytes, txns, load_s, rig.ready_s, changes, rds, rig.poller.errors
                    )
            finally:
                if args.keep_logs:
                    args.keep_logs.mkdir(parents=True, exist_ok=True)
                    for log in logs:
                        if log.exists():
                            shutil.copy(log, args.keep_logs / f"{routes}-{log.name}")


# -- figures --------------------------------------------------------------------------------------------------


def summarize(result: SizeResult) -> dict[str, Any]:
    return {
        "routes": result.routes,
        "keys": result.keys,
        "value_bytes": result.value_bytes,
        "load_txns": result.load_txns,
        "load_s": round(result.load_s, 3),
        "ready_s": round(result.ready_s, 3),
        "envoy_rds": result.envoy_rds,
        "poll_errors": result.poll_errors,
        "by_kind": _cli.by_kind(result.changes, STAGES),
    }


def print_report(summaries: list[dict[str, Any]], args: argparse.Namespace, out: IO[str]) -> None:
    write = functools.partial(print, file=out)
    write(
        f"etcd put -> first correct response through Envoy; {args.changes} changes per size ({WARMUP} warm-up "
        f"changes not counted), every {ADD_EVERY}th puts a new route key, the others put bench-probe with a new "
        f"direct response; 1-member etcd (data dir in {args.etcd_dir or 'the temp dir'}); "
        f"Envoy --concurrency {args.concurrency}; "
        f"{'pinned: control plane on CPU 0, the rest on CPU 1; ' if args.pin else ''}"
        f"poll interval {args.poll_interval_ms} ms; "
        + (f"routes over {args.hosts} hosts, route_tables: {args.route_tables}" if args.hosts else "no hosts")
    )
    _cli.print_totals(summaries, write)
    write("\nwatch event -> RDS DiscoveryResponse written (in the control plane; target <= 5 ms p99 at 10,000 routes):")
    write(
        f"{'routes':>6} {'p50_ms':>8} {'p90_ms':>8} {'p99_ms':>8} {'max_ms':>8} {'n':>4} | push p50/p99 = "
        f"{'respond':>9} + {'send':>9}"
    )
    for summary in summaries:
        stages = summary["by_kind"]["all"]["stages_ms"]
        w = stages["watch_to_written"]
        write(
            f"{summary['routes']:>6} {w['p50']:>8.1f} {w['p90']:>8.1f} {w['p99']:>8.1f} {w['max']:>8.1f} {w['n']:>4} | "
            f"{'':>15}{pair(stages['respond']):>9} + {pair(stages['send']):>9}"
        )
    write(_cli.WHERE_THE_TIME_GOES)
    write(
        f"{'routes':>6} | {'put':>9} {'watch':>9} {'decode':>9} {'source':>11} {'compile':>11} {'push':>11} | "
        + _cli.ENVOY_HEADER
    )
    for summary in summaries:
        stages = summary["by_kind"]["all"]["stages_ms"]
        write(
            f"{summary['routes']:>6} | {pair(stages['put']):>9} {pair(stages['watch']):>9} "
            f"{pair(stages['decode']):>9} {pair(stages['source']):>11} {pair(stages['compile']):>11} "
            f"{pair(stages['push']):>11} | " + _cli.envoy_cell(summary)
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
        *_cli.common_notes("all"),
    ]
    write("\n".join(notes))


# -- command line ---------------------------------------------------------------------------------------------


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save", metavar="FILE", type=Path, help="also write that JSON to FILE")
    parser.add_argument("--keep-logs", metavar="DIR", type=Path, help="copy each size's logs into DIR")
    parser.add_argument(
        "--etcd-dir",
        metavar="DIR",
        type=Path,
        help="put etcd's data dir under DIR (e.g. /dev/shm: no disk flush in the put) instead of the temp dir",
    )
    _cli.host_options(parser)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _cli.parse_args(argv, __doc__, "ENDPOINT", _options)


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    return _cli.main(
        parse_args(argv),
        out,
        serve=serve_controlplane,
        measure=measure,
        summarize=summarize,
        print_report=print_report,
        work_prefix="xgate-bench-etcd-",
    )


if __name__ == "__main__":
    sys.exit(main())
