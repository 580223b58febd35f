"""The incremental (delta) ADS protocol for one stream, without gRPC: a response carries only the resources that
changed (each with its own version, a digest of its bytes) and the names removed.

Rules kept here beyond `stream.Stream`'s (see the xDS protocol doc, "Incremental xDS"): a consumer subscribes
and unsubscribes by name, `*` is every resource of the type, and a first request naming nothing is that too
(the legacy wildcard, Envoy's way for clusters and listeners); subscription changes apply whatever the nonce
(they are differences, never repeated), the ACK or NACK only when the nonce is the one of a response still
unanswered; the first request of a type may list the versions the consumer holds (`initial_resource_versions`,
after a reconnect): only what differs is sent, and what it holds that no longer exists is removed; a name asked
for that does not exist is answered in `removed_resources`. What a consumer holds is tracked per response, so
its status reads as a state-of-the-world consumer's: in sync, the revision ACKed, a NACK with its objects.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from xgate.discovery.snapshot import Resource, Snapshot
from xgate.discovery.status import ProxyStatus, TypeStatus
from xgate.discovery.stream import Outgoing, Stream, with_nonce
from xgate.protowire import field_head, string_field

WILDCARD = "*"


@dataclass(frozen=True)
class Held:
    """What a consumer holds of one type, or will once it applied what it was sent: name -> resource, None for
    a name it was told does not exist. Shared by every stream in the same state, never changed."""

    resources: Mapping[str, Resource | None]
    version: str  # Snapshot.version_of what exists: equal to the snapshot's version when in sync
    key: str  # tells apart states that hold the same resources and differ in what was said not to exist

    @staticmethod
    def of(resources: Mapping[str, Resource | None]) -> Held:
        existing = [resources[name] for name in sorted(resources) if resources[name] is not None]
        version = Snapshot.version_of(r for r in existing if r is not None)
        absent = sorted(name for name, resource in resources.items() if resource is None)
        return Held(resources, version, version + "/" + Snapshot.version_of(_absent(name) for name in absent))

    def after(self, plan: Plan) -> Held:
        """This state with `plan`'s changes applied (a consumer that had refused an earlier response)."""
        resources = dict(self.resources)
        resources.update((resource.name, resource) for resource in plan.resources)
        for name in plan.removed:
            if plan.wildcard:
                resources.pop(name, None)
            else:
                resources[name] = None
        return Held.of(resources)

    def without(self, names: frozenset[str]) -> Held:
        return Held.of({name: found for name, found in self.resources.items() if name not in names})


EMPTY = Held.of({})


def _absent(name: str) -> Resource:
    return Resource(name=name, version="", type_url="", data=b"", any_head=b"")


@dataclass(frozen=True)
class Plan:
    """One response, the same for every stream that holds `before`: what changed, what is removed, the state
    after, and its bytes before the nonce."""

    type_url: str
    resources: tuple[Resource, ...]
    removed: tuple[str, ...]
    after: Held
    wildcard: bool
    body: bytes = field(repr=False)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(resource.name for resource in self.resources) | frozenset(self.removed)


def plan(
    type_url: str,
    snapshot: Snapshot,
    names: frozenset[str] | None,
    before: Held,
    keep: frozenset[str],
    again: frozenset[str],
    owed: bool = False,
) -> Plan | None:
    """The response that brings a consumer holding `before` to `snapshot` (None: nothing to send). `names`: what
    it subscribed to (None: everything); `keep`: names not to remove yet; `again`: names to send even when held
    at the same version; `owed`: a response is due even if empty."""
    available = snapshot.resources.get(type_url, {})
    held = before.resources
    changed = []
    for name in sorted(available if names is None else names):
        resource = available.get(name)
        if resource is None:
            continue
        old = held.get(name)
        if old is None or old.version != resource.version or name in again:
            changed.append(resource)
    removed = sorted(
        name
        for name, old in held.items()
        if old is not None and name not in available and name not in keep and (names is None or name in names)
    )
    if names is not None:  # asked for by name and not there: say so once, so the consumer stops waiting for it
        removed += sorted(name for name in names if name not in available and name not in held and name not in keep)
        removed.sort()
    if not changed and not removed and not owed:
        return None
    resources = dict(held)
    resources.update((resource.name, resource) for resource in changed)
    for name in removed:
        if names is None:
            resources.pop(name, None)
        else:
            resources[name] = None
    after = Held.of(resources)
    body = _body(type_url, changed, removed, after)
    return Plan(type_url, tuple(changed), tuple(removed), after, names is None, body)


