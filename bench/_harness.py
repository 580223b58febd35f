"""Pieces shared by the propagation benchmarks: ADS timing hooks, the control plane child, the poller, figures.

The benchmarks themselves (propagation.py for a config file, etcd_propagation.py for etcd) say what changes
and how; everything here is independent of the config source.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any, cast

from xgate.proxy.process import EnvoyProcess
from xgate.supervisor import die_with_parent

# time.monotonic is CLOCK_MONOTONIC on Linux: one clock for the benchmark and the control plane child.
now = time.monotonic

LISTENER = "bench"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
UPSTREAMS = 4
WARMUP = 3
ADD_EVERY = 4  # every 4th change adds a route; the others edit a direct response


# -- in the control plane child -------------------------------------------------------------------------------


def emit(**event: Any) -> None:
    """One JSON line on stdout, read by ControlPlaneChild in the benchmark process."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def install_ads_hooks() -> None:
    """Wrap the snapshot cache and the ADS stream to report, per config revision: `set` (SnapshotCache.set),
    `written` (a DiscoveryResponse's send completed, with when it was built) and `ack` (Envoy's answer)."""
    from xgate.discovery.cache import SnapshotCache
    from xgate.discovery.server import AdsService
    from xgate.discovery.snapshot import Snapshot
    from xgate.discovery.stream import AdsStream

    original_set = SnapshotCache.set
    original_respond = AdsStream._respond
    original_request = AdsStream.on_request
    original_stream = AdsService.StreamAggregatedResources
    built: dict[int, tuple[str, str, float]] = {}  # id(response) -> (revision, type URL, built at)

    def set_snapshot(self: SnapshotCache, snapshot: Snapshot) -> None:
        emit(ev="set", rev=snapshot.revision, t=now())
        original_set(self, snapshot)

    def respond(self: AdsStream, type_url: str, *args: Any) -> Any:
        response = original_respond(self, type_url, *args)
        revision = self.proxy.types[type_url].sent_revision or ""
        built[id(response)] = (revision, type_url, now())
        self.__dict__.setdefault("bench_nonces", {})[(type_url, response.nonce)] = revision
        return response

    def on_request(self: AdsStream, request: Any, snapshot: Any) -> None:
        if request.response_nonce:
            revision = self.__dict__.get("bench_nonces", {}).get((request.type_url, request.response_nonce))
            if revision is not None:
                emit(ev="ack", rev=revision, type=request.type_url, t=now(), nack=request.HasField("error_detail"))
        original_request(self, request, snapshot)

    async def stream(self: AdsService, requests: Any, context: Any) -> AsyncIterator[Any]:
        responses = cast(AsyncGenerator[Any, None], original_stream(self, requests, context))
        try:
            async for response in responses:
                sent = built.pop(id(response), None)
                yield response
                # grpc.aio resumes the generator once the send operation completed: the response is written.
                if sent is not None:
                    emit(ev="written", rev=sent[0], type=sent[1], built=sent[2], t=now(), bytes=response.ByteSize())
        finally:
            await responses.aclose()

    SnapshotCache.set = set_snapshot  # type: ignore[method-assign]
    AdsStream._respond = respond  # type: ignore[method-assign, assignment]
    AdsStream.on_request = on_request  # type: ignore[method-assign]
    AdsService.StreamAggregatedResources = stream  # type: ignore[method-assign, assignment]


# -- in the benchmark process ---------------------------------------------------------------------------------


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
        if self.proc.poll() is None:
            self.proc.terminate()  # by PID: Popen signals its own child
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        self._log.close()


class Poller:
    """GETs on one blocking keep-alive connection to Envoy's listener; reconnects after an error."""

    def __init__(self, port: int, interval: float) -> None:
        self._port = port
        self._interval = interval
        self._conn: http.client.HTTPConnection | None = None
        self.errors = 0

    def get(self, path: str) -> tuple[int, bytes]:
        """(status, body); status 0 for a connection error."""
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=2)
            self._conn.request("GET", path)
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


def ms(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else (later - earlier) * 1000


async def rds_stats(envoy: EnvoyProcess) -> dict[str, int]:
    """Envoy's own `rds.routes/<listener>.update_*` counters."""
    _, body = await envoy.admin_get(f"/stats?filter=rds\\.routes/{LISTENER}\\.update_")
    stats: dict[str, int] = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        with contextlib.suppress(ValueError):
            stats[name.rsplit(".", 1)[-1]] = int(value)
    return stats


def print_log_tails(logs: Sequence[Path], out: IO[str] = sys.stderr, lines: int = 15) -> None:
    for log in logs:
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- last lines of {log.name} ---", *tail, sep="\n", file=out)


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
