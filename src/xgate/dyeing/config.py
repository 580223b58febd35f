"""The dyeing service's side of the one config: every version of the dyeing settings it holds (global and
per listener), followed from the same sources the control plane reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from xgate.config.load import ConfigSet
from xgate.dyeing.rules import Dyer
from xgate.dyeing.service import DyerRegistry, serve
from xgate.metricsapi import counters, serve_metrics
from xgate.sources.etcd.client import EtcdSettings
from xgate.sources.etcd.layout import DEFAULT_PREFIX
from xgate.sources.follow import Merged, follow
from xgate.sources.revision import Revision
from xgate.translate.plugins.dyeing_settings import DyeingSettings, settings_key

log = logging.getLogger("xgate.dyeing")


def dyers(config: ConfigSet) -> dict[str, Dyer]:
    """Key -> Dyer for the global dyeing settings and each listener's (invalid ones are the control plane's
    to report, and are left out here)."""
    found: dict[str, Dyer] = {}
    raw: list[Any] = [config.plugins.get("dyeing")]
    raw += [listener.plugins.get("dyeing") for listener in config.listeners]
    for value in raw:
        if not isinstance(value, dict):
            continue
        try:
            settings = DyeingSettings.model_validate(value)
        except ValidationError:
            continue
        found.setdefault(settings_key(settings), Dyer(settings))
    return found


class DyeingFeed:
    """Replaces the registry's rules with those of the merged config."""

    def __init__(self, registry: DyerRegistry) -> None:
        self.registry = registry
        self.on_revision = Merged(self._load).on_revision

    async def _load(self, config: ConfigSet, revision: Revision, lenient: bool) -> bool:
        del lenient
        self.registry.replace(dyers(config))
        log.info("dyeing settings of revision %s: %s", revision.revision, ", ".join(self.registry.keys()) or "none")
        return True


async def run_dyeing(
    config_path: str | Path | None,
    *,
    etcd: EtcdSettings | None = None,
    prefix: str = DEFAULT_PREFIX,
    listen: tuple[str, int] = ("127.0.0.1", 18002),
    status: tuple[str, int] | None = None,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve envoy.service.ext_proc.v3 with the config's dye rules, following its changes, until `stop`.
    With `status`, GET /metrics there answers the requests dyed per stage, those passed on undyed, and the
    settings keys the service holds."""
    stop = stop or asyncio.Event()
    registry = DyerRegistry()
    server = await serve(registry, host=listen[0], port=listen[1], reuse_port=reuse_port)
    feed = DyeingFeed(registry)
    runner = None
    if status is not None:
        runner = await serve_metrics(
            *status,
            lambda: {"settings": registry.keys(), "stages": server.service.metrics()},
            lambda: [
                counters(
                    "xgate_dyeing_requests",
                    'Requests dyed, per stage ("(undyed)": passed on without one)',
                    ("stage",),
                    server.service.metrics(),
                )
            ],
        )
    try:
        started = (lambda: on_ready(server.port)) if on_ready is not None else None
        await follow(config_path, etcd, prefix, feed.on_revision, stop, started=started)
    finally:
        await server.stop(1.0)
        if runner is not None:
            await runner.cleanup()
