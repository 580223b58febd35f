"""An ADS client, incremental (delta) by default or state of the world: subscribe to types, apply each
response, ACK or NACK, fail over.

xgate's services use it to be configured by the control plane the way Envoy is: each response is applied as a
whole or not at all (a delta response on top of what the service holds: `apply` always gets every resource of
the type); a response the service cannot apply is NACKed with the reason and the service keeps what it had.
Several control planes are tried in turn; after a lost stream the client reconnects with the versions it holds
(SotW: the type's; delta: each resource's), so a control plane that still serves them sends nothing again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3
from google.protobuf.message import Message
from google.rpc import status_pb2

log = logging.getLogger("xgate.xdsclient")

# name -> resource, decoded as it is read. Raise to refuse the whole response (the message goes back in the NACK).
Apply = Callable[[Mapping[str, Any]], Awaitable[None]]
_INVALID_ARGUMENT = 3
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),  # a control plane that went away without a FIN is noticed
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.http2.bdp_probe", 0),  # a config feed needs no bandwidth probes: they cost the control plane a ping each
]
Request: TypeAlias = discovery_v3.DiscoveryRequest | discovery_v3.DeltaDiscoveryRequest
Response: TypeAlias = discovery_v3.DiscoveryResponse | discovery_v3.DeltaDiscoveryResponse


@dataclass(frozen=True)
class Subscription:
    """One resource type (every resource of it), decoded as `message`, handed to `apply`."""

    type_url: str
    message: type[Message]
    apply: Apply


@dataclass
class TypeHealth:
    version: str = ""  # the version last applied
    resources: int = 0
    applied_at: float | None = None
    acks: int = 0
    nacks: int = 0
    last_error: str | None = None  # the reason of the last NACK, until a response applies


@dataclass
class ClientHealth:
    """What the service's /metrics and readiness say about its config feed."""

    connected: bool = False
    server: str | None = None
    since: float | None = None  # connected (or disconnected) since
    last_error: str | None = None
    connects: int = 0
    types: dict[str, TypeHealth] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "server": self.server,
            "since": self.since,
            "last_error": self.last_error,
            "connects": self.connects,
            "types": {
                url: {
                    "version": state.version,
                    "resources": state.resources,
                    "applied_at": state.applied_at,
                    "acks": state.acks,
                    "nacks": state.nacks,
                    "last_error": state.last_error,
                }
                for url, state in self.types.items()
            },
        }


