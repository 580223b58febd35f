"""Test helpers users may import: a whole gateway (control plane + real Envoy), the authz, dyeing and ratelimit
services configured by it, etcd, Redis and nginx upstreams on loopback ports, the command line as a child
process, and /metrics read as Prometheus does.

Whole gateways behind one interface (stack.GatewayUnderTest), which the `xgate_gateway` fixture of
xgate.pytest_plugin yields: localstack.LocalGateway (child processes) and containers.GatewayStack
(testcontainers; imported from xgate.testing.containers only, so that testcontainers stays optional)."""

from __future__ import annotations

from xgate.testing.cli import CliResult, run_cli
from xgate.testing.etcd import EtcdCluster, EtcdProcess, run_etcd
from xgate.testing.gateway import Gateway, free_port, run_gateway, write_atomic
from xgate.testing.metrics import scrape
from xgate.testing.nginx import NginxProcess, run_nginx
from xgate.testing.otlp import OtlpReceiver, ReceivedSpan, run_otlp_receiver
from xgate.testing.redis import RedisProcess, run_redis
from xgate.testing.services import (
    ServiceProcess,
    run_authz_service,
    run_dyeing_service,
    run_ratelimit_service,
)

__all__ = [
    "CliResult",
    "EtcdCluster",
    "EtcdProcess",
    "Gateway",
    "NginxProcess",
    "OtlpReceiver",
    "ReceivedSpan",
    "RedisProcess",
    "ServiceProcess",
    "free_port",
    "run_authz_service",
    "run_cli",
    "run_dyeing_service",
    "run_etcd",
    "run_gateway",
    "run_nginx",
    "run_otlp_receiver",
    "run_ratelimit_service",
    "run_redis",
    "scrape",
    "write_atomic",
]
