"""Simulated Envoys to load a control plane with: real gRPC ADS clients, state of the world or delta, that ask
for what Envoy asks for and ACK every response, cheap enough to run a thousand in one process.

Like Envoy, a client subscribes to every cluster and listener, then to the endpoints of each EDS cluster and to
the route configuration each listener's connection manager names, and follows those names as they change; it
ACKs a response once it has read it (it applies nothing). Each client has its own HTTP/2 connection, as each
Envoy has. `Fleet.acks(type_url)` says how many responses of a type each client ACKed, and when the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from xgate.discovery import typeurls
from xgate.discovery.consistency import route_configs

# Which names a resource of the key's type makes a client ask for, of the value's type.
_DEPENDENT = {typeurls.CLUSTER: typeurls.ENDPOINT, typeurls.LISTENER: typeurls.ROUTE}
_Request = TypeVar("_Request", discovery_v3.DiscoveryRequest, discovery_v3.DeltaDiscoveryRequest)
_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # a connection of its own, as each Envoy has
    ("grpc.http2.bdp_probe", 0),  # Envoy sends no bandwidth probes; grpc's would cost the control plane a ping each
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass
class _Type:
    """One type on one stream: the subscription, what the client holds, its answers."""

    names: frozenset[str] | None  # None: every resource of the type
    version: str = ""  # SotW: the version_info last ACKed
    nonce: str = ""
    held: dict[str, str] = field(default_factory=dict)  # delta: name -> version
    acks: int = 0
    acked_at: float = 0.0  # time.monotonic() of the last ACK


class _Names:
    """What a cluster or listener makes a client ask for, worked out once per distinct resource for the whole
    fleet (a thousand clients get the same bytes)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, bytes], tuple[str, ...]] = {}

    def of(self, type_url: str, data: bytes) -> tuple[str, ...]:
        key = (type_url, data)
        found = self._known.get(key)
        if found is None:
            if type_url == typeurls.CLUSTER:
                cluster = cluster_v3.Cluster.FromString(data)
                eds = cluster.type == cluster_v3.Cluster.EDS
                found = (cluster.eds_cluster_config.service_name or cluster.name,) if eds else ()
            else:
                found = tuple(route_configs(listener_v3.Listener.FromString(data)))
            self._known[key] = found
        return found


