"""Test helpers users may import: a whole gateway (control plane + real Envoy) on loopback ports."""

from __future__ import annotations

from xgate.testing.gateway import Gateway, free_port, run_gateway, write_atomic

__all__ = ["Gateway", "free_port", "run_gateway", "write_atomic"]
