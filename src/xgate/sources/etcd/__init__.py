"""etcd as the config store: its client, the store protocol the source follows, the key layout, the source."""

from __future__ import annotations

from xgate.sources.etcd.client import EtcdClient, EtcdSettings
from xgate.sources.etcd.kv import CompactedError, EtcdRequestError, EtcdUnavailableError

__all__ = ["CompactedError", "EtcdClient", "EtcdRequestError", "EtcdSettings", "EtcdUnavailableError"]
