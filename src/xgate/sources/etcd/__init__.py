"""etcd as the config store: a small asyncio client, the key layout, and the watching source."""

from __future__ import annotations

from xgate.sources.etcd.client import (
    CompactedError,
    EtcdClient,
    EtcdRequestError,
    EtcdSettings,
    EtcdUnavailableError,
)

__all__ = ["CompactedError", "EtcdClient", "EtcdRequestError", "EtcdSettings", "EtcdUnavailableError"]
