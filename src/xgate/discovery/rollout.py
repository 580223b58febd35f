"""Publishes each revision to Envoys and services in the order that keeps every route's references good.

A route may name a resource of one of xgate's services (a dyeing settings key, a policy, a limit). As clusters
go before the routes that use them, such a resource goes to the services first, and the route goes to the
Envoys only once every connected instance of the service has ACKed it; a resource leaves the services only
after every Envoy ACKed routes that no longer name it. So, for a revision R:

1. services: what the Envoys may still name (`retained`) plus R's resources, R's version of a name winning;
   wait until each connected service instance ACKs (a NACK refuses R: it never reaches an Envoy), or
   `service_timeout` passes (R goes on; the late instance shows as not in sync);
2. Envoys: R's resources;
3. once every connected Envoy ACKed R, and `prune_delay` later (a request that matched an old route may still
   be on its way to the service: Envoy's own timeouts for the services are well under it), services keep R's
   resources only.

A change that adds nothing for the services skips step 1 (its cost is then what it always was); a newer
revision supersedes one still waiting. No gRPC here: the ADS streams follow the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from xgate.discovery import typeurls
from xgate.discovery.cache import SnapshotCache
from xgate.discovery.snapshot import Resource, Snapshot, build_snapshot
from xgate.discovery.status import ProxyStatus
from xgate.telemetry.journey import Consumer, RevisionJourneys
from xgate.translate import Resources

log = logging.getLogger("xgate.discovery")

ByType = Mapping[str, Mapping[str, Resource]]


@dataclass(frozen=True)
class Refusal:
    """A revision a service instance NACKed: it reached no Envoy."""

    revision: str
    service: str
    node: str
    message: str
    at: float

    def __str__(self) -> str:
        return f"{self.service} {self.node} refused revision {self.revision}: {self.message}"


@dataclass(frozen=True)
class _Pending:
    envoy: ByType
    services: ByType
    revision: str
    seen_at: float


class Rollout:
    """Owns what the cache serves. `publish` a compiled revision; `on_served(revision)` is called when its Envoy
    resources are served, `on_refused(refusal)` when a service refused it."""

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        service_timeout: float = 5.0,
        prune_delay: float = 2.0,
        on_served: Callable[[str], None] | None = None,
        on_refused: Callable[[Refusal], None] | None = None,
    ) -> None:
        self.cache = cache
        self.service_timeout = service_timeout
        self.prune_delay = prune_delay
        self.on_served = on_served
        self.on_refused = on_refused
        self.refusal: Refusal | None = None
        self._retained: dict[str, dict[str, Resource]] = {}  # service resources an Envoy may still name
        self._latest: ByType = {}  # the services part of the revision last served to Envoys
        self._pending: _Pending | None = None
        self._prune = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._serial = 0
        self.journeys: RevisionJourneys | None = None  # each revision's way to the consumers, as a trace

    def publish(self, resources: Resources, revision: str, seen_at: float = 0.0) -> None:
        """Serve `resources` as revision `revision` (see the module for the order); returns at once."""
        self._serial += 1
        packed = build_snapshot(resources, revision, self._serial, self.cache.snapshot, seen_at)
        envoy = {url: found for url, found in packed.resources.items() if url in typeurls.ENVOY_TYPES}
        services = {url: found for url, found in packed.resources.items() if url not in typeurls.ENVOY_TYPES}
        self._pending = None
        if self.journeys is not None:
            self.journeys.published(revision, seen_at)
        if _covers(self._retained, services) or not self._consumers_of(services):
            self._serve_envoys(envoy, services, revision, seen_at)
            return
        current = self.cache.snapshot
        kept = {url: found for url, found in (current.resources if current else {}).items() if url in envoy}
        staged = _merged(self._retained, services)
        self._set(kept, staged, current.revision if current else "", revision, seen_at)
        self._trace_push(revision, "services", _roles_of(services))
        self._pending = _Pending(envoy, services, revision, seen_at)
        self._start()

    def _consumers_of(self, services: ByType) -> set[str]:
        """The roles of connected services that take some of `services`' types."""
        urls = set(services)
        return {
            proxy.role
            for proxy in self.cache.status.connected.values()
            if typeurls.ROLES.get(proxy.role, urls) & urls and proxy.role != typeurls.ENVOY
        }

    def _serve_envoys(self, envoy: ByType, services: ByType, revision: str, seen_at: float) -> None:
        self._retained = _merged(self._retained, services)
        self._latest = services
        self._set(envoy, self._retained, revision, revision, seen_at)
        self._trace_push(revision, "envoys", {typeurls.ENVOY})
        self._prune = not _same(self._retained, services)
        if self.refusal is not None and self.refusal.revision != revision:
            self.refusal = None
        if self.on_served is not None:
            self.on_served(revision)
        if self._prune:
            self._start()

    def _trace_push(self, revision: str, phase: str, roles: set[str]) -> None:
        """Tell the journey of `revision` which consumers it now goes to (and which hold it already)."""
        if self.journeys is None:
            return
        snapshot = self.cache.snapshot
        going: list[Consumer] = []
        have: list[Consumer] = []
        for proxy in self.cache.status.connected.values():
            if proxy.role in roles:
                (have if proxy.in_sync(snapshot) else going).append((proxy.role, proxy.node_id or proxy.peer))
        self.journeys.pushed(revision, phase, going, have)

    def _set(self, envoy: ByType, services: ByType, revision: str, services_revision: str, seen_at: float) -> None:
        self._serial += 1
        snapshot = Snapshot(
            serial=self._serial,
            revision=revision,
            resources={**envoy, **services},
            seen_at=seen_at,
            services_revision=services_revision,
        )
        self.cache.set(snapshot)

    def _start(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="xgate-rollout")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending = self._pending
            if pending is not None:
                refusal = await self._wait_for_services(pending)
                if self._pending is not pending:
                    continue  # superseded: the newer revision set its own staged snapshot
                self._pending = None
                if refusal is not None:
                    self._refused(refusal)
                    continue
                self._serve_envoys(pending.envoy, pending.services, pending.revision, pending.seen_at)
                continue
            if self._prune and await self._envoys_synced() and await self._quiet(self.prune_delay):
                self._prune = False
                snapshot = self.cache.snapshot
                assert snapshot is not None
                envoy = {url: found for url, found in snapshot.resources.items() if url in typeurls.ENVOY_TYPES}
                self._retained = _merged({}, self._latest)
                self._set(envoy, self._retained, snapshot.revision, snapshot.revision, snapshot.seen_at)

    async def _wait_for_services(self, pending: _Pending) -> Refusal | None:
        """Until every connected instance of each service with resources in `pending` ACKed the staged snapshot;
        the first NACK of it, if any; or the timeout."""
        deadline = time.monotonic() + self.service_timeout
        roles = {
            role for role, urls in typeurls.ROLES.items() if role != typeurls.ENVOY and urls & set(pending.services)
        }
        while self._pending is pending:
            snapshot = self.cache.snapshot
            waiting: list[ProxyStatus] = []
            for proxy in self.cache.status.connected.values():
                if proxy.role not in roles or proxy.in_sync(snapshot):
                    continue
                if (message := _nacked(proxy, snapshot)) is not None:
                    return Refusal(pending.revision, proxy.role, proxy.node_id, message, time.time())
                waiting.append(proxy)
            if not waiting:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                late = ", ".join(f"{proxy.role} {proxy.node_id or proxy.peer}" for proxy in waiting)
                log.warning(
                    "revision %s goes to the Envoys without an answer from %s after %.1f s",
                    pending.revision,
                    late,
                    self.service_timeout,
                )
                return None
            await self._answer_or_wake(left)
        return None

    async def _envoys_synced(self) -> bool:
        """Wait until every connected Envoy holds the current snapshot; False when a newer publish came first."""
        serial = self.cache.snapshot.serial if self.cache.snapshot else 0
        while True:
            snapshot = self.cache.snapshot
            if snapshot is None or snapshot.serial != serial or self._pending is not None:
                return False
            envoys = self.cache.status.consumers(typeurls.ENVOY)
            if all(proxy.in_sync(snapshot) for proxy in envoys):
                return True
            await self._answer_or_wake(None)

    async def _quiet(self, seconds: float) -> bool:
        """Wait `seconds`; False when a new publish came meanwhile (the caller starts over)."""
        serial = self.cache.snapshot.serial if self.cache.snapshot else 0
        # asyncio.wait, not wait_for: Python 3.11's wait_for swallows a cancellation that meets the wake-up,
        # and close() then waited forever.
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({woken}, timeout=seconds)
        finally:
            woken.cancel()
        snapshot = self.cache.snapshot
        return snapshot is not None and snapshot.serial == serial and self._pending is None

    async def _answer_or_wake(self, timeout: float | None) -> None:
        answered = asyncio.Event()
        self.cache.status.watch(answered)
        try:
            waits = {asyncio.ensure_future(answered.wait()), asyncio.ensure_future(self._wake.wait())}
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
        finally:
            self.cache.status.unwatch(answered)

    def _refused(self, refusal: Refusal) -> None:
        self.refusal = refusal
        if self.journeys is not None:
            self.journeys.refused_by_service(refusal.revision, refusal.service, refusal.node, refusal.message)
        log.error(
            "%s; the Envoys keep revision %s", refusal, self.cache.snapshot.revision if self.cache.snapshot else "none"
        )
        if self.on_refused is not None:
            self.on_refused(refusal)


