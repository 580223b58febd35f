"""Wires the control plane: a config source -> pipeline -> snapshot cache -> ADS server, plus the status API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from opentelemetry import trace
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from xgate.adminapi import add_admin_to_server
from xgate.controlplane import ControlPlane
from xgate.discovery import SnapshotCache, add_to_server
from xgate.listen import bind_grpc, check_free, grpc_options
from xgate.metricsapi import MetricsAddressError, metrics_handler
from xgate.opsapi import add_operator_routes
from xgate.sources.etcd.client import EtcdClient, EtcdRequestError, EtcdSettings, EtcdUnavailableError
from xgate.sources.etcd.layout import DEFAULT_PREFIX
from xgate.sources.etcd.source import EtcdSource
from xgate.sources.file import FileSource
from xgate.sources.revision import Revision
from xgate.sources.watched import WatchedFiles
from xgate.telemetry import tracing_enabled
from xgate.telemetry.fleet import FleetStats, Target, target_url
from xgate.telemetry.journey import RevisionJourneys

log = logging.getLogger("xgate.runtime")


@dataclass(frozen=True)
class Bound:
    """The addresses the control plane actually bound (ports may have been 0)."""

    xds: tuple[str, int]
    status: tuple[str, int]


async def start_xds(
    cache: SnapshotCache, host: str, port: int, plane: ControlPlane | None = None
) -> tuple[grpc.aio.Server, int]:
    """ADS on host:port, and with `plane` xgate's admin API beside it (xgate.adminapi)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            # No bandwidth probes: grpc pings a peer that sends data, to size its receive window; ADS requests
            # are a few hundred bytes, and each probe cost a send and a receive per consumer and change (strace:
            # 3 sendmsg and 5.5 recvmsg per consumer and change with them, 1 and 2 without).
            ("grpc.http2.bdp_probe", 0),
            # Never shared: a second control plane on this port would get half of the Envoys' connections.
            *grpc_options(reuse_port=False),
        ]
    )
    add_to_server(server, cache)
    if plane is not None:
        add_admin_to_server(server, plane)
    bound = bind_grpc(server, host, port, "xDS, --xds")
    await server.start()
    return server, bound


async def start_status(plane: ControlPlane, host: str, port: int) -> tuple[web.AppRunner, int]:
    async def status(_request: web.Request) -> web.Response:
        return web.json_response(plane.report())

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "applied_revision": plane.state.applied})

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get(
        "/metrics",
        metrics_handler(
            plane.report,
            lambda: [
                *status_families(plane.report()),
                *plane.cache.status.propagation.collect(),
                *(plane.fleet.families() if plane.fleet is not None else ()),
            ],
        ),
    )
    add_operator_routes(app, plane)
    check_free(host, port, "status API, --status")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise MetricsAddressError(
            f"cannot serve the status API on {host}:{port} ({reason}): "
            "another control plane running? choose another --status"
        ) from None
    # aiohttp has no public getter for the bound port; the runner's addresses hold it.
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port


def fleet_targets(plane: ControlPlane) -> list[Target]:
    """The connected Envoys and authz instances whose figures this control plane can read (see FleetStats)."""
    found = []
    for proxy in plane.cache.status.connected.values():
        if proxy.role not in ("envoy", "authz"):
            continue
        keys = ("stats", "admin") if proxy.role == "envoy" else ("status",)
        url = target_url(proxy.peer, proxy.addresses, keys)
        if url is not None:
            found.append(Target(proxy.role, proxy.node_id or proxy.peer, url))
    return found


