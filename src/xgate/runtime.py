"""Wires the control plane: a config source -> pipeline -> snapshot cache -> ADS server, plus the status API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from xgate.discovery import SnapshotCache, add_to_server
from xgate.errors import ConfigError
from xgate.pipeline import compile_config
from xgate.sources.file import FileSource, Revision
from xgate.translate import Translator

log = logging.getLogger("xgate.controlplane")
# Above this many routes, compiling runs in a worker thread so the event loop keeps serving ADS meanwhile.
_THREAD_ABOVE_ROUTES = 2000


@dataclass
class ConfigState:
    """The last revision applied and the last one rejected (cleared once a later revision applies)."""

    applied: str | None = None
    applied_at: float | None = None
    rejected: str | None = None
    rejected_at: float | None = None
    issues: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied_revision": self.applied,
            "applied_at": self.applied_at,
            "rejected_revision": self.rejected,
            "rejected_at": self.rejected_at,
            "issues": self.issues,
        }


class ControlPlane:
    """Applies each good revision to the cache; a bad one is reported and the last good snapshot stays."""

    def __init__(self, cache: SnapshotCache | None = None) -> None:
        self.cache = cache or SnapshotCache()
        self.state = ConfigState()
        self._translator = Translator()

    async def on_revision(self, revision: Revision) -> None:
        started = time.perf_counter()
        error = revision.error
        if error is None and revision.config is not None:
            try:
                if len(revision.config.routes) > _THREAD_ABOVE_ROUTES:
                    compiled = await asyncio.to_thread(
                        compile_config, revision.config, revision.revision, self._translator
                    )
                else:
                    compiled = compile_config(revision.config, revision.revision, self._translator)
            except ConfigError as exc:
                error = exc
            else:
                self.cache.update(compiled.resources, revision.revision)
                self.state = ConfigState(applied=revision.revision, applied_at=time.time())
                now = time.perf_counter()
                log.info(
                    "applied revision %s: %d listeners, %d routes, %d upstreams (compile %.1f ms, read to applied %.1f ms)",  # noqa: E501
                    revision.revision,
                    len(compiled.ir.listeners),
                    sum(len(x.routes) for x in compiled.ir.listeners),
                    len(compiled.ir.upstreams),
                    (now - started) * 1000,
                    (now - (revision.seen_at or started)) * 1000,
                )
                return
        if error is None:
            return
        self.state.rejected, self.state.rejected_at = revision.revision, time.time()
        self.state.issues = [str(issue) for issue in error.issues]
        log.error(
            "rejected revision %s; still serving %s\n%s",
            revision.revision or "(unreadable)",
            self.state.applied or "nothing",
            error,
        )

    def report(self) -> dict[str, Any]:
        return {"config": self.state.to_dict(), **self.cache.status.report(self.cache.snapshot)}


@dataclass(frozen=True)
class Bound:
    """The addresses the control plane actually bound (ports may have been 0)."""

    xds: tuple[str, int]
    status: tuple[str, int]


async def start_xds(cache: SnapshotCache, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
        ]
    )
    add_to_server(server, cache)
    bound = server.add_insecure_port(f"{host}:{port}")
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
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # aiohttp has no public getter for the bound port; the runner's addresses hold it.
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port


async def run_controlplane(
    config_path: str | Path,
    *,
    xds: tuple[str, int] = ("127.0.0.1", 18000),
    status: tuple[str, int] = ("127.0.0.1", 18080),
    on_ready: Callable[[Bound], None] | None = None,
    stop: asyncio.Event | None = None,
    plane: ControlPlane | None = None,
) -> None:
    """Serve until `stop` is set or the task is cancelled; shut down gracefully."""
    plane = plane or ControlPlane()
    stop = stop or asyncio.Event()
    source = FileSource(config_path, plane.on_revision)
    await source.load()
    server, xds_port = await start_xds(plane.cache, *xds)
    runner, status_port = await start_status(plane, *status)
    if on_ready is not None:
        on_ready(Bound(xds=(xds[0], xds_port), status=(status[0], status_port)))
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(source.run(stop))
            await stop.wait()
    finally:
        await server.stop(grace=1.0)
        await runner.cleanup()
