"""Simple ADS clients for the benchmarks: each subscribes and ACKs as an Envoy does, on its own connection.

A client asks for every cluster and listener (wildcard), then for the endpoints of the clusters that take them
over EDS and for the route table of each listener (by name, as Envoy asks), and ACKs every response with its
version and nonce. It decodes only clusters and listeners (for those names), so a thousand of them cost the
benchmark process little; the control plane cannot tell them from Envoys (user agent "envoy").
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import grpc
from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from xgate.discovery import typeurls
from xgate.translate import names

_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # a connection per client, as each Envoy has its own
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]


async def run_client(index: int, port: int, stop: asyncio.Event) -> None:
    node = core_v3.Node(id=f"bench-client-{index}", cluster="bench", user_agent_name="envoy")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        subscribed: dict[str, list[str]] = {typeurls.CLUSTER: [], typeurls.LISTENER: []}
        for url in subscribed:
            await call.write(discovery_v3.DiscoveryRequest(node=node, type_url=url))
        reading = asyncio.ensure_future(call.read())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    return
                response = reading.result()
                if response is grpc.aio.EOF:
                    return
                reading = asyncio.ensure_future(call.read())
                url = response.type_url
                ack = discovery_v3.DiscoveryRequest(
                    node=node, type_url=url, version_info=response.version_info, response_nonce=response.nonce
                )
                ack.resource_names.extend(subscribed.get(url, ()))
                await call.write(ack)
                follow = _names_named(response)
                if follow is not None and subscribed.get(follow[0]) != follow[1]:
                    subscribed[follow[0]] = follow[1]
                    await call.write(
                        discovery_v3.DiscoveryRequest(node=node, type_url=follow[0], resource_names=follow[1])
                    )
        finally:
            reading.cancel()
            stopping.cancel()
            call.cancel()


def _names_named(response: discovery_v3.DiscoveryResponse) -> tuple[str, list[str]] | None:
    """What a clusters or listeners response makes an Envoy ask for next: (type URL, names), sorted."""
    if response.type_url == typeurls.CLUSTER:
        clusters = (cluster_v3.Cluster.FromString(packed.value) for packed in response.resources)
        eds = sorted(cluster.name for cluster in clusters if cluster.HasField("eds_cluster_config"))
        return typeurls.ENDPOINT, eds
    if response.type_url == typeurls.LISTENER:
        listeners = (listener_v3.Listener.FromString(packed.value) for packed in response.resources)
        named = (listener.name.removeprefix(names.LISTENER) for listener in listeners)
        return typeurls.ROUTE, sorted(names.route_config(name) for name in named)
    return None


async def run_clients(count: int, port: int) -> None:
    """`count` clients until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(run_client(index, port, stop)) for index in range(count)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task
