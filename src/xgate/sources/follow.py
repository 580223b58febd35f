"""Follow a config file and/or etcd and hand each revision to one consumer, named by its source.

The control plane, the rate-limit service and the authz service all read the same config this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from xgate.sources.etcd.client import EtcdClient, EtcdSettings
from xgate.sources.etcd.source import EtcdSource
from xgate.sources.file import FileSource
from xgate.sources.revision import Revision

Consumer = Callable[[Revision, str], Awaitable[None]]


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