def status_families(report: dict[str, Any]) -> Iterator[Metric]:
    """The status report as Prometheus metrics: what a fleet dashboard alerts on (an Envoy not in sync, a
    rejected change, objects not served as configured, a config source out of reach)."""
    proxies = report["proxies"]
    yield GaugeMetricFamily("xgate_proxies", "Envoys connected over ADS", value=len(proxies))
    in_sync = GaugeMetricFamily(
        "xgate_proxy_in_sync", "1 when the Envoy ACKed the current revision of every type", labels=["node", "peer"]
    )
    rejected = GaugeMetricFamily(
        "xgate_proxy_rejected", "1 while the Envoy's last answer for a type was a NACK", labels=["node", "type"]
    )
    for proxy in proxies:
        in_sync.add_metric([proxy["node"], proxy["peer"]], 1 if proxy["in_sync"] else 0)
        for kind, detail in proxy["types"].items():
            rejected.add_metric([proxy["node"], kind], 1 if detail["rejection"] else 0)
    yield in_sync
    yield rejected
    config = report["config"]
    yield GaugeMetricFamily(
        "xgate_config_rejected",
        "1 while the last config change is rejected",
        value=int(bool(config["rejected_revision"])),
    )
    yield GaugeMetricFamily(
        "xgate_config_objects_not_served",
        "Objects not served as configured (invalid, or overridden by another source)",
        value=len(config.get("objects_not_served") or []),
    )
    connected = GaugeMetricFamily("xgate_source_connected", "1 while the config source is followed", labels=["source"])
    outages = CounterMetricFamily("xgate_source_outages", "Times the config source was lost", labels=["source"])
    for name, health in (report.get("sources") or {}).items():
        connected.add_metric([name], 1 if health.get("connected") else 0)
        outages.add_metric([name], health.get("outages", 0))
    yield connected
    yield outages


async def run_controlplane(
    config_path: str | Path | None,
    *,
    etcd: EtcdSettings | None = None,
    prefix: str = DEFAULT_PREFIX,
    xds: tuple[str, int] = ("127.0.0.1", 18000),
    status: tuple[str, int] = ("127.0.0.1", 18080),
    on_ready: Callable[[Bound], None] | None = None,
    stop: asyncio.Event | None = None,
    plane: ControlPlane | None = None,
    allow_empty: bool = False,
) -> None:
    """Serve until `stop` is set or the task is cancelled; shut down gracefully.

    Sources: a config file, etcd, or both (the file then overrides etcd object by object). Each is read
    once before the xDS port opens, so a connecting Envoy gets the whole config in its first responses;
    an etcd that is down at start does not block the start (the file, if any, serves meanwhile).
    `allow_empty`: serve a config without listeners, or a change removing every route (see xgate.guard).

    Errors: PortInUseError when another process holds the xDS or the status port (never shared),
    MetricsAddressError when the status address cannot be bound otherwise.
    """
    if config_path is None and etcd is None:
        raise ValueError("run_controlplane needs a config file, etcd, or both")
    # Before any source is read: a taken port ends the start with one message, not after a config was applied.
    check_free(*xds, "xDS, --xds")
    check_free(*status, "status API, --status")
    plane = plane or ControlPlane(allow_empty=allow_empty)
    if plane.journeys is None and tracing_enabled():
        plane.trace_revisions(RevisionJourneys(trace.get_tracer("xgate.controlplane")))
    if plane.fleet is None:
        plane.fleet = FleetStats(lambda: fleet_targets(plane))
    stop = stop or asyncio.Event()
    tasks: list[Coroutine[Any, Any, None]] = []
    client: EtcdClient | None = None
    if config_path is not None:
        source = FileSource(config_path, plane.on_revision)
        await source.load()
        tasks.append(source.run(stop))
    if etcd is not None:
        client = EtcdClient(etcd)

        async def emit(revision: Revision) -> None:
            await plane.on_revision(revision, "etcd")

        etcd_source = EtcdSource(client, emit, prefix=prefix)
        plane.health["etcd"] = etcd_source.health.to_dict
        # Down, slow, or refusing us (a wrong password, a missing permission): start anyway; the source keeps
        # trying, logs why, and status reports it (exit 1), as for an outage later on.
        with contextlib.suppress(EtcdUnavailableError, EtcdRequestError, TimeoutError):
            await asyncio.wait_for(etcd_source.read_all(), etcd.timeout)
        tasks.append(etcd_source.run(stop))
    tasks.append(WatchedFiles(plane.read_files, plane.reread).run(stop))  # a jwks_file is read here, sent inline
    server, xds_port = await start_xds(plane.cache, *xds, plane=plane)
    try:
        runner, status_port = await start_status(plane, *status)
    except BaseException:
        await server.stop(None)
        if client is not None:
            await client.close()
        for task in tasks:
            task.close()  # never started
        raise
    if on_ready is not None:
        on_ready(Bound(xds=(xds[0], xds_port), status=(status[0], status_port)))
    try:
        async with asyncio.TaskGroup() as group:
            for task in tasks:
                group.create_task(task)
            group.create_task(plane.fleet.run(stop))
            await stop.wait()
    finally:
        await server.stop(grace=1.0)
        await runner.cleanup()
        if client is not None:
            await client.close()
