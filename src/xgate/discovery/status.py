"""What each connected Envoy was sent, ACKed and NACKed: the answer to "has my change reached every Envoy?"."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram

from xgate.discovery import typeurls
from xgate.discovery.history import RevisionHistory
from xgate.discovery.snapshot import Resource, Snapshot
from xgate.translate import names

# Seconds: a route change reaches an Envoy in milliseconds, a 10,000-route table in about a tenth of a second.
PROPAGATION_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass
class Rejection:
    """A response Envoy refused, with its reason and the config objects it was built from."""

    version: str
    revision: str
    message: str
    resources: tuple[str, ...]
    at: float

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(names.origin(resource) for resource in self.resources)


@dataclass
class TypeStatus:
    names: frozenset[str] | None = None
    sent_version: str | None = None
    sent_revision: str | None = None
    sent_at: float | None = None
    acked_version: str | None = None
    acked_revision: str | None = None
    acked_at: float | None = None
    rejection: Rejection | None = None
    # What the consumer was last sent (SotW: the response's resources; delta: all it holds then, None for names
    # said not to exist): the stream's own objects, so keeping them costs a pointer (what config-dump shows).
    sent: tuple[Resource, ...] | Mapping[str, Resource | None] = ()


@dataclass
class ProxyStatus:
    """One ADS stream: one Envoy, from connect to disconnect."""

    stream_id: int
    peer: str
    connected_at: float
    node_id: str = ""
    cluster: str = ""
    role: str = typeurls.ENVOY  # "envoy", or the xgate service it is ("authz", "dyeing", "ratelimit")
    xds: str = "sotw"  # the variant of ADS it speaks: "sotw" (state of the world) or "delta"
    types: dict[str, TypeStatus] = field(default_factory=dict)
    disconnected_at: float | None = None
    synced_revision: str | None = None
    synced_at: float | None = None
    addresses: dict[str, str] = field(default_factory=dict)  # its node metadata's `xgate` addresses (stats, admin)
    # Called with the role and the seconds from a change being seen to this consumer ACKing all of it.
    on_synced: Callable[[str, float], None] | None = None
    # Called after each ACK or NACK (StatusRegistry.answered), for whoever waits for consumers to answer.
    on_answer: Callable[[], None] | None = None
    # Called with (this proxy, revision, NACK message or None) when it ACKed all of a revision or NACKed one.
    on_revision: Callable[[ProxyStatus, str, str | None], None] | None = None

    def in_sync(self, snapshot: Snapshot | None) -> bool:
        """True when this proxy holds every resource of the snapshot, each ACKed at the snapshot's content.

        A proxy that has not yet asked for a type the snapshot has (e.g. it reconnected and only sent its
        CDS request so far) is not in sync.
        """
        if snapshot is None:
            return False
        wanted = typeurls.ROLES.get(self.role, typeurls.ENVOY_TYPES)
        for type_url, resources in snapshot.resources.items():
            if type_url not in wanted:
                continue
            state = self.types.get(type_url)
            if state is None:
                if resources:
                    return False
                continue
            if state.names is not None and not state.names >= resources.keys():
                return False
            if state.acked_version != snapshot.version(type_url, state.names):
                return False
        return True

    def note_ack(self, snapshot: Snapshot | None) -> None:
        if snapshot is None:
            return
        revision = snapshot.revision_for(self.role)
        if self.synced_revision != revision and self.in_sync(snapshot):
            self.synced_revision = revision
            self.synced_at = time.time()
            # A change reaching a proxy that was already there; a proxy's first sync is a connect, not that.
            if self.on_synced is not None and snapshot.seen_at and self.connected_at < snapshot.created:
                self.on_synced(self.role, time.perf_counter() - snapshot.seen_at)
            if self.on_revision is not None:
                self.on_revision(self, revision, None)

    def note_nack(self, rejection: Rejection) -> None:
        if self.on_revision is not None:
            self.on_revision(self, rejection.revision, rejection.message)

    def to_dict(self, snapshot: Snapshot | None) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "cluster": self.cluster,
            "kind": self.role,
            "xds": self.xds,
            "peer": self.peer,
            "connected_at": self.connected_at,
            "disconnected_at": self.disconnected_at,
            "in_sync": self.in_sync(snapshot) and self.disconnected_at is None,
            "synced_revision": self.synced_revision,
            "synced_at": self.synced_at,
            "types": {
                typeurls.SHORT.get(type_url, type_url): {
                    "sent": state.sent_version,
                    "acked": state.acked_version,
                    "acked_revision": state.acked_revision,
                    "acked_at": state.acked_at,
                    "rejection": None
                    if state.rejection is None
                    else {
                        "version": state.rejection.version,
                        "revision": state.rejection.revision,
                        "message": state.rejection.message,
                        "objects": list(state.rejection.objects),
                        "at": state.rejection.at,
                    },
                }
                for type_url, state in sorted(self.types.items())
            },
        }


class StatusRegistry:
    """Live proxies plus the most recent disconnected ones (kept so a crash-looping Envoy stays visible)."""

    def __init__(self, keep_disconnected: int = 50) -> None:
        self._ids = itertools.count(1)
        self.connected: dict[int, ProxyStatus] = {}
        self._waiters: set[asyncio.Event] = set()
        self.disconnected: deque[ProxyStatus] = deque(maxlen=keep_disconnected)
        # (proxy, revision, NACK message or None) for every consumer's answer to a revision (revision traces).
        self.on_revision: Callable[[ProxyStatus, str, str | None], None] | None = None
        self.propagation = Histogram(
            "xgate_config_propagation_seconds",
            "From a config change seen by the control plane to a consumer having ACKed all of it, per consumer "
            "(kind: envoy, authz, dyeing, ratelimit)",
            ["kind"],
            buckets=PROPAGATION_BUCKETS,
            registry=None,
        )
        for kind in typeurls.ROLES:  # every kind's series exists from the start, at 0
            self.propagation.labels(kind)
        self.history = RevisionHistory()

    def answered(self) -> None:
        """A consumer ACKed or NACKed something, connected or went: wake whoever waits on `changed`."""
        for waiter in self._waiters:
            waiter.set()

    def watch(self, waiter: asyncio.Event) -> None:
        self._waiters.add(waiter)

    def unwatch(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)

    def consumers(self, role: str) -> list[ProxyStatus]:
        return [proxy for proxy in self.connected.values() if proxy.role == role]

    def connect(self, peer: str) -> ProxyStatus:
        proxy = ProxyStatus(
            stream_id=next(self._ids),
            peer=peer,
            connected_at=time.time(),
            on_synced=lambda kind, seconds: self.propagation.labels(kind).observe(seconds),
            on_answer=self.answered,
            on_revision=self._revision_answered,
        )
        self.connected[proxy.stream_id] = proxy
        return proxy

    def _revision_answered(self, proxy: ProxyStatus, revision: str, nack: str | None) -> None:
        self.history.answered(proxy.role, proxy.node_id or proxy.peer, revision, nack, proxy.connected_at)
        if self.on_revision is not None:
            self.on_revision(proxy, revision, nack)

    def disconnect(self, proxy: ProxyStatus) -> None:
        proxy.disconnected_at = time.time()
        self.connected.pop(proxy.stream_id, None)
        self.disconnected.append(proxy)
        self.answered()

    def report(self, snapshot: Snapshot | None) -> dict[str, Any]:
        """Envoys under "proxies", xgate's service instances under "services"; "all_in_sync" when there is at
        least one Envoy and every Envoy and service instance holds what it is served."""
        consumers = [proxy.to_dict(snapshot) for proxy in self.connected.values()]
        proxies = [entry for entry in consumers if entry["kind"] == typeurls.ENVOY]
        services = [entry for entry in consumers if entry["kind"] != typeurls.ENVOY]
        return {
            "revision": snapshot.revision if snapshot else None,
            "services_revision": snapshot.revision_for("services") if snapshot else None,
            "snapshot_serial": snapshot.serial if snapshot else None,
            "proxies": proxies,
            "services": services,
            "all_in_sync": bool(proxies) and all(entry["in_sync"] for entry in consumers),
            "recently_disconnected": [proxy.to_dict(snapshot) for proxy in self.disconnected],
        }
