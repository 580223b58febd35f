"""The rate-limit service's side of the one config: the limit table the routes' global limits make, and
the loop that keeps the running service's table in step with the config source (file and/or etcd)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from xgate.config.load import ConfigSet
from xgate.errors import ConfigError
from xgate.ir import GatewayIR, build_ir
from xgate.metricsapi import counters, serve_metrics
from xgate.ratelimit.limits import Entries, Limit, LimitTable
from xgate.ratelimit.service import FailureMode, RateLimitServer, serve
from xgate.sources.etcd.client import EtcdSettings
from xgate.sources.etcd.layout import DEFAULT_PREFIX
from xgate.sources.follow import Merged, follow
from xgate.sources.revision import Revision
from xgate.translate.plugins.rate_limit import DOMAIN, ROUTE_KEY, RateLimitSettings, descriptor_key

log = logging.getLogger("xgate.ratelimit")


def limit_table(ir: GatewayIR) -> LimitTable:
    """One limit per route with a global limit, keyed the way the route's actions describe requests."""
    limits: dict[tuple[str, Entries], Limit] = {}
    for listener in ir.listeners:
        for route in listener.routes:
            settings = route.plugins.get("rate_limit")
            if not isinstance(settings, RateLimitSettings) or settings.shared is None:
                continue
            shared = settings.shared
            entries: Entries = ((ROUTE_KEY, route.name),)
            if shared.by != "route":
                entries += ((descriptor_key(shared.by), None),)
            limits[(DOMAIN, entries)] = Limit(
                requests=shared.requests,
                unit_seconds=shared.per,
                algorithm=shared.algorithm,
                burst=shared.burst,
                shadow=shared.shadow,
                name=route.name,
            )
    return LimitTable(limits)


class LimitFeed:
    """Swaps the service's table for the merged config's limits; an invalid revision changes nothing."""

    def __init__(self, server: RateLimitServer) -> None:
        self.server = server
        self.revision: str | None = None
        self.on_revision = Merged(self._load).on_revision

    async def _load(self, config: ConfigSet, revision: Revision, lenient: bool) -> bool:
        try:
            ir = build_ir(config, revision.revision, lenient=lenient)
        except ConfigError as exc:
            log.error("limits not updated: revision %s is invalid\n%s", revision.revision, exc)
            return False
        table = limit_table(ir)
        self.server.service.set_limits(table)
        self.revision = revision.revision
        log.info("limits of revision %s: %d global limits", revision.revision, len(table.limits))
        return True


async def run_ratelimit(
    config_path: str | Path | None,
    *,
    etcd: EtcdSettings | None = None,
    prefix: str = DEFAULT_PREFIX,
    listen: tuple[str, int] = ("127.0.0.1", 18003),
    redis_url: str | None = None,
    failure_mode: FailureMode = "open",
    timeout: float = 0.05,
    status: tuple[str, int] | None = None,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve envoy.service.ratelimit.v3 with the limits of the config, following its changes, until `stop`.
    With `status`, GET /metrics there answers the per-limit counters (allowed, limited, near_limit,
    shadow_limited, errors) and the config revision the limits come from."""
    stop = stop or asyncio.Event()
    server, port = await serve(
        LimitTable(),
        host=listen[0],
        port=listen[1],
        redis_url=redis_url,
        failure_mode=failure_mode,
        timeout=timeout,
        reuse_port=reuse_port,
    )
    feed = LimitFeed(server)
    runner: web.AppRunner | None = None
    if status is not None:
        runner = await serve_metrics(
            *status,
            lambda: {"revision": feed.revision, "limits": feed.server.service.metrics()},
            lambda: [
                counters(
                    "xgate_ratelimit_decisions",
                    "Descriptors decided, per limit and outcome",
                    ("limit", "outcome"),
                    feed.server.service.metrics(),
                )
            ],
        )
    try:
        started = (lambda: on_ready(port)) if on_ready is not None else None
        await follow(config_path, etcd, prefix, feed.on_revision, stop, started=started)
    finally:
        await server.stop(1.0)
        if runner is not None:
            await runner.cleanup()