def _nacked(proxy: ProxyStatus, snapshot: Snapshot | None) -> str | None:
    """The message of a NACK the proxy sent for what `snapshot` serves it, if it sent one."""
    if snapshot is None:
        return None
    for type_url, state in proxy.types.items():
        rejection = state.rejection
        if rejection is None or type_url not in snapshot.resources:
            continue
        if rejection.version == snapshot.version(type_url, state.names):
            return rejection.message
    return None


def _covers(have: ByType, need: ByType) -> bool:
    """Does `have` hold every resource of `need`, at the same version?"""
    for url, resources in need.items():
        held = have.get(url, {})
        for name, resource in resources.items():
            if (old := held.get(name)) is None or old.version != resource.version:
                return False
    return True


def _roles_of(services: ByType) -> set[str]:
    """The services that take some of these resource types."""
    urls = set(services)
    return {role for role, types in typeurls.ROLES.items() if role != typeurls.ENVOY and types & urls}


def _same(a: ByType, b: ByType) -> bool:
    return a.keys() == b.keys() and all(
        a[url].keys() == b[url].keys() and all(a[url][name].version == b[url][name].version for name in a[url])
        for url in a
    )


def _merged(base: ByType, newer: ByType) -> dict[str, dict[str, Resource]]:
    merged = {url: dict(resources) for url, resources in base.items()}
    for url, resources in newer.items():
        merged.setdefault(url, {}).update(resources)
    return merged
