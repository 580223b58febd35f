"""Pieces shared by the propagation benchmarks: ADS timing hooks, the control plane child, Envoy, the poller,
the change loop, figures.

The benchmarks themselves (propagation.py for a config file, etcd_propagation.py for etcd) say how a change is
made and how the control plane child follows it; everything here is independent of the config source. The
command line, the summaries and the shared parts of the report are in _cli.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from xgate.proxy.bootstrap import DRAIN_ARGS, build_bootstrap
from xgate.proxy.process import EnvoyProcess
from xgate.supervisor import die_with_parent

if TYPE_CHECKING:
    from xgate.sources.etcd.client import EtcdSettings

# time.monotonic is CLOCK_MONOTONIC on Linux: one clock for the benchmark and the control plane child.
now = time.monotonic

LISTENER = "bench"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
UPSTREAMS = 4
WARMUP = 3
ADD_EVERY = 4  # every 4th change adds a route; the others edit a direct response


# -- in the control plane child -------------------------------------------------------------------------------


# Reported while a change is on its way through the control plane: buffered, so the timing does not pay a
# pipe write each (about 50 us apiece in a 2-3 ms window); the next other event flushes them.
_IN_FLIGHT = frozenset({"watch", "read", "revision", "set", "staged"})


def emit(**event: Any) -> None:
    """One JSON line on stdout, read by ControlPlaneChild in the benchmark process."""
    sys.stdout.write(json.dumps(event) + "\n")
    if event["ev"] not in _IN_FLIGHT:
        sys.stdout.flush()


def install_ads_hooks() -> None:
    """Wrap the snapshot cache and the ADS streams (both variants) to report, per config revision: `set`
    (SnapshotCache.set), `written` (a response's send completed, with when it was built) and `ack` (Envoy's
    answer)."""
    from xgate.discovery.cache import SnapshotCache
    from xgate.discovery.delta import DeltaResponse, DeltaStream
    from xgate.discovery.server import AdsService
    from xgate.discovery.snapshot import Snapshot
    from xgate.discovery.stream import AdsStream, Response, Stream

    original_wires: dict[Any, Callable[[Any], bytes]] = {kind: kind.wire for kind in (Response, DeltaResponse)}
    original_set = SnapshotCache.set
    original_next = {kind: kind._next for kind in (AdsStream, DeltaStream)}
    original_requests = {kind: kind.on_request for kind in (AdsStream, DeltaStream)}
    original_serve = AdsService._serve
    built: dict[int, tuple[str, str, float]] = {}  # id(response) -> (revision, type URL, built at)
    serialized: dict[int, tuple[str, str, float]] = {}  # id(the bytes sent) -> the same

    def wire(original: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
        def wrapped(self: Any) -> bytes:
            data = original(self)
            info = built.pop(id(self), None)
            if info is not None:
                serialized[id(data)] = info
            return data

        return wrapped

    def set_snapshot(self: SnapshotCache, snapshot: Snapshot) -> None:
        emit(ev="set", rev=snapshot.revision, t=now())
        original_set(self, snapshot)

    def respond(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(self: Stream[Any, Any], type_url: str, *args: Any) -> Any:
            response = original(self, type_url, *args)
            if response is not None:
                revision = self.proxy.types[type_url].sent_revision or ""
                built[id(response)] = (revision, type_url, now())
                self.__dict__.setdefault("bench_nonces", {})[(type_url, response.nonce)] = revision
            return response

        return wrapped

    def on_request(original: Callable[..., None]) -> Callable[..., None]:
        def wrapped(self: Stream[Any, Any], request: Any, snapshot: Any) -> None:
            if request.response_nonce:
                revision = self.__dict__.get("bench_nonces", {}).get((request.type_url, request.response_nonce))
                if revision is not None:
                    nack = request.HasField("error_detail")
                    emit(ev="ack", rev=revision, type=request.type_url, t=now(), nack=nack)
            original(self, request, snapshot)

        return wrapped

    class WrittenContext:
        """The servicer's context, reporting each response once grpc completed its send (context.write)."""

        def __init__(self, context: Any) -> None:
            self._context = context

        def __getattr__(self, name: str) -> Any:
            return getattr(self._context, name)

        async def write(self, response: bytes) -> None:
            sent = serialized.pop(id(response), None)
            await self._context.write(response)
            if sent is not None:
                emit(ev="written", rev=sent[0], type=sent[1], built=sent[2], t=now(), bytes=len(response))

    async def serve(self: AdsService, stream: Any, requests: Any, context: Any) -> None:
        await original_serve(self, stream, requests, WrittenContext(context))

    for kind, original in original_wires.items():
        kind.wire = wire(original)
    SnapshotCache.set = set_snapshot  # type: ignore[method-assign]
    for stream_kind in (AdsStream, DeltaStream):
        stream_kind._next = respond(original_next[stream_kind])  # type: ignore[method-assign]
        stream_kind.on_request = on_request(original_requests[stream_kind])  # type: ignore[method-assign]
    AdsService._serve = serve  # type: ignore[method-assign]


