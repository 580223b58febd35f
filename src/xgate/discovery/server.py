"""The ADS gRPC service: streams snapshots from the cache to each consumer, state of the world or delta.

Each stream costs one task beside gRPC's own: it reads the consumer's requests and answers them at once. A new
snapshot is handed to every stream by the cache itself (SnapshotCache.set), which wakes only the streams that
have something to send; a response's bytes are shared by every consumer in the same state, only the nonce
is each stream's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from xgate.discovery import typeurls
from xgate.discovery.cache import SnapshotCache
from xgate.discovery.delta import DeltaStream
from xgate.discovery.snapshot import Snapshot
from xgate.discovery.stream import AdsStream, Stream

log = logging.getLogger("xgate.discovery")


class AdsService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_v3.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await self._serve(AdsStream(self.cache.status.connect(context.peer())), request_iterator, context)

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_v3.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await self._serve(DeltaStream(self.cache.status.connect(context.peer())), request_iterator, context)

    async def _serve(
        self, stream: Stream[Any, Any], requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        proxy = stream.proxy
        outbox: deque[bytes] = deque()
        wake = asyncio.Event()
        failed: list[BaseException] = []

        def send(snapshot: Snapshot | None) -> None:
            try:
                responses = stream.responses(snapshot)
            except Exception as exc:  # a bug of ours: end this stream (the consumer reconnects), keep the others
                failed.append(exc)
                wake.set()
                return
            if responses:
                outbox.extend(response.wire() for response in responses)
                wake.set()

        self.cache.follow(proxy.stream_id, send)
        reader = asyncio.create_task(_read(stream, requests, self.cache, send, wake, failed))
        try:
            while True:
                await wake.wait()
                wake.clear()
                if failed:
                    log.error("the stream of proxy %s (%s) failed", proxy.node_id, proxy.peer, exc_info=failed[0])
                    return
                while outbox:
                    # Written, not yielded: grpc.aio keeps the last message an async generator yielded until the
                    # next one, a whole route table per connected consumer between changes.
                    await context.write(outbox.popleft())
                if reader.done():
                    return
        finally:
            reader.cancel()
            self.cache.unfollow(proxy.stream_id)
            self.cache.status.disconnect(proxy)
            log.info("proxy %s (%s) disconnected", proxy.node_id, proxy.peer)


async def _read(
    stream: Stream[Any, Any],
    requests: AsyncIterator[Any],
    cache: SnapshotCache,
    send: Callable[[Snapshot | None], None],
    wake: asyncio.Event,
    failed: list[BaseException],
) -> None:
    """Answer each request as it comes: most are ACKs that need no response, and wake nothing."""
    try:
        async for request in requests:
            snapshot = cache.snapshot
            stream.on_request(request, snapshot)
            if request.HasField("error_detail"):
                log.warning(
                    "proxy %s rejected %s: %s",
                    stream.proxy.node_id,
                    typeurls.SHORT.get(request.type_url, request.type_url),
                    request.error_detail.message,
                )
            send(snapshot)
    except (asyncio.CancelledError, grpc.aio.AioRpcError):
        pass
    except Exception as exc:
        failed.append(exc)
    finally:
        wake.set()


def add_to_server(server: grpc.aio.Server, cache: SnapshotCache) -> None:
    """Register ADS, both variants; responses go out as the bytes the streams assembled."""
    service = AdsService(cache)
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            service.StreamAggregatedResources,
            request_deserializer=discovery_v3.DiscoveryRequest.FromString,
            response_serializer=_already_serialized,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            service.DeltaAggregatedResources,
            request_deserializer=discovery_v3.DeltaDiscoveryRequest.FromString,
            response_serializer=_already_serialized,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))


ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _already_serialized(response: bytes) -> bytes:
    return response
