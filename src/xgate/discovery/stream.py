"""The ADS protocol for one stream, without gRPC: requests in, responses out. `Stream` holds what both variants
share (who the consumer is, its ACKs and NACKs, the push order); `AdsStream` is state of the world, and
`discovery.delta.DeltaStream` the incremental variant.

Rules kept here (see the xDS protocol doc): a request whose nonce is not the last one sent for its type is
stale and ignored; a response is sent only when the content a proxy asked for differs from what it was last
sent; a change is pushed clusters -> endpoints -> listeners -> scopes -> routes; after clusters change, their endpoints
are sent again (Envoy otherwise keeps a changed EDS cluster warming until initial_fetch_timeout); a removed
cluster is removed only after the routes that stopped using it, a filter config (ECDS) not until Envoy stops
asking for it.
"""

from __future__ import annotations

import itertools
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from xgate.discovery import typeurls
from xgate.discovery.snapshot import Resource, Snapshot
from xgate.discovery.status import ProxyStatus, Rejection, TypeStatus
from xgate.protowire import field_head, string_field
from xgate.telemetry.fleet import node_addresses

_NONCE = 5  # the nonce's field number, in DiscoveryResponse and DeltaDiscoveryResponse alike


class Outgoing(Protocol):
    """A response of either variant, ready to send."""

    @property
    def type_url(self) -> str: ...

    @property
    def nonce(self) -> str: ...

    @property
    def names(self) -> frozenset[str]: ...

    def wire(self) -> bytes: ...


Request = TypeVar("Request", discovery_v3.DiscoveryRequest, discovery_v3.DeltaDiscoveryRequest)
Out = TypeVar("Out", bound=Outgoing)


def with_nonce(body: bytes, nonce: str) -> bytes:
    """A response's bytes: what every proxy in the same state gets, then its own nonce. A parser takes the
    fields in any order, so the nonce can come last whatever its number."""
    return body + string_field(_NONCE, nonce)


@dataclass(frozen=True)
class Response:
    """A DiscoveryResponse to send. `wire()` joins the resources' bytes, serialized once per snapshot for
    every proxy, in one copy, instead of copying them into a message (0.8 ms for a 600 KB route table)."""

    version_info: str
    type_url: str
    nonce: str
    resources: tuple[Resource, ...]
    body: bytes = field(default=b"", compare=False, repr=False)  # the bytes before the nonce, when at hand

    @property
    def names(self) -> frozenset[str]:
        return frozenset(resource.name for resource in self.resources)

    def wire(self) -> bytes:
        # DiscoveryResponse: version_info = 1, resources = 2, type_url = 4, nonce = 5.
        return with_nonce(self.body or sotw_body(self.version_info, self.type_url, self.resources), self.nonce)

    def message(self) -> discovery_v3.DiscoveryResponse:
        return discovery_v3.DiscoveryResponse.FromString(self.wire())


def sotw_body(version_info: str, type_url: str, resources: Sequence[Resource]) -> bytes:
    parts = [string_field(1, version_info)]
    for resource in resources:
        parts += (field_head(2, resource.any_size), resource.any_head, resource.data)
    parts.append(string_field(4, type_url))
    return b"".join(parts)


