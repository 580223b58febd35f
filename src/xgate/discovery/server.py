"""The ADS gRPC service: streams snapshots from the cache to each Envoy (state of the world)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from xgate.discovery import typeurls
from xgate.discovery.cache import SnapshotCache
from xgate.discovery.stream import AdsStream

log = logging.getLogger("xgate.discovery")


class AdsService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_v3.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        proxy = self.cache.status.connect(context.peer())
        stream = AdsStream(proxy)
        wake = asyncio.Event()
        requests: asyncio.Queue[discovery_v3.DiscoveryRequest | None] = asyncio.Queue()
        self.cache.subscribe(wake)
        reader = asyncio.create_task(_read(request_iterator, requests, wake))
        try:
            while True:
                await wake.wait()
                wake.clear()
                snapshot = self.cache.snapshot
                while not requests.empty():
                    request = requests.get_nowait()
                    if request is None:
                        return
                    stream.on_request(request, snapshot)
                    if request.HasField("error_detail"):
                        log.warning(
                            "proxy %s rejected %s: %s",
                            proxy.node_id,
                            typeurls.SHORT.get(request.type_url, request.type_url),
                            request.error_detail.message,
                        )
                for response in stream.responses(snapshot):
                    # Written, not yielded: grpc.aio keeps the last message an async generator yielded until the
                    # next one, a 740 KB route table per connected proxy between changes (74 MB at 100).
                    await context.write(response.wire())
        finally:
            reader.cancel()
            self.cache.unsubscribe(wake)
            self.cache.status.disconnect(proxy)
            log.info("proxy %s (%s) disconnected", proxy.node_id, proxy.peer)

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_v3.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_v3.DeltaDiscoveryResponse]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "xgate serves state-of-the-world ADS; use GRPC, not DELTA_GRPC"
        )
        yield discovery_v3.DeltaDiscoveryResponse()  # pragma: no cover (abort raises)


async def _read(
    source: AsyncIterator[discovery_v3.DiscoveryRequest],
    sink: asyncio.Queue[discovery_v3.DiscoveryRequest | None],
    wake: asyncio.Event,
) -> None:
    try:
        async for request in source:
            sink.put_nowait(request)
            wake.set()
    except (asyncio.CancelledError, grpc.aio.AioRpcError):
        pass
    finally:
        sink.put_nowait(None)
        wake.set()


def add_to_server(server: grpc.aio.Server, cache: SnapshotCache) -> None:
    """Register ADS; state-of-the-world responses go out as the bytes AdsStream assembled."""
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
            response_serializer=discovery_v3.DeltaDiscoveryResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))


ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _already_serialized(response: bytes) -> bytes:
    return response
