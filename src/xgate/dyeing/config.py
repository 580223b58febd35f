"""`xgate dyeing` as a service of the skeleton: configured by the control plane with each version of the dyeing
settings the routes name (xgate.api DyeingSettings resources, by settings key)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from prometheus_client.metrics_core import Metric

from xgate.api import DYEING_SETTINGS, dyeing_pb2
from xgate.dyeing.rules import Dyer
from xgate.dyeing.service import DyeingServer, DyerRegistry, serve
from xgate.metricsapi import counters
from xgate.plugins.dyeing import settings_from_resource
from xgate.service import Ready, ServiceOptions, run_service
from xgate.xdsclient import Subscription

log = logging.getLogger("xgate.dyeing")


class DyeingService:
    """Dyes with the settings the control plane sends. It sends a version before any route names it and keeps
    it until no Envoy's route does (discovery.rollout), so the registry holds exactly what it is sent."""

    name: ClassVar[str] = "dyeing"

    def __init__(self) -> None:
        self.registry = DyerRegistry()
        self.server: DyeingServer | None = None

    async def start(self, host: str, port: int, reuse_port: bool) -> int:
        self.server = await serve(self.registry, host=host, port=port, reuse_port=reuse_port)
        return self.server.port

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(DYEING_SETTINGS, dyeing_pb2.DyeingSettings, self.apply)]

    async def apply(self, resources: Mapping[str, dyeing_pb2.DyeingSettings]) -> None:
        dyers: dict[str, Dyer] = {}
        problems: list[str] = []
        for key, resource in resources.items():
            if (held := self.registry.get(key)) is not None:
                dyers[key] = held  # a key names one content: what it held is what it would build (12 us a key)
                continue
            try:
                dyers[key] = Dyer(settings_from_resource(resource))
            except ValueError as exc:
                problems.append(f"dyeing settings {key}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        self.registry.replace(dyers)
        log.info("dyeing settings: %s", ", ".join(sorted(dyers)) or "none")

    def metrics(self) -> dict[str, Any]:
        return {"settings": self.registry.keys(), "stages": self.server.service.metrics() if self.server else {}}

    def families(self) -> Iterable[Metric]:
        yield counters(
            "xgate_dyeing_requests",
            'Requests dyed, per stage ("(undyed)": passed on without one)',
            ("stage",),
            self.server.service.metrics() if self.server else {},
        )

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)


async def run_dyeing(
    options: ServiceOptions,
    *,
    on_ready: Callable[[Ready], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve envoy.service.ext_proc.v3 with the dye rules the control plane at `options.xds` sends, until
    `stop`. With `options.status`, GET /metrics there answers the requests dyed per stage, those passed on
    undyed, the settings keys held and the config feed's state."""
    await run_service(DyeingService(), options, on_ready=on_ready, stop=stop)
