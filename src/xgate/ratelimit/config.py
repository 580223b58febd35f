"""`xgate ratelimit` as a service of the skeleton: configured by the control plane with the routes' global
limits (xgate.api RateLimit resources), which it swaps in as one table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from xgate.api import RATE_LIMIT, ratelimit_pb2, seconds
from xgate.heap import DeferredFreeze
from xgate.metricsapi import counters
from xgate.ratelimit.limits import Entries, Limit, LimitTable, Pattern
from xgate.ratelimit.service import FailureMode, RateLimitServer, serve
from xgate.service import Ready, ServiceOptions, run_service
from xgate.xdsclient import Subscription

log = logging.getLogger("xgate.ratelimit")


def limit_table(resources: Iterable[ratelimit_pb2.RateLimit]) -> LimitTable:
    """One limit per resource, keyed the way the route's actions describe its requests (raises ValueError
    for a resource that makes no valid limit)."""
    limits: dict[Pattern, Limit] = {}
    # Each read of a message's string makes a new one: the domain, the keys and the route's name (also its
    # entry's value) would be held once per limit. One copy of each: a fifth of the table at 50,000 routes.
    strings: dict[str, str] = {}
    for resource in resources:
        entries: Entries = tuple(
            (strings.setdefault(entry.key, entry.key), strings.setdefault(entry.value, entry.value) or None)
            for entry in resource.entries
        )
        limits[(strings.setdefault(resource.domain, resource.domain), entries)] = Limit(
            requests=resource.requests,
            unit_seconds=seconds(resource.per),
            algorithm="gcra" if resource.algorithm == ratelimit_pb2.RateLimit.GCRA else "token_bucket",
            burst=resource.burst,
            shadow=resource.shadow,
            name=strings.setdefault(resource.name, resource.name),
        )
    return LimitTable(limits)


class RateLimitService:
    """Decides with the limits the control plane sends; counters in memory or Redis."""

    name: ClassVar[str] = "ratelimit"

    def __init__(self, *, redis_url: str | None = None, failure_mode: FailureMode = "open", timeout: float = 0.05):
        self.redis_url, self.failure_mode, self.timeout = redis_url, failure_mode, timeout
        self.server: RateLimitServer | None = None
        self._table = LimitTable()  # applied before the server starts (it starts with its first config)
        # After each load: what decoding and building the table dropped goes back to the system (at 50,000
        # limits the response and its decoded resources left about 18 MB in the RSS), and the table (a Limit
        # per route) leaves the cyclic collector's reach, whose full passes would walk it again and again.
        self._freeze = DeferredFreeze(2.0)

    async def start(self, host: str, port: int, reuse_port: bool) -> int:
        self.server, bound = await serve(
            self._table,
            host=host,
            port=port,
            reuse_port=reuse_port,
            redis_url=self.redis_url,
            failure_mode=self.failure_mode,
            timeout=self.timeout,
        )
        return bound

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(RATE_LIMIT, ratelimit_pb2.RateLimit, self.apply)]

    async def apply(self, resources: Mapping[str, ratelimit_pb2.RateLimit]) -> None:
        table = self._table = limit_table(resources.values())
        if self.server is not None:
            self.server.service.set_limits(table)
        log.info("%d global limits", len(table))
        self._freeze.soon()

    def metrics(self) -> dict[str, Any]:
        return {"limits": self.server.service.metrics() if self.server else {}}

    def families(self) -> Iterable[Metric]:
        yield counters(
            "xgate_ratelimit_decisions",
            "Descriptors decided, per limit and outcome",
            ("limit", "outcome"),
            self.server.service.metrics() if self.server else {},
        )
        size = len(self._table)
        yield GaugeMetricFamily("xgate_ratelimit_limits", "Global limits held", value=size)

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)


async def run_ratelimit(
    options: ServiceOptions,
    *,
    redis_url: str | None = None,
    failure_mode: FailureMode = "open",
    timeout: float = 0.05,
    on_ready: Callable[[Ready], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve envoy.service.ratelimit.v3 with the limits the control plane at `options.xds` sends, until `stop`.
    With `options.status`, GET /metrics there answers the per-limit counters (allowed, limited, near_limit,
    shadow_limited, errors) and the config feed's state."""
    service = RateLimitService(redis_url=redis_url, failure_mode=failure_mode, timeout=timeout)
    await run_service(service, options, on_ready=on_ready, stop=stop)