def serve_controlplane(config_path: str | None, etcd: EtcdSettings | None = None) -> None:
    """Child mode, once the benchmark wrapped its config source: install the ADS hooks, then run
    run_controlplane on `config_path` and/or `etcd` (ephemeral ports, `ready` reported) until SIGINT/SIGTERM."""
    import logging

    from xgate.controlplane import ControlPlane
    from xgate.runtime import Bound, run_controlplane
    from xgate.sources.etcd.layout import DEFAULT_PREFIX

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_ads_hooks()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

        def ready(bound: Bound) -> None:
            emit(ev="ready", xds=bound.xds[1], status=bound.status[1])

        await run_controlplane(
            config_path,
            etcd=etcd,
            prefix=DEFAULT_PREFIX,
            xds=("127.0.0.1", 0),
            status=("127.0.0.1", 0),
            on_ready=ready,
            stop=stop,
            plane=ControlPlane(),
        )

    asyncio.run(main())


# -- in the benchmark process ---------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate a child this benchmark started (by its PID: Popen signals its own child), kill it after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ControlPlaneChild:
    """The control plane child process (`argv`) and the events it reported, by config revision."""

    def __init__(self, argv: Sequence[str], log_path: Path) -> None:
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            die_with_parent(list(argv)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._events: dict[str, dict[str, dict[str, Any]]] = {}
        self._ready: dict[str, Any] | None = None
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="controlplane-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                if event["ev"] == "ready":
                    self._ready = event
                else:
                    key = event["ev"] + ("" if "type" not in event else ":" + event["type"])
                    # The first event of each kind per revision is the one the change waited for.
                    self._events.setdefault(event["rev"], {}).setdefault(key, event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_ready(self, timeout: float) -> int:
        with self._changed:
            self._changed.wait_for(lambda: self._ready is not None or self.proc.poll() is not None, timeout)
            if self._ready is None:
                raise RuntimeError(f"the control plane was not ready within {timeout} s (see its log)")
            return int(self._ready["xds"])

    @property
    def status_port(self) -> int:
        """The port of the child's status API (GET /status, /metrics), once it is ready."""
        if self._ready is None:
            raise RuntimeError("the control plane child is not ready")
        return int(self._ready["status"])

    def wait_event(self, revision: str, key: str, timeout: float) -> dict[str, Any] | None:
        with self._changed:
            self._changed.wait_for(
                lambda: key in self._events.get(revision, {}) or self.proc.poll() is not None, timeout
            )
            return self._events.get(revision, {}).get(key)

    def events(self, revision: str) -> dict[str, dict[str, Any]]:
        with self._changed:
            return dict(self._events.get(revision, {}))

    def stop(self) -> None:
        stop_process(self.proc)
        self._reader.join(2)
        self._log.close()


class Poller:
    """GETs on one blocking keep-alive connection to Envoy's listener; reconnects after an error."""

    def __init__(self, port: int, interval: float, host: str | None = None) -> None:
        self._port = port
        self._interval = interval
        self._headers = {"Host": host} if host else {}  # the routes' host, when they name one
        self._conn: http.client.HTTPConnection | None = None
        self.errors = 0

    def get(self, path: str) -> tuple[int, bytes]:
        """(status, body); status 0 for a connection error."""
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=2)
            self._conn.request("GET", path, headers=self._headers)
            response = self._conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.errors += 1
            self.close()
            return 0, b""

    def wait_for(
        self,
        path: str,
        wanted: tuple[int, bytes],
        allowed: set[tuple[int, bytes]],
        deadline: float,
        not_before: float = 0.0,
    ) -> tuple[float | None, int]:
        """Poll `path` until it answers `wanted` to a request sent at or after `not_before`.

        Returns the time the answer was seen (None at the deadline) and the number of unexpected answers.
        """
        unexpected = 0
        while True:
            sent = now()
            answer = self.get(path)
            seen = now()
            if answer == wanted and sent >= not_before:
                return seen, unexpected
            if answer != wanted and answer not in allowed:
                unexpected += 1
            if seen >= deadline:
                return None, unexpected
            if self._interval:
                time.sleep(self._interval)

    def baseline_ms(self, timeout: float) -> float:
        """The poller's detection delay: a no-op "change" lands at a random moment while `/steady` (already
        served) is polled; the answer counts when its request was sent at or after that moment."""
        start = now()
        landing = start + random.uniform(0.005, 0.015)
        seen, _ = self.wait_for("/steady", (200, b"steady"), set(), start + timeout, not_before=landing)
        return ms(seen, landing) or float("nan")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- one size: the control plane child, Envoy and the poller; the changes -------------------------------------


@dataclass
class Rig:
    """A running control plane child, an Envoy following it and a poller on Envoy's listener."""

    plane: ControlPlaneChild
    envoy: EnvoyProcess
    poller: Poller
    ready_s: float  # the control plane child started -> it opened its xDS port


@contextlib.asynccontextmanager
async def run_rig(
    child_argv: Sequence[str], port: int, args: argparse.Namespace, work: Path, logs: Sequence[Path]
) -> AsyncIterator[Rig]:
    """Start the control plane child (`child_argv`, logging to work/controlplane.log) and an Envoy (work/envoy),
    wait until Envoy serves the initial config on `port`; print the tails of `logs` if anything fails."""
    started = now()
    plane = ControlPlaneChild(child_argv, work / "controlplane.log")
    envoy: EnvoyProcess | None = None
    envoy_log = (work / "envoy.log").open("wb")
    poller = Poller(port, args.poll_interval_ms / 1000, getattr(args, "poll_host", None))
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
            extra_args=list(DRAIN_ARGS),
        )
        await envoy.start()
        await envoy.wait_ready(120)
        if poller.wait_for("/probe", (200, b"gen-0"), set(), now() + 60)[0] is None:
            raise RuntimeError("Envoy did not serve the initial config within 60 s")
        yield Rig(plane, envoy, poller, ready_s)
    except BaseException:
        print_log_tails(logs)
        raise
    finally:
        poller.close()
        if envoy is not None:
            await envoy.stop()
        plane.stop()
        envoy_log.close()


