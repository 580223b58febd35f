"""The load client (xgate.testing.adsload) against the real xDS server on loopback, no Envoy: clients of both
variants get in sync, follow a route change and a removed upstream, and the server's status says which variant
each speaks. It also runs the server's gRPC side (both RPCs) without the test lock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from tests.unit.discovery.test_stream import CONFIG, snapshot

from xgate.discovery import typeurls
from xgate.discovery.cache import SnapshotCache
from xgate.runtime import start_xds
from xgate.testing.adsload import Fleet
from xgate.testing.gateway import wait_for

CHANGED = CONFIG.replace("prefix: /a", "prefix: /changed")
WITHOUT_B = """
listeners: [{name: public, port: 10000}]
upstreams:
  - {name: a, endpoints: ["127.0.0.1:8001"]}
routes:
  - {name: to-a, match: {path: {prefix: /a}}, upstream: a}
"""


class Plane:
    """The xDS server on a port that stays the same across a restart."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.port = 0
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.server, self.port = await start_xds(self.cache, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


@contextlib.asynccontextmanager
async def fleets(plane: Plane, count: int) -> AsyncIterator[dict[str, Fleet]]:
    await plane.start()
    stop = asyncio.Event()
    found = {
        "delta": Fleet(f"127.0.0.1:{plane.port}", count, delta=True, prefix="d"),
        "sotw": Fleet(f"127.0.0.1:{plane.port}", count, delta=False, prefix="s"),
    }
    tasks = [asyncio.create_task(fleet.run(stop)) for fleet in found.values()]
    try:
        for fleet in found.values():
            await fleet.connected(10)
        yield found
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await plane.stop()


def in_sync(cache: SnapshotCache, count: int) -> bool:
    report = cache.status.connected.values()
    return len(report) == count and all(proxy.in_sync(cache.snapshot) for proxy in report)


async def test_clients_of_both_variants_follow_changes_and_removals() -> None:
    count = 3
    cache = SnapshotCache()
    first = snapshot()
    cache.set(first)
    async with fleets(Plane(cache), count) as found:
        await wait_for(lambda: in_sync(cache, 2 * count), 10, "every client to be in sync")
        kinds = sorted(proxy.xds for proxy in cache.status.connected.values())
        assert kinds == ["delta"] * count + ["sotw"] * count
        before = {variant: [acks for acks, _ in fleet.acks(typeurls.ROUTE)] for variant, fleet in found.items()}
        assert all(acks == [1] * count for acks in before.values()), before

        changed = snapshot(CHANGED, 2, first)
        cache.set(changed)
        await wait_for(lambda: in_sync(cache, 2 * count), 10, "every client to ACK the route change")
        for variant, fleet in found.items():
            assert [acks for acks, _ in fleet.acks(typeurls.ROUTE)] == [2] * count, variant
            # Only the route table changed: no client was sent clusters again.
            assert [acks for acks, _ in fleet.acks(typeurls.CLUSTER)] == [1] * count, variant

        cache.set(snapshot(WITHOUT_B, 3, changed))
        await wait_for(lambda: in_sync(cache, 2 * count), 10, "every client to drop upstream b")
        for client in found["delta"].clients:
            assert sorted(client.types[typeurls.CLUSTER].held) == ["upstream/a"]
            assert client.types[typeurls.ENDPOINT].names == frozenset({"upstream/a"})
            assert sorted(client.types[typeurls.ENDPOINT].held) == ["upstream/a"]
        for client in found["sotw"].clients:
            assert client.types[typeurls.ENDPOINT].names == frozenset({"upstream/a"})


async def test_a_client_that_reconnects_to_a_restarted_server_is_sent_nothing_it_holds() -> None:
    """Delta names each resource's version (initial_resource_versions), SotW each type's (version_info): either
    way a new stream to a restarted server that serves the same content sends nothing, and status has them in
    sync all the same."""
    cache = SnapshotCache()
    cache.set(snapshot())
    plane = Plane(cache)
    async with fleets(plane, 2) as found:
        await wait_for(lambda: in_sync(cache, 4), 10, "every client to be in sync")
        acks = {
            variant: [{u: t.acks for u, t in c.types.items()} for c in fleet.clients]
            for variant, fleet in found.items()
        }
        streams = set(cache.status.connected)
        await plane.stop()
        await wait_for(lambda: not cache.status.connected, 10, "every stream to end")
        await plane.start()

        def reconnected() -> bool:
            return len(cache.status.connected) == 4 and not streams & set(cache.status.connected)

        await wait_for(reconnected, 10, "every client to reconnect")
        await wait_for(lambda: in_sync(cache, 4), 10, "every client to be in sync again")
        assert sorted(proxy.xds for proxy in cache.status.connected.values()) == ["delta"] * 2 + ["sotw"] * 2
        after = {
            variant: [{u: t.acks for u, t in c.types.items()} for c in fleet.clients]
            for variant, fleet in found.items()
        }
        assert after == acks