def _body(type_url: str, resources: Sequence[Resource], removed: Sequence[str], after: Held) -> bytes:
    # DeltaDiscoveryResponse: system_version_info = 1, resources = 2, type_url = 4, nonce = 5 (added per stream),
    # removed_resources = 6. Resource: version = 1, resource = 2 (an Any), name = 3.
    parts = [string_field(1, after.version)]
    for resource in resources:
        head = string_field(1, resource.version) + field_head(2, resource.any_size) + resource.any_head
        tail = string_field(3, resource.name)
        parts += (field_head(2, len(head) + len(resource.data) + len(tail)), head, resource.data, tail)
    parts.append(string_field(4, type_url))
    parts += [string_field(6, name) for name in removed]
    return b"".join(parts)


@dataclass(frozen=True)
class DeltaResponse:
    """A DeltaDiscoveryResponse to send."""

    nonce: str
    plan: Plan

    @property
    def type_url(self) -> str:
        return self.plan.type_url

    @property
    def resources(self) -> tuple[Resource, ...]:
        return self.plan.resources

    @property
    def removed(self) -> tuple[str, ...]:
        return self.plan.removed

    @property
    def names(self) -> frozenset[str]:
        return self.plan.names

    def wire(self) -> bytes:
        return with_nonce(self.plan.body, self.nonce)

    def message(self) -> discovery_v3.DeltaDiscoveryResponse:
        return discovery_v3.DeltaDiscoveryResponse.FromString(self.wire())


@dataclass
class _Sent:
    before: Held
    plan: Plan
    revision: str


@dataclass
class _TypeState:
    wildcard: bool = False
    explicit: frozenset[str] = frozenset()
    held: Held = EMPTY  # what the consumer holds once it applied everything sent
    acked: Held = EMPTY  # what it holds by its ACKs
    # A first wildcard request is answered even when there is nothing (as a SotW server answers), or the
    # consumer would wait for it: Envoy's initial fetch timeout is 15 s, and a service is ready only then.
    owed: bool = False
    unanswered: dict[str, _Sent] = field(default_factory=dict)  # nonce -> the response
    # The state a refused response would have brought: not offered again (as a SotW server does not resend a
    # version that was NACKed), until something else is sent.
    refused: str | None = None

    @property
    def names(self) -> frozenset[str] | None:
        return None if self.wildcard else self.explicit


