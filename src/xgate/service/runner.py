"""One way for every xgate service to start, bind, follow the control plane, report ready, expose /metrics
and stop, so authz, dyeing and ratelimit behave alike on a good, an invalid or a failing update.

A service only says what is its own: how it serves (`start`, `stop`), which resource types configure it and how
it applies them (`subscriptions`: a response it cannot apply raises, is NACKed and changes nothing), and its
metrics. It serves, and is ready (the ready callback, GET /readyz), once it has applied the first config of every
type: never with a config it has not received.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from aiohttp import web
from envoy.config.core.v3 import base_pb2 as core_v3
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

import xgate
from xgate.listen import check_free
from xgate.metricsapi import serve_metrics
from xgate.xdsclient import Subscription, XdsClient


class Service(Protocol):
    """What a service brings to the skeleton."""

    name: ClassVar[str]  # "authz", "dyeing", "ratelimit": its node says "xgate-<name>"

    async def start(self, host: str, port: int, reuse_port: bool) -> int:
        """Bind and serve gRPC on host:port (0: any; `reuse_port`: shared with other processes of the service);
        return the port bound. Errors: PortInUseError when another process holds the port."""
        ...

    def subscriptions(self) -> list[Subscription]: ...

    def metrics(self) -> dict[str, Any]:
        """The service's own figures as JSON (GET /metrics without a Prometheus Accept)."""
        ...

    def families(self) -> Iterable[Metric]:
        """The same figures for Prometheus."""
        ...

    async def stop(self, grace: float) -> None: ...


@dataclass(frozen=True)
class ServiceOptions:
    listen: tuple[str, int]
    xds: tuple[tuple[str, int], ...]  # control planes, tried in order
    status: tuple[str, int] | None = None  # GET /metrics, /healthz, /readyz; None: off
    node_id: str | None = None  # default: <service>-<host name>-<pid>
    reuse_port: bool = False  # share the gRPC port with other processes of the service (SO_REUSEPORT)
    delta: bool = True  # incremental ADS (False: state of the world)


@dataclass(frozen=True)
class Ready:
    """Where a ready service serves: its gRPC port and its status port (None when off)."""

    grpc_port: int
    status_port: int | None


def node(name: str, node_id: str | None) -> core_v3.Node:
    return core_v3.Node(
        id=node_id or f"{name}-{socket.gethostname()}-{os.getpid()}",
        cluster=f"xgate-{name}",
        user_agent_name=f"xgate-{name}",
        user_agent_version=xgate.__version__,
    )


async def run_service(
    service: Service,
    options: ServiceOptions,
    *,
    on_ready: Callable[[Ready], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (or the task is cancelled), then stop within a second.

    Errors: PortInUseError when the gRPC address is taken, MetricsAddressError when the status address is."""
    stop = stop or asyncio.Event()
    identity = node(service.name, options.node_id)
    if not options.reuse_port:
        check_free(*options.listen, f"{service.name} gRPC, --listen")  # a taken port fails now, not at the config
    port = 0

    async def serve() -> None:
        # Only with its first config: before it, a rate-limit service would answer OK to every descriptor it
        # does not know yet and an authz service would check against no policy, and Envoy would count neither as
        # the failure it is. Until then Envoy's calls are refused and its failure mode answers, counted.
        nonlocal port
        port = await service.start(*options.listen, options.reuse_port)

    client = XdsClient(options.xds, identity, service.subscriptions(), before_ready=serve, delta=options.delta)
    runner: web.AppRunner | None = None
    try:
        status_port = None
        if options.status is not None:
            runner, status_port = await serve_metrics(
                *options.status,
                lambda: {"xds": client.health.to_dict(), **service.metrics()},
                lambda: [*service.families(), *_feed_families(client)],
                ready=client.ready.is_set,
            )
            # Where the control plane reads this instance's figures (JWKS health, see telemetry/fleet.py).
            identity.metadata.update({"xgate": {"status": f"{options.status[0]}:{status_port}"}})
        async with asyncio.TaskGroup() as group:
            group.create_task(client.run(stop))
            ready = group.create_task(client.ready.wait())
            stopping = group.create_task(stop.wait())
            await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if client.ready.is_set() and on_ready is not None:
                on_ready(Ready(port, status_port))
            ready.cancel()
    finally:
        with contextlib.suppress(Exception):
            await service.stop(1.0)
        if runner is not None:
            await runner.cleanup()


def _feed_families(client: XdsClient) -> Iterator[Metric]:
    health = client.health
    yield GaugeMetricFamily(
        "xgate_xds_connected", "1 while the service is connected to a control plane", value=int(health.connected)
    )
    resources = GaugeMetricFamily("xgate_xds_resources", "Resources of each type the service holds", labels=["type"])
    answers = CounterMetricFamily("xgate_xds_answers", "Config responses ACKed and NACKed", labels=["type", "answer"])
    for url, state in health.types.items():
        short = url.rpartition(".")[2]
        resources.add_metric([short], state.resources)
        answers.add_metric([short, "ack"], state.acks)
        answers.add_metric([short, "nack"], state.nacks)
    yield resources
    yield answers