class Stream(ABC, Generic[Request, Out]):
    """One consumer's stream: `on_request` for each request, then `responses` for what to send it (also after
    each new snapshot). The variants say what a request means and what a response holds; the order of a
    batch and the recording of ACKs and NACKs are the same for both."""

    def __init__(self, proxy: ProxyStatus) -> None:
        self.proxy = proxy
        self._nonces = itertools.count(1)

    def identify(self, node: core_v3.Node) -> None:
        """The first request of a stream names its node (Envoy may leave it out of the later ones)."""
        if node.id:
            self.proxy.node_id = node.id
            self.proxy.cluster = node.cluster
            self.proxy.role = typeurls.role_of(node.user_agent_name)
            self.proxy.addresses = node_addresses(node.metadata)

    @abstractmethod
    def on_request(self, request: Request, snapshot: Snapshot | None) -> None:
        """Take one request: a subscription, an ACK or a NACK (a stale one changes nothing)."""

    @abstractmethod
    def types(self) -> Sequence[str]:
        """The type URLs this stream has asked for."""

    @abstractmethod
    def _pending(self, type_url: str, snapshot: Snapshot) -> bool:
        """Would this type get a response?"""

    @abstractmethod
    def _removing(self, type_url: str, snapshot: Snapshot) -> frozenset[str]:
        """The names of this type the proxy holds that `snapshot` no longer has for it."""

    @abstractmethod
    def _next(self, type_url: str, snapshot: Snapshot, keep: frozenset[str], again: Outgoing | None) -> Out | None:
        """The response that brings this type to `snapshot`, if any, except that the names in `keep` stay; with
        `again` (the clusters just sent), their endpoints go out even when unchanged."""

    def responses(self, snapshot: Snapshot | None) -> list[Out]:
        """Everything this proxy must be sent to match `snapshot`, in push order."""
        if snapshot is None:
            return []
        out: list[Out] = []
        clusters: Outgoing | None = None
        removed_last = False
        for type_url in self._ordered_types():
            keep = frozenset[str]()
            if type_url == typeurls.CLUSTER:
                keep = self._removing(type_url, snapshot)
                if keep and not any(self._pending(url, snapshot) for url in typeurls.ROUTING):
                    keep = frozenset()  # nothing else changes: nothing can still use them
                removed_last = bool(keep)
            elif type_url == typeurls.FILTER_CONFIG:
                # Never removed while asked for: Envoy stops asking once no listener names it, draining ones
                # included; until then a request meeting a filter without its config is answered 500.
                keep = self._removing(type_url, snapshot)
            response = self._next(type_url, snapshot, keep, clusters if type_url == typeurls.ENDPOINT else None)
            if response is None:
                continue
            out.append(response)
            if type_url == typeurls.CLUSTER:
                clusters = response
        if removed_last and (final := self._next(typeurls.CLUSTER, snapshot, frozenset(), None)) is not None:
            out.append(final)
        return out

    def _ordered_types(self) -> list[str]:
        mine = self.types()
        known = [type_url for type_url in typeurls.PUSH_ORDER if type_url in mine]
        return known + sorted(type_url for type_url in mine if type_url not in typeurls.PUSH_ORDER)

    def _nonce(self) -> str:
        return str(next(self._nonces))

    def _sent(self, type_url: str, version: str, revision: str) -> TypeStatus:
        status = self.proxy.types.setdefault(type_url, TypeStatus())
        status.sent_version, status.sent_revision, status.sent_at = version, revision, time.time()
        return status

    def _acked(self, type_url: str, version: str, revision: str | None, snapshot: Snapshot | None) -> TypeStatus:
        status = self.proxy.types.setdefault(type_url, TypeStatus())
        status.acked_version, status.acked_revision, status.acked_at = version, revision, time.time()
        self.proxy.note_ack(snapshot)
        return status

    def _nacked(self, type_url: str, version: str, revision: str, message: str, names: Sequence[str]) -> None:
        status = self.proxy.types.setdefault(type_url, TypeStatus())
        status.rejection = Rejection(version, revision, message, tuple(sorted(names)), time.time())
        self.proxy.note_nack(status.rejection)

    def _answered(self) -> None:
        if self.proxy.on_answer is not None:
            self.proxy.on_answer()


@dataclass
class _TypeState:
    names: frozenset[str] | None = None
    nonce: str = ""
    version: str | None = None
    # What it was last sent, in that order: a tuple, not a dict by name (1,000 clusters: 8 KB, not 40, a proxy).
    sent: tuple[Resource, ...] = ()


