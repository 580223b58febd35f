"""xgate's ADS client (the services' config feed) over both variants, against the real xDS server on loopback:
`apply` always gets every resource of the type (a delta response is applied on top of what is held: changed
and removed resources), a refused response keeps what was held, and a client reconnecting to a restarted
server is sent nothing it holds, and counts itself connected all the same."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import base_pb2 as core_v3
from tests.unit.discovery.test_stream import CONFIG, WITHOUT_B, snapshot

from xgate.discovery import typeurls
from xgate.discovery.cache import SnapshotCache
from xgate.runtime import start_xds
from xgate.testing.gateway import wait_for
from xgate.xdsclient.client import Subscription, XdsClient

LB_RANDOM = CONFIG.replace('endpoints: ["127.0.0.1:8001"]}', 'endpoints: ["127.0.0.1:8001"], lb: random}')


class Applied:
    """What the client handed to `apply`, each time; refuses while `refuse` is set."""

    def __init__(self) -> None:
        self.calls: list[Mapping[str, Any]] = []
        self.refuse: str | None = None

    async def __call__(self, resources: Mapping[str, Any]) -> None:
        if self.refuse is not None:
            raise ValueError(self.refuse)
        self.calls.append(resources)

    def last(self) -> dict[str, cluster_v3.Cluster.LbPolicy.ValueType]:
        return {name: cluster.lb_policy for name, cluster in self.calls[-1].items()}


def has_clusters(cache: SnapshotCache) -> bool:
    """The client (it asks for clusters alone, so never in sync as an Envoy) ACKed the current clusters."""
    assert cache.snapshot is not None
    wanted = cache.snapshot.version(typeurls.CLUSTER, None)
    return any(
        typeurls.CLUSTER in p.types and p.types[typeurls.CLUSTER].acked_version == wanted
        for p in cache.status.connected.values()
    )


async def restart(server: grpc.aio.Server, cache: SnapshotCache, port: int) -> grpc.aio.Server:
    await server.stop(None)
    await wait_for(lambda: not cache.status.connected, 10, "the stream to end")
    new, _ = await start_xds(cache, "127.0.0.1", port)
    return new


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_apply_gets_every_resource_a_refusal_keeps_them_a_reconnect_resends_nothing(delta: bool) -> None:
    cache = SnapshotCache()
    first = snapshot()
    cache.set(first)
    server, port = await start_xds(cache, "127.0.0.1", 0)
    applied = Applied()
    client = XdsClient(
        [("127.0.0.1", port)],
        core_v3.Node(id="client"),
        [Subscription(typeurls.CLUSTER, cluster_v3.Cluster, applied)],
        retry_initial=0.05,
        delta=delta,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(client.run(stop))
    random, round_robin = cluster_v3.Cluster.RANDOM, cluster_v3.Cluster.ROUND_ROBIN
    try:
        await wait_for(client.ready.is_set, 10, "the first config")
        assert applied.last() == {"upstream/a": round_robin, "upstream/b": round_robin}
        # The client keeps each resource as its wire bytes, not a second decoded copy beside the service's own
        # form of it (at 50,000 rate limits that copy cost the service 30 MB).
        held = client._held[typeurls.CLUSTER] if delta else {}
        assert all(type(blob) is bytes for _, blob in held.values()) and (len(held) == 2 or not delta)
        (proxy,) = cache.status.connected.values()
        assert proxy.xds == ("delta" if delta else "sotw")

        second = snapshot(LB_RANDOM, 2, first)
        cache.set(second)  # one cluster changed: the other is still handed over
        await wait_for(lambda: len(applied.calls) == 2, 10, "the changed cluster")
        assert applied.last() == {"upstream/a": random, "upstream/b": round_robin}

        applied.refuse = "no thanks"
        third = snapshot(WITHOUT_B, 3, second)
        cache.set(third)
        await wait_for(lambda: client.health.types[typeurls.CLUSTER].nacks == 1, 10, "the refusal")
        rejection = proxy.types[typeurls.CLUSTER].rejection
        assert rejection is not None and rejection.message == "no thanks"
        applied.refuse = None
        # What it holds is still the second revision: a fourth that changes only cluster a again must come
        # with b (delta: b is held, not removed, since the removal was refused with the rest).
        fourth = snapshot(CONFIG, 4, third)
        cache.set(fourth)
        await wait_for(lambda: len(applied.calls) == 3, 10, "the fourth revision")
        assert applied.last() == {"upstream/a": round_robin, "upstream/b": round_robin}

        cache.set(snapshot(WITHOUT_B, 5, fourth))
        await wait_for(lambda: len(applied.calls) == 4, 10, "the removal")
        assert applied.last() == {"upstream/a": round_robin}
        await wait_for(lambda: has_clusters(cache), 10, "the client to have the clusters")

        server = await restart(server, cache, port)
        await wait_for(lambda: has_clusters(cache), 10, "the client to reconnect with the clusters")
        # Sent nothing, it is connected all the same (its /metrics say so).
        await wait_for(lambda: client.health.connected and client.health.connects == 2, 10, "the client connected")
        assert len(applied.calls) == 4  # nothing was sent again
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await server.stop(None)