class Expected(NamedTuple):
    """What a change is and what the poller waits for: `wanted` at `path`; `allowed` answers meanwhile."""

    kind: str  # "edit" (the probe's direct response body) or "add" (a new route)
    path: str
    wanted: tuple[int, bytes]
    allowed: set[tuple[int, bytes]]


@dataclass
class RouteState:
    """The probe's generation and the routes added so far; the benchmarks say how the config is written."""

    routes: int
    port: int
    generation: int = 0
    added: list[int] = field(default_factory=list)

    def next_change(self, index: int) -> Expected:
        """Every ADD_EVERY-th change adds the route `/new-<index>`, the others edit the probe's body."""
        if index % ADD_EVERY == 0:
            self.added.append(index)
            return Expected("add", f"/new-{index}", (200, f"new-{index}".encode()), {(404, b"")})
        old = (200, f"gen-{self.generation}".encode())
        self.generation += 1
        return Expected("edit", "/probe", (200, f"gen-{self.generation}".encode()), {old})


@dataclass
class Change:
    kind: str  # "edit" (the probe's direct response body) or "add" (a new route)
    total_ms: float | None  # None: the change could not be made or the answer did not come in time
    baseline_ms: float
    unexpected: int
    stages_ms: dict[str, float | None]


Stages = Callable[[dict[str, dict[str, Any]], float | None], dict[str, float | None]]


