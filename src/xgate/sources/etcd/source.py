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
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from xgate.config.load import ConfigSet
from xgate.errors import ConfigIssue
from xgate.heap import gc_paused
from xgate.sortedblocks import SortedBlocks
from xgate.sources.etcd.kv import CompactedError, EtcdRequestError, EtcdUnavailableError, KeyValueStore, WatchEvent
from xgate.sources.etcd.layout import KEY_KINDS, PLUGIN, decode, key_of, normalize_prefix, parse_key
from xgate.sources.revision import Revision

log = logging.getLogger("xgate.sources.etcd")
_NOT_A_KEY = "not an xgate key: use <prefix><kind>/<name>, kind one of listener, upstream, route, secret, plugin"


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
    """Follows the keys under `prefix` of a KeyValueStore (an EtcdClient; an in-memory store in unit tests)."""

    def __init__(
        self,
        client: KeyValueStore,
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
        self._issue_keys: set[str] = set()
        self._good: dict[str, dict[str, Any]] = {kind: {} for kind in KEY_KINDS}
        # Each kind's objects by name: a revision shares their blocks instead of copying every object.
        self._ordered: dict[str, SortedBlocks[str, Any]] = {kind: SortedBlocks() for kind in KEY_KINDS}
        self._route_changes: dict[str, Any] = {}
        self._others_changed = True
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
            except (EtcdUnavailableError, EtcdRequestError) as exc:
                # A refused request (e.g. a revoked permission) is retried too, slowly: an operator fixes it
                # in etcd, not here; status shows the error meanwhile.
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
            self._delete(key)
        self._others_changed = True
        self.revision = self.health.revision = revision
        self._full_read_needed = False
        self.health.full_reads += 1
        await self._emit(self._revision(time.perf_counter()))

    async def _follow(self, stop: asyncio.Event) -> None:
        """Apply the watch until `stop` is set (returns) or the watch fails (raises its error)."""
        following = asyncio.ensure_future(self._apply_watch())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not following.done():
                following.cancel()
                with contextlib.suppress(BaseException):
                    await following
        if not following.cancelled():
            following.result()

    async def _apply_watch(self) -> None:
        # One task reads and applies every response: a task and a wait per response cost two turns of the
        # event loop between the response and its apply (0.15 ms a change at 10,000 routes).
        watch = self.client.watch_prefix(self.prefix.encode(), self.revision + 1)
        async with contextlib.aclosing(watch):
            async for revision, events in watch:
                seen_at = time.perf_counter()
                self._connected()
                if events:
                    with gc_paused():
                        self._apply_events(events)
                self.revision = self.health.revision = max(self.revision, revision)
                if events:
                    with gc_paused():
                        update = self._revision(seen_at)
                    await self._emit(update)

    def _apply_events(self, events: list[WatchEvent]) -> None:
        for event in events:
            key = event.key.decode(errors="replace")
            if event.deleted:
                self._delete(key)
            else:
                self._put(key, event.value, event.mod_revision)

    def _put(self, key: str, value: bytes, mod_revision: int) -> None:
        parsed = parse_key(self.prefix, key.encode())
        entry = self._entries.get(key)
        if entry is not None and entry.mod_revision == mod_revision:
            return  # already seen (a resync after compaction re-reads unchanged keys)
        entry = entry or _Entry(mod_revision)
        entry.mod_revision = mod_revision
        self._entries[key] = entry
        if parsed is None:
            entry.issues = [ConfigIssue(key, "key", "", _NOT_A_KEY)]
            self._issue_keys.add(key)
            return
        obj, issues = decode(*parsed, value, key)
        entry.issues = issues
        if issues:
            self._issue_keys.add(key)
            return
        self._issue_keys.discard(key)
        entry.good, entry.has_good = obj, True
        self._set_good(*parsed, obj)

    def _delete(self, key: str) -> None:
        self._entries.pop(key, None)
        self._issue_keys.discard(key)
        parsed = parse_key(self.prefix, key.encode())
        if parsed is not None and parsed[1] in self._good[parsed[0]]:
            self._set_good(*parsed, None)

    def _set_good(self, kind: str, name: str, obj: Any) -> None:
        """Record the object served for (kind, name) (None: none) and what kind of change it was."""
        good, ordered = self._good[kind], self._ordered[kind]
        if obj is None:
            del good[name]
            ordered.delete(name)
        else:
            good[name] = obj
            ordered.set(name, obj)
        if kind == "route":
            self._route_changes[name] = obj
        else:
            self._others_changed = True

    def _revision(self, seen_at: float) -> Revision:
        warnings: list[ConfigIssue] = []
        for key in sorted(self._issue_keys):
            entry = self._entries[key]
            suffix = " (serving its last good version)" if entry.has_good else " (not served)"
            warnings += [replace(issue, message=issue.message + suffix) for issue in entry.issues]
        config = ConfigSet(
            listeners=self._ordered["listener"].snapshot().as_tuple(),
            upstreams=self._ordered["upstream"].snapshot().as_tuple(),
            routes=self._ordered["route"].snapshot(),
            plugins=dict(sorted(self._good[PLUGIN].items())),
            secrets=self._ordered["secret"].snapshot().as_tuple(),
            source=f"etcd {self.prefix}",
            sources=_Keys(self.prefix),
        )
        changes = None if self._others_changed else dict(self._route_changes)
        self._route_changes, self._others_changed = {}, False
        return Revision(
            revision=f"etcd-{self.revision}", config=config, seen_at=seen_at, warnings=tuple(warnings), changes=changes
        )

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
            log.error("no config from etcd: %s; Envoy keeps the last config; retrying", error)
        self.health.connected = False
        self.health.last_error = error


class _Keys(Mapping[tuple[str, str], str]):
    """(kind, name) -> etcd key, computed on demand: issues name their key without a 10,000-entry map."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def __getitem__(self, item: tuple[str, str]) -> str:
        kind, name = item
        if kind == "document":  # the global plugin defaults
            return f"{self._prefix}{PLUGIN}/"
        return key_of(self._prefix, kind, name).decode()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(())

    def __len__(self) -> int:
        return 0


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
