"""The snapshot cache: holds the current snapshot and hands each new one to every stream. Knows nothing of gRPC."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from xgate.discovery.snapshot import Snapshot, build_snapshot
from xgate.discovery.status import StatusRegistry
from xgate.translate import Resources

log = logging.getLogger("xgate.discovery")

Follower = Callable[[Snapshot], None]


class SnapshotCache:
    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.status = StatusRegistry()
        self._followers: dict[int, Follower] = {}
        self._serial = 0
        self.updated_at: float | None = None

    def update(self, resources: Resources, revision: str, seen_at: float = 0.0) -> Snapshot:
        """Make `resources` the current snapshot and tell the streams; unchanged resources keep their bytes.
        `seen_at`: time.perf_counter() when the change was seen, for the propagation histogram."""
        self._serial += 1
        snapshot = build_snapshot(resources, revision, self._serial, self.snapshot, seen_at)
        self.set(snapshot)
        return snapshot

    def set(self, snapshot: Snapshot) -> None:
        """Make `snapshot` current and hand it to every follower, one after the other, here: each works out what
        its consumer needs (the same answer for consumers in the same state is worked out once, see
        Snapshot.memo) and wakes its stream only when there is something to send."""
        self.snapshot = snapshot
        self.updated_at = time.time()
        # The services get a revision before the Envoys do (discovery.rollout): it starts when they do.
        for revision in (snapshot.services_revision, snapshot.revision):
            if revision is not None:
                self.status.history.published(revision, snapshot.created)
        for key, follower in list(self._followers.items()):
            try:
                follower(snapshot)
            except Exception:  # one broken stream must not keep the snapshot from the others
                log.exception("a stream failed to follow snapshot %s; it is dropped", snapshot.serial)
                self._followers.pop(key, None)

    def follow(self, key: int, follower: Follower) -> None:
        """Call `follower` with each new snapshot until `unfollow(key)`."""
        self._followers[key] = follower

    def unfollow(self, key: int) -> None:
        self._followers.pop(key, None)