class Made(NamedTuple):
    """A change made: t0 (just before it was made), the config revision the control plane will report, and
    how to split t0 -> t1 (first correct response) at the control plane's events for that revision."""

    t0: float
    revision: str
    stages: Stages


async def run_changes(
    state: RouteState, rig: Rig, count: int, timeout: float, make: Callable[[int, str], Awaitable[Made | None]]
) -> list[Change]:
    """WARMUP + `count` changes, one at a time; `make(index, kind)` makes one after `state.next_change` (None:
    it failed, a failure). The poller and the waits block the event loop on purpose: nothing else runs on it."""
    changes: list[Change] = []
    for index in range(1, count + WARMUP + 1):
        # Baseline: the same loop timing a "change" that needs no control plane. It lands at a random moment
        # t while the poller is already polling a route that is served; the answer counts when its request
        # was sent at or after t. That is the detection delay (poll interval + one request) a real change has.
        baseline_ms = rig.poller.baseline_ms(timeout)
        kind, path, wanted, allowed = state.next_change(index)
        made = await make(index, kind)
        if made is None:
            if index > WARMUP:
                changes.append(Change(kind, None, baseline_ms, 0, {}))
            continue
        t1, unexpected = rig.poller.wait_for(path, wanted, allowed, made.t0 + timeout)
        # Do not start the next change before Envoy ACKed this one (or it got lost): changes must not overlap.
        rig.plane.wait_event(made.revision, f"ack:{ROUTE_TYPE}", timeout if t1 is not None else 1.0)
        if t1 is None:  # resynchronise before the next change
            rig.poller.wait_for(path, wanted, set(), now() + timeout)
        if index > WARMUP:
            stages = made.stages(rig.plane.events(made.revision), t1)
            changes.append(Change(kind, ms(t1, made.t0), baseline_ms, unexpected, stages))
        time.sleep(random.uniform(0.02, 0.06))  # decorrelate from timers in Envoy, the source and the control plane
    return changes


def ms(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else (later - earlier) * 1000


async def rds_stats(envoy: EnvoyProcess) -> dict[str, int]:
    """Envoy's own `rds.routes/<listener>.update_*` counters (with `route_tables: per_host`, summed over the
    hosts' tables `routes/<listener>/<host>`)."""
    _, body = await envoy.admin_get(f"/stats?filter=rds\\.routes/{LISTENER}(/[^.]*)?\\.update_")
    stats: dict[str, int] = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        with contextlib.suppress(ValueError):
            key = name.rsplit(".", 1)[-1]
            stats[key] = stats.get(key, 0) + int(value)
    return stats


def print_log_tails(logs: Sequence[Path], out: IO[str] = sys.stderr, lines: int = 15) -> None:
    for log in logs:
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- last lines of {log.name} ---", *tail, sep="\n", file=out)


# -- figures --------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); with < 100 samples p99 is near max."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def dist(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max and the count, rounded to 0.01 ms."""
    return {f"p{q}": round(percentile(values, q), 2) for q in (50, 90, 99)} | {
        "max": round(max(values), 2) if values else float("nan"),
        "n": len(values),
    }


def pair(d: dict[str, float]) -> str:
    return f"{d['p50']:.1f}/{d['p99']:.1f}"
