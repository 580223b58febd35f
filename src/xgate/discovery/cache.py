"""The snapshot cache: holds the current snapshot and wakes every stream when it changes. Knows nothing of gRPC."""

from __future__ import annotations

import asyncio
import time

from xgate.discovery.snapshot import Snapshot, build_snapshot
from xgate.discovery.status import StatusRegistry
from xgate.translate import Resources


class SnapshotCache:
    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.status = StatusRegistry()
        self._waiters: set[asyncio.Event] = set()
        self._serial = 0
        self.updated_at: float | None = None

    def update(self, resources: Resources, revision: str, seen_at: float = 0.0) -> Snapshot:
        """Make `resources` the current snapshot and wake the streams; unchanged resources keep their bytes.
        `seen_at`: time.perf_counter() when the change was seen, for the propagation histogram."""
        self._serial += 1
        snapshot = build_snapshot(resources, revision, self._serial, self.snapshot, seen_at)
        self.set(snapshot)
        return snapshot

    def set(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.updated_at = time.time()
        # The services get a revision before the Envoys do (discovery.rollout): it starts when they do.
        for revision in (snapshot.services_revision, snapshot.revision):
            if revision is not None:
                self.status.history.published(revision, snapshot.created)
        for waiter in self._waiters:
            waiter.set()

    def subscribe(self, waiter: asyncio.Event) -> None:
        self._waiters.add(waiter)

    def unsubscribe(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)
