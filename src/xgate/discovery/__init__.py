"""Discovery: the snapshot cache (no gRPC) and the ADS server that streams it to Envoy."""

from __future__ import annotations

from xgate.discovery.cache import SnapshotCache
from xgate.discovery.server import AdsService, add_to_server
from xgate.discovery.snapshot import Resource, Snapshot, build_snapshot

__all__ = ["AdsService", "Resource", "Snapshot", "SnapshotCache", "add_to_server", "build_snapshot"]
