"""Follow a config file and/or etcd and hand each revision to one consumer, named by its source.

The control plane, the rate-limit service and the authz service all read the same config this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from xgate.config.load import ConfigSet
from xgate.controlplane import merge_inputs
from xgate.heap import DeferredFreeze
from xgate.sources.etcd.client import EtcdClient, EtcdSettings
from xgate.sources.etcd.source import EtcdSource
from xgate.sources.file import FileSource
from xgate.sources.revision import Revision

Consumer = Callable[[Revision, str], Awaitable[None]]
# (the merged config, the revision that changed it, lenient: etcd is among the sources) -> accepted
MergedConsumer = Callable[[ConfigSet, Revision, bool], Awaitable[bool]]


class Merged:
    """Each source's latest accepted revision, merged as the control plane merges them (the file over etcd),
    for a service that reads the same config. A revision the consumer refuses leaves the last accepted
    revision of its source in place."""

    def __init__(self, consume: MergedConsumer) -> None:
        self._consume = consume
        self._inputs: dict[str, Revision] = {}
        # At most one full collection per 2 s while changes stream in: each walks the whole heap (~45 ms).
        self._freeze = DeferredFreeze(2.0)

    async def on_revision(self, revision: Revision, source: str = "file") -> None:
        if revision.config is None:
            return
        inputs = {**self._inputs, source: revision}
        config, _ = merge_inputs(inputs)
        if await self._consume(config, revision, "etcd" in inputs):
            self._inputs = inputs
            self._freeze.soon()  # what the service keeps per request is then all that its collections walk


async def follow(
    config_path: str | Path | None,
    etcd: EtcdSettings | None,
    prefix: str,
    consume: Consumer,
    stop: asyncio.Event,
    *,
    started: Callable[[], None] | None = None,
) -> None:
    """Read each source once (the file before `started` is called), then follow both until `stop`."""
    client = EtcdClient(etcd) if etcd is not None else None

    async def from_file(revision: Revision) -> None:
        await consume(revision, "file")

    async def from_etcd(revision: Revision) -> None:
        await consume(revision, "etcd")

    try:
        async with asyncio.TaskGroup() as group:
            if config_path is not None:
                source = FileSource(config_path, from_file)
                await source.load()
                group.create_task(source.run(stop))
            if client is not None:
                group.create_task(EtcdSource(client, from_etcd, prefix=prefix).run(stop))
            if started is not None:
                started()
            await stop.wait()
    finally:
        if client is not None:
            await client.close()