class AdsStream(Stream[discovery_v3.DiscoveryRequest, "Response"]):
    """State of the world: each response holds every resource of its type the proxy asked for."""

    def __init__(self, proxy: ProxyStatus) -> None:
        super().__init__(proxy)
        self._types: dict[str, _TypeState] = {}

    def types(self) -> Sequence[str]:
        return list(self._types)

    def on_request(self, request: discovery_v3.DiscoveryRequest, snapshot: Snapshot | None) -> None:
        if request.HasField("node"):
            self.identify(request.node)
        type_url = request.type_url
        state = self._types.get(type_url)
        if state is not None and request.response_nonce and request.response_nonce != state.nonce:
            return  # stale: answers a response that a newer one has replaced
        if state is None:
            state = self._types[type_url] = _TypeState()
        status = self.proxy.types.setdefault(type_url, TypeStatus())
        wildcard = type_url in typeurls.WILDCARD_TYPES and not request.resource_names
        # Interned: protobuf gives each request its own copy of every name, and a fleet asks for the same ones
        # (100 proxies subscribed to 1,000 EDS clusters each kept 100,000 strings, ~7 MB).
        state.names = None if wildcard else frozenset(map(sys.intern, request.resource_names))
        status.names = state.names
        if request.response_nonce and request.HasField("error_detail"):
            names = [resource.name for resource in state.sent]
            self._nacked(type_url, state.version or "", status.sent_revision or "", request.error_detail.message, names)
            self._answered()
        elif request.response_nonce:
            if status.rejection is not None and status.rejection.version != request.version_info:
                status.rejection = None
            self._acked(type_url, request.version_info, status.sent_revision, snapshot)
            self._answered()
        elif (
            request.version_info
            and snapshot is not None
            and request.version_info == snapshot.version(type_url, state.names)
        ):
            # A proxy reconnecting (e.g. after a control plane restart) says what it already has; versions
            # are content digests, so when they match there is nothing to send.
            state.version = request.version_info
            state.sent = snapshot.select(type_url, state.names)
            status.acked_version = status.sent_version = request.version_info
            status.acked_revision = status.sent_revision = snapshot.revision_for(self.proxy.role)
            status.sent = state.sent

    def _pending(self, type_url: str, snapshot: Snapshot) -> bool:
        state = self._types.get(type_url)
        return state is not None and snapshot.version(type_url, state.names) != state.version

    def _removing(self, type_url: str, snapshot: Snapshot) -> frozenset[str]:
        state = self._types[type_url]
        current = snapshot.version(type_url, state.names)
        if current == state.version:
            return frozenset()
        return snapshot.memo(
            ("sotw-removing", type_url, state.names, state.version),
            lambda: frozenset(r.name for r in state.sent) - {r.name for r in snapshot.select(type_url, state.names)},
        )

    def _next(self, type_url: str, snapshot: Snapshot, keep: frozenset[str], again: Outgoing | None) -> Response | None:
        state = self._types[type_url]
        names = state.names
        if again is not None:
            # Include endpoints of every EDS cluster just sent, ahead of the proxy asking for them.
            names = (names or frozenset()) | snapshot.names(type_url)
        wanted = snapshot.select(type_url, names)
        version = snapshot.version(type_url, names)
        if version == state.version and again is None:
            return None
        if keep:
            kept = tuple(resource for resource in state.sent if resource.name in keep)
            wanted = tuple(sorted(wanted + kept, key=lambda r: r.name))
            version = Snapshot.version_of(wanted)
            if version == state.version and again is None:
                return None
        body = snapshot.memo(("sotw-body", type_url, version), lambda: sotw_body(version, type_url, wanted))
        state.nonce = self._nonce()
        state.version = version
        state.sent = wanted
        # The status keeps the same tuple (config-dump shows it): a pointer, no copy.
        self._sent(type_url, version, snapshot.revision_for(self.proxy.role)).sent = state.sent
        return Response(version_info=version, type_url=type_url, nonce=state.nonce, resources=wanted, body=body)