class SimulatedEnvoy:
    """One ADS stream to `target` that asks and ACKs as Envoy does; `run` until `stop` is set."""

    def __init__(self, target: str, node: core_v3.Node, *, delta: bool, names: _Names | None = None) -> None:
        self.target = target
        self.node = node
        self.delta = delta
        self.types: dict[str, _Type] = {}
        self.connected = asyncio.Event()
        self._names = names or _Names()
        self._derived: dict[str, dict[str, tuple[str, ...]]] = {url: {} for url in _DEPENDENT}
        self._node_sent = False

    async def run(self, stop: asyncio.Event) -> None:
        """One stream until `stop`; errors: grpc.aio.AioRpcError when the control plane ends it."""
        async with grpc.aio.insecure_channel(self.target, options=_OPTIONS) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.DeltaAggregatedResources() if self.delta else stub.StreamAggregatedResources()
            self._node_sent = False
            stopping = asyncio.ensure_future(stop.wait())
            try:
                # A new stream asks again for everything, saying what it holds (SotW: the versions; delta: each
                # resource's), as Envoy does after a reconnect.
                for type_url in (typeurls.CLUSTER, typeurls.LISTENER):
                    self.types.setdefault(type_url, _Type(names=None))
                for type_url, state in self.types.items():
                    state.nonce = ""
                    await call.write(self._subscribe(type_url, initial=True))
                while not stop.is_set():
                    reading = asyncio.ensure_future(call.read())
                    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not reading.done():
                        reading.cancel()
                        return
                    response = reading.result()
                    if response is grpc.aio.EOF:
                        return
                    self.connected.set()
                    for request in self._answer(response):
                        await call.write(request)
            finally:
                stopping.cancel()
                call.cancel()

    def _answer(
        self, response: discovery_v3.DiscoveryResponse | discovery_v3.DeltaDiscoveryResponse
    ) -> Iterator[discovery_v3.DiscoveryRequest | discovery_v3.DeltaDiscoveryRequest]:
        """Envoy's order: the subscription a response changes goes out before its ACK."""
        type_url = response.type_url
        state = self.types.get(type_url)
        if state is None:
            return
        dependent = _DEPENDENT.get(type_url)
        wanted: frozenset[str] | None = None
        if isinstance(response, discovery_v3.DeltaDiscoveryResponse):
            for name in response.removed_resources:
                state.held.pop(name, None)
            state.held.update((resource.name, resource.version) for resource in response.resources)
            if dependent is not None:
                derived = self._derived[type_url]
                for name in response.removed_resources:
                    derived.pop(name, None)
                for resource in response.resources:
                    derived[resource.name] = self._names.of(type_url, resource.resource.value)
                wanted = frozenset(name for names in derived.values() for name in names)
        else:
            state.version = response.version_info
            if dependent is not None:  # the whole state of the world: what it names is all that is wanted
                wanted = frozenset(n for packed in response.resources for n in self._names.of(type_url, packed.value))
        if dependent is not None and wanted is not None:
            current = self.types.get(dependent)
            if current is None or current.names != wanted:
                yield from self._follow(dependent, wanted, current)
        state.nonce = response.nonce
        state.acks += 1
        state.acked_at = time.monotonic()
        yield self._ack(type_url, state)

    def _follow(
        self, type_url: str, wanted: frozenset[str], current: _Type | None
    ) -> Iterator[discovery_v3.DiscoveryRequest | discovery_v3.DeltaDiscoveryRequest]:
        if current is None:
            self.types[type_url] = _Type(names=wanted)
            yield self._subscribe(type_url, initial=True)
            return
        old = current.names or frozenset()
        current.names = wanted
        if not self.delta:
            yield self._sotw(type_url, current)
            return
        for name in old - wanted:
            current.held.pop(name, None)
        yield self._with_node(
            discovery_v3.DeltaDiscoveryRequest(
                type_url=type_url,
                resource_names_subscribe=sorted(wanted - old),
                resource_names_unsubscribe=sorted(old - wanted),
            )
        )

    def _subscribe(
        self, type_url: str, *, initial: bool
    ) -> discovery_v3.DiscoveryRequest | discovery_v3.DeltaDiscoveryRequest:
        state = self.types[type_url]
        if not self.delta:
            return self._sotw(type_url, state)
        # Envoy's first request for a wildcard type names nothing (the legacy wildcard), and says what it holds.
        return self._with_node(
            discovery_v3.DeltaDiscoveryRequest(
                type_url=type_url,
                resource_names_subscribe=sorted(state.names or ()),
                initial_resource_versions={name: v for name, v in state.held.items() if v} if initial else {},
            )
        )

    def _sotw(self, type_url: str, state: _Type) -> discovery_v3.DiscoveryRequest:
        return self._with_node(
            discovery_v3.DiscoveryRequest(
                type_url=type_url,
                resource_names=sorted(state.names or ()),
                version_info=state.version,
                response_nonce=state.nonce,
            )
        )

    def _ack(self, type_url: str, state: _Type) -> discovery_v3.DiscoveryRequest | discovery_v3.DeltaDiscoveryRequest:
        if self.delta:
            return discovery_v3.DeltaDiscoveryRequest(type_url=type_url, response_nonce=state.nonce)
        return self._sotw(type_url, state)

    def _with_node(self, request: _Request) -> _Request:
        if not self._node_sent:  # as Envoy's set_node_on_first_message_only
            request.node.CopyFrom(self.node)
            self._node_sent = True
        return request


class Fleet:
    """`count` simulated Envoys (node ids `<prefix>-<i>`) following the control plane at `target`."""

    def __init__(self, target: str, count: int, *, delta: bool, prefix: str = "sim") -> None:
        names = _Names()
        self.clients = [
            SimulatedEnvoy(target, core_v3.Node(id=f"{prefix}-{index}", cluster=prefix), delta=delta, names=names)
            for index in range(count)
        ]

    async def run(self, stop: asyncio.Event) -> None:
        """Run every client until `stop`; a client whose stream ends reconnects, with what it holds."""
        async with asyncio.TaskGroup() as group:
            for client in self.clients:
                group.create_task(_keep(client, stop))

    async def connected(self, timeout: float) -> None:
        """Wait until every client got a first response. Errors: TimeoutError."""
        async with asyncio.timeout(timeout):
            for client in self.clients:
                await client.connected.wait()

    def acks(self, type_url: str) -> list[tuple[int, float]]:
        """Per client: responses of `type_url` ACKed, and time.monotonic() of the last ACK."""
        found = []
        for client in self.clients:
            state = client.types.get(type_url)
            found.append((state.acks, state.acked_at) if state else (0, 0.0))
        return found


async def _keep(client: SimulatedEnvoy, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await client.run(stop)
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