class DeltaStream(Stream[discovery_v3.DeltaDiscoveryRequest, DeltaResponse]):
    """Incremental: each response holds the resources that changed for this consumer, and the names removed."""

    def __init__(self, proxy: ProxyStatus) -> None:
        super().__init__(proxy)
        proxy.xds = "delta"
        self._types: dict[str, _TypeState] = {}

    def types(self) -> Sequence[str]:
        return list(self._types)

    def on_request(self, request: discovery_v3.DeltaDiscoveryRequest, snapshot: Snapshot | None) -> None:
        if request.HasField("node"):
            self.identify(request.node)
        type_url = request.type_url
        state = self._types.get(type_url)
        status = self.proxy.types.setdefault(type_url, TypeStatus())
        if state is None:
            state = self._types[type_url] = self._first(request, snapshot)
        else:
            self._resubscribe(state, request.resource_names_subscribe, request.resource_names_unsubscribe)
        status.names = state.names
        if request.response_nonce not in state.unanswered:
            return  # no answer, or the answer to a response it already answered
        while True:  # a response left unanswered before this one was applied all the same (answers come in order)
            nonce, sent = next(iter(state.unanswered.items()))
            del state.unanswered[nonce]
            if nonce == request.response_nonce:
                break
            state.acked = state.acked.after(sent.plan)
        if request.HasField("error_detail"):
            # It kept what it held: what comes next is planned from there, so a later change sends everything
            # that differs from it, the refused resources included, unless the snapshot is the refused one.
            state.refused = sent.plan.after.key
            state.held = state.acked
            for later in state.unanswered.values():
                state.held = state.held.after(later.plan)
            message = request.error_detail.message
            self._nacked(type_url, sent.plan.after.version, sent.revision, message, sorted(sent.plan.names))
        else:
            state.acked = sent.plan.after if state.acked is sent.before else state.acked.after(sent.plan)
            rejection = status.rejection
            if rejection is not None and all(
                _same(state.acked.resources.get(name), state.held.resources.get(name)) for name in rejection.resources
            ):
                status.rejection = None  # what it refused has since been replaced, and that it took
            self._acked(type_url, state.acked.version, sent.revision, snapshot)
        self._answered()

    def _first(self, request: discovery_v3.DeltaDiscoveryRequest, snapshot: Snapshot | None) -> _TypeState:
        state = _TypeState()
        subscribe = list(request.resource_names_subscribe)
        # The legacy wildcard: a first request naming nothing asks for everything, until "*" is unsubscribed.
        self._resubscribe(state, subscribe or [WILDCARD], request.resource_names_unsubscribe)
        state.owed = state.wildcard and not request.initial_resource_versions
        if request.initial_resource_versions:
            # What it kept from an earlier stream: the snapshot's own resource where the version matches (so the
            # state is shared with other streams), else a stand-in that differs from whatever is sent next.
            available = snapshot.resources.get(request.type_url, {}) if snapshot is not None else {}
            held: dict[str, Resource | None] = {}
            for name, version in request.initial_resource_versions.items():
                if not state.wildcard and name not in state.explicit:
                    continue
                found = available.get(name)
                matches = found is not None and found.version == version
                held[name] = found if matches else Resource(name, version, request.type_url, b"", b"")
            state.held = state.acked = Held.of(held)
        # What it holds from the start (nothing, or what it kept), as a SotW proxy's version_info says it.
        status = self.proxy.types.setdefault(request.type_url, TypeStatus())
        status.acked_version = status.sent_version = state.held.version
        if snapshot is not None and state.held.version == snapshot.version(request.type_url, state.names):
            status.acked_revision = status.sent_revision = snapshot.revision_for(self.proxy.role)
        return state

    @staticmethod
    def _resubscribe(state: _TypeState, subscribe: Sequence[str], unsubscribe: Sequence[str]) -> None:
        # Interned, as AdsStream does: a fleet asks for the same names, and protobuf gives each request its copies.
        added = frozenset(map(sys.intern, subscribe))
        dropped = frozenset(unsubscribe)
        state.wildcard = (state.wildcard or WILDCARD in added) and WILDCARD not in dropped
        state.explicit = (state.explicit | added) - dropped - {WILDCARD}
        if dropped and not state.wildcard:
            # No longer wanted: forgotten, so a later subscription to the same name is answered afresh.
            state.held = state.held.without(dropped | (frozenset(state.held.resources) - state.explicit))
            state.acked = state.acked.without(dropped | (frozenset(state.acked.resources) - state.explicit))

    def _plan(
        self, type_url: str, snapshot: Snapshot, keep: frozenset[str], again: frozenset[str] = frozenset()
    ) -> Plan | None:
        state = self._types[type_url]
        names = state.names
        if again and names is not None:
            again &= names
        owed = state.owed
        key = ("delta", type_url, names, state.held.key, keep, again, owed)
        found = snapshot.memo(key, lambda: plan(type_url, snapshot, names, state.held, keep, again, owed))
        if found is not None and found.after.key == state.refused:
            return None
        return found

    def _pending(self, type_url: str, snapshot: Snapshot) -> bool:
        return type_url in self._types and self._plan(type_url, snapshot, frozenset()) is not None

    def _removing(self, type_url: str, snapshot: Snapshot) -> frozenset[str]:
        found = self._plan(type_url, snapshot, frozenset())
        return frozenset(found.removed) if found is not None else frozenset()

    def _next(
        self, type_url: str, snapshot: Snapshot, keep: frozenset[str], again: Outgoing | None
    ) -> DeltaResponse | None:
        state = self._types[type_url]
        found = self._plan(type_url, snapshot, keep, again.names if again is not None else frozenset())
        if found is None:
            return None
        nonce = self._nonce()
        revision = snapshot.revision_for(self.proxy.role)
        state.unanswered[nonce] = _Sent(state.held, found, revision)
        state.held = found.after
        state.owed = False
        state.refused = None
        # The status keeps the shared mapping (config-dump shows it): a pointer, no copy.
        self._sent(type_url, found.after.version, revision).sent = found.after.resources
        return DeltaResponse(nonce, found)


def _same(a: Resource | None, b: Resource | None) -> bool:
    return (a.version if a is not None else None) == (b.version if b is not None else None)
