"""Test helpers users may import: a whole gateway (control plane + real Envoy) and etcd on loopback ports."""

from __future__ import annotations

from xgate.testing.etcd import EtcdCluster, EtcdProcess, run_etcd
from xgate.testing.gateway import Gateway, free_port, run_gateway, write_atomic

__all__ = ["EtcdCluster", "EtcdProcess", "Gateway", "free_port", "run_etcd", "run_gateway", "write_atomic"]
