"""The etcd source: read the prefix, watch it from that revision + 1, never miss or misorder a change.

Each key is its own change: a value that does not parse or validate is reported with its key, and the last
good version of that object keeps serving; other keys in the same transaction apply. A dropped connection
resumes the watch from the last revision seen + 1; a compacted revision makes us read the whole prefix
again and watch from that read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aetcd.rpc.kv_pb2 import Event

from xgate.config.load import ConfigSet
from xgate.config.schema import Listener, Route, Upstream
from xgate.errors import ConfigIssue
from xgate.sources.etcd.client import CompactedError, EtcdClient, EtcdUnavailableError
from xgate.sources.etcd.layout import PLUGIN, decode, normalize_prefix, parse_key
from xgate.sources.revision import Revision

log = logging.getLogger("xgate.sources.etcd")


@dataclass
class _Entry:
    mod_revision: int
    good: Any = None  # the last valid object (or plugin settings) this key held
    has_good: bool = False
    issues: list[ConfigIssue] = field(default_factory=list)


@dataclass
class EtcdHealth:
    """What `xgate status` says about the store."""

    connected: bool = False
    revision: int = 0
    outage_since: float | None = None
    last_error: str | None = None
    outages: int = 0
    full_reads: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "revision": self.revision,
            "outage_since": self.outage_since,
            "last_error": self.last_error,
            "outages": self.outages,
            "full_reads": self.full_reads,
        }


class EtcdSource:
    def __init__(
        self,
        client: EtcdClient,
        emit: Callable[[Revision], Awaitable[None]],
        *,
        prefix: str = "/xgate/",
        retry_initial: float = 0.1,
        retry_max: float = 2.0,
    ) -> None:
        self.client = client
        self.prefix = normalize_prefix(prefix)
        self._emit = emit
        self._entries: dict[str, _Entry] = {}
        self.revision = 0
        self.health = EtcdHealth()
        self._retry_initial, self._retry_max = retry_initial, retry_max
        self._full_read_needed = True

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Follow etcd until `stop` is set or the task is cancelled; outages are retried forever."""
        stop = stop or asyncio.Event()
        delay = self._retry_initial
        while not stop.is_set():
            try:
                if self._full_read_needed:
                    await self.read_all()
                await self._follow(stop)
            except CompactedError as exc:
                log.warning(
                    "etcd compacted past revision %d (%s); reading %s again", self.revision + 1, exc, self.prefix
                )
                self._full_read_needed = True
            except EtcdUnavailableError as exc:
                self._outage(str(exc))
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = self._retry_initial

    async def read_all(self) -> None:
        """Read every key under the prefix and emit the result (a start, or a resync after compaction)."""
        revision, kvs = await self.client.get_prefix(self.prefix.encode())
        self._connected()
        seen: set[str] = set()
        for kv in kvs:
            key = kv.key.decode(errors="replace")
            seen.add(key)
            self._put(key, kv.value, kv.mod_revision)
        for key in set(self._entries) - seen:
            del self._entries[key]
        self.revision = self.health.revision = revision
        self._full_read_needed = False
        self.health.full_reads += 1
        await self._emit(self._revision(time.perf_counter()))

    async def _follow(self, stop: asyncio.Event) -> None:
        watch = self.client.watch_prefix(self.prefix.encode(), self.revision + 1)
        stopping = asyncio.create_task(stop.wait())
        step: asyncio.Future[tuple[int, list[Event]]] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(watch))
                done, _ = await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if step not in done:
                    return
                revision, events = step.result()
                seen_at = time.perf_counter()
                self._connected()
                if events:
                    for event in events:
                        key = event.kv.key.decode(errors="replace")
                        if event.type == Event.DELETE:
                            self._entries.pop(key, None)
                        else:
                            self._put(key, event.kv.value, event.kv.mod_revision)
                self.revision = self.health.revision = max(self.revision, revision)
                if events:
                    await self._emit(self._revision(seen_at))
        finally:
            stopping.cancel()
            if step is not None and not step.done():
                step.cancel()
                with contextlib.suppress(BaseException):
                    await step
            await watch.aclose()

    def _put(self, key: str, value: bytes, mod_revision: int) -> None:
        parsed = parse_key(self.prefix, key.encode())
        entry = self._entries.get(key)
        if entry is not None and entry.mod_revision == mod_revision:
            return  # already seen (a resync after compaction re-reads unchanged keys)
        entry = entry or _Entry(mod_revision)
        entry.mod_revision = mod_revision
        if parsed is None:
            entry.issues = [
                ConfigIssue(
                    key,
                    "key",
                    "",
                    "not an xgate key: use <prefix><kind>/<name>, kind one of listener, upstream, route, plugin",
                )
            ]
        else:
            obj, issues = decode(*parsed, value, key)
            entry.issues = issues
            if not issues:
                entry.good, entry.has_good = obj, True
        self._entries[key] = entry

    def _revision(self, seen_at: float) -> Revision:
        found: dict[str, list[Any]] = {"listener": [], "upstream": [], "route": []}
        plugins: dict[str, Any] = {}
        sources: dict[tuple[str, str], str] = {}
        warnings: list[ConfigIssue] = []
        for key in sorted(self._entries):
            entry = self._entries[key]
            for issue in entry.issues:
                suffix = " (serving its last good version)" if entry.has_good else " (not served)"
                warnings.append(ConfigIssue(issue.source, issue.obj, issue.field, issue.message + suffix))
            if not entry.has_good:
                continue
            kind, name = parse_key(self.prefix, key.encode()) or ("", "")
            sources[(kind, name)] = key
            if kind == PLUGIN:
                plugins[name] = entry.good
            else:
                found[kind].append(entry.good)
        config = ConfigSet(
            listeners=tuple[Listener, ...](found["listener"]),
            upstreams=tuple[Upstream, ...](found["upstream"]),
            routes=tuple[Route, ...](found["route"]),
            plugins=plugins,
            source=f"etcd {self.prefix}",
            sources=sources,
        )
        return Revision(revision=f"etcd-{self.revision}", config=config, seen_at=seen_at, warnings=tuple(warnings))

    def _connected(self) -> None:
        if not self.health.connected and self.health.outage_since is not None:
            log.warning(
                "etcd is back after %.1f s; resuming from revision %d",
                time.time() - self.health.outage_since,
                self.revision + 1,
            )
        self.health.connected = True
        self.health.outage_since = None

    def _outage(self, error: str) -> None:
        if self.health.connected or self.health.outage_since is None:
            self.health.outages += 1
            self.health.outage_since = time.time()
            log.error("etcd unreachable (%s); Envoy keeps the last config; retrying", error)
        self.health.connected = False
        self.health.last_error = error


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