class XdsClient:
    """Follows `servers` (tried in order, then again) for `subscriptions` until `run`'s stop event is set.

    `ready` is set once every subscription has applied a response (a service without its config has nothing
    to serve), after `before_ready` (how a service starts serving only with its config) has run. Errors: only
    `before_ready`'s escape `run`; a failing server is logged, reported in `health` and retried.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        node: core_v3.Node,
        subscriptions: Sequence[Subscription],
        *,
        retry_initial: float = 0.1,
        retry_max: float = 2.0,
        delta: bool = True,
        before_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if not servers:
            raise ValueError("an xDS client needs at least one control plane address")
        self.servers = list(servers)
        self.node = node
        self.subscriptions = {subscription.type_url: subscription for subscription in subscriptions}
        self.health = ClientHealth(types={url: TypeHealth() for url in self.subscriptions})
        self.ready = asyncio.Event()
        self.delta = delta
        self._before_ready = before_ready
        self._retry_initial, self._retry_max = retry_initial, retry_max
        # delta: what the service holds, per type: name -> (version, the resource's wire bytes). Bytes, not decoded
        # messages: a decoded one costs about 6 times more, and the service keeps its own form anyway.
        self._held: dict[str, dict[str, tuple[str, bytes]]] = {url: {} for url in self.subscriptions}

    async def run(self, stop: asyncio.Event) -> None:
        delay = self._retry_initial
        index = 0
        while not stop.is_set():
            host, port = self.servers[index % len(self.servers)]
            try:
                await self._session(f"{host}:{port}", stop)
                delay = self._retry_initial
            except (grpc.aio.AioRpcError, OSError) as exc:
                self._lost(f"{host}:{port}", _describe(exc))
            if stop.is_set():
                break
            index += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, self._retry_max)

    async def _session(self, target: str, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.DeltaAggregatedResources() if self.delta else stub.StreamAggregatedResources()
            stopping = asyncio.ensure_future(stop.wait())
            try:
                for url in self.subscriptions:
                    await call.write(self._first(url))
                # Connected once the stream is up, not at the first response: a control plane that still
                # serves what the client holds (a reconnect, a restart) sends nothing until the next change.
                await call.wait_for_connection()
                self._connected(target)
                while True:
                    response = await _next(call, stopping)
                    if response is None:
                        call.cancel()
                        return
                    if response is grpc.aio.EOF:
                        raise ConnectionResetError("the control plane ended the stream")
                    self._connected(target)
                    answer = await self._answer(response)
                    # Not held while waiting for the next one: the whole decoded response (21 MB at 50,000
                    # rate limits) would stay alive until the next change.
                    del response
                    await call.write(answer)
            finally:
                stopping.cancel()
                call.cancel()

    def _first(self, type_url: str) -> Request:
        """The first request of a type on a new stream, saying what the service holds."""
        if not self.delta:
            return self._request(type_url, version=self.health.types[type_url].version)
        held = {name: version for name, (version, _) in self._held[type_url].items()}
        return discovery_v3.DeltaDiscoveryRequest(
            node=self.node, type_url=type_url, resource_names_subscribe=["*"], initial_resource_versions=held
        )

    def _request(self, type_url: str, *, version: str, nonce: str = "", error: str | None = None) -> Request:
        """An ACK (a NACK with `error`); SotW says the version it holds, delta only answers the nonce."""
        request: Request
        if self.delta:
            request = discovery_v3.DeltaDiscoveryRequest(node=self.node, type_url=type_url, response_nonce=nonce)
        else:
            request = discovery_v3.DiscoveryRequest(
                node=self.node, type_url=type_url, version_info=version, response_nonce=nonce
            )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=error))
        return request

    async def _answer(self, response: Response) -> Request:
        """Apply one response; the ACK, or the NACK saying why it was not applied."""
        url = response.type_url
        subscription = self.subscriptions.get(url)
        if subscription is None:
            message = f"not subscribed to {url}"
            return self._request(url, version="", nonce=response.nonce, error=message)
        state = self.health.types[url]
        version = response.version_info if isinstance(response, discovery_v3.DiscoveryResponse) else ""
        try:
            held = self._checked(response, subscription)
            resources = Resources(subscription.message, held)
            await subscription.apply(resources)
        except Exception as exc:  # the service's refusal, or a bug of ours: either way the old config stays
            state.nacks += 1
            state.last_error = str(exc) or type(exc).__name__
            log.error("refused %s version %s: %s; keeping version %s", url, version, exc, state.version)
            return self._request(url, version=state.version, nonce=response.nonce, error=state.last_error)
        if isinstance(response, discovery_v3.DeltaDiscoveryResponse):
            self._held[url] = held
            version = response.system_version_info
        state.version, state.resources, state.applied_at = version, len(resources), time.time()
        state.acks += 1
        state.last_error = None
        if not self.ready.is_set() and all(other.applied_at is not None for other in self.health.types.values()):
            if self._before_ready is not None:
                # Before the ACK that lets the control plane send Envoys this revision: the service is serving
                # by the time Envoy calls it. Its errors (a taken port) end `run`; they are not a NACK.
                await self._before_ready()
            self.ready.set()
        return self._request(url, version=state.version, nonce=response.nonce)

    def _checked(self, response: Response, subscription: Subscription) -> dict[str, tuple[str, bytes]]:
        """What the service would hold of the type after `response`: name -> (version, wire bytes), each new
        resource decoded once to check it. Errors: ValueError for a resource of another type, DecodeError."""
        url = response.type_url
        if isinstance(response, discovery_v3.DiscoveryResponse):
            held: dict[str, tuple[str, bytes]] = {}
            for packed in response.resources:
                resource = _decode(subscription, url, packed.type_url, packed.value)
                held[getattr(resource, "name", "")] = ("", packed.value)
            return held
        held = dict(self._held[url])
        for name in response.removed_resources:
            held.pop(name, None)
        for item in response.resources:
            _decode(subscription, url, item.resource.type_url, item.resource.value)
            held[item.name] = (item.version, item.resource.value)
        return held

    def _connected(self, target: str) -> None:
        if not self.health.connected:
            self.health.connected, self.health.server, self.health.since = True, target, time.time()
            self.health.connects += 1
            self.health.last_error = None
            log.info("configured by the control plane at %s", target)

    def _lost(self, target: str, error: str) -> None:
        if self.health.connected or self.health.last_error is None:
            log.warning("no config from the control plane at %s: %s; retrying", target, error)
        self.health.connected, self.health.since, self.health.last_error = False, time.time(), error


class Resources(Mapping[str, Any]):
    """Every resource of a type as `apply` reads it: each decoded when read, so the service's own form of the
    config is the only one that stays (at 50,000 rate limits a second, decoded copy cost 30 MB)."""

    def __init__(self, message: type[Message], held: Mapping[str, tuple[str, bytes]]) -> None:
        self._message, self._held = message, held

    def __getitem__(self, name: str) -> Any:
        return self._message.FromString(self._held[name][1])

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)


async def _next(call: Any, stopping: asyncio.Future[Any]) -> Any:
    """The next response (or EOF), None once `stopping` is done; keeps no reference to it (a task would)."""
    reading = asyncio.ensure_future(call.read())
    done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if reading not in done:
        reading.cancel()
        return None
    return reading.result()


def _decode(subscription: Subscription, url: str, packed_type: str, value: bytes) -> Any:
    if packed_type != url:
        raise ValueError(f"a resource of type {packed_type} in a response of {url}")
    return subscription.message.FromString(value)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
