"""The authz service's side of the one config: the policies named in the `policy` plugin's defaults, loaded
(and reloaded) from the same config source the control plane follows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from xgate.authz.policy import PolicyRegistry
from xgate.authz.service import serve
from xgate.config.load import ConfigSet
from xgate.controlplane import merge_inputs
from xgate.sources.etcd.client import EtcdSettings
from xgate.sources.etcd.layout import DEFAULT_PREFIX
from xgate.sources.follow import follow
from xgate.sources.revision import Revision
from xgate.translate.plugins.policy import PolicySettings

log = logging.getLogger("xgate.authz")


def policy_paths(config: ConfigSet) -> dict[str, str]:
    """name -> import path, from the global `policy` plugin defaults; {} when none (or invalid)."""
    raw = config.plugins.get("policy")
    if not isinstance(raw, dict):
        return {}
    try:
        return dict(PolicySettings.model_validate(raw).policies)
    except ValueError as exc:
        log.error("policy defaults are invalid; keeping the loaded policies: %s", exc)
        return {}


class PolicyFeed:
    """Merges what the sources say and reloads the registry; a policy that fails to load keeps its last good
    version (the registry's rule) and is logged."""

    def __init__(self, registry: PolicyRegistry) -> None:
        self.registry = registry
        self._inputs: dict[str, Revision] = {}

    async def on_revision(self, revision: Revision, source: str = "file") -> None:
        if revision.config is None:
            return
        self._inputs = {**self._inputs, source: revision}
        config, _ = merge_inputs(self._inputs)
        paths = policy_paths(config)
        failures = await asyncio.to_thread(self.registry.load, paths)  # imports run user code: off the loop
        for name, error in failures.items():
            log.error("policy %s not (re)loaded: %s", name, error)
        log.info("policies of revision %s: %s", revision.revision, ", ".join(sorted(paths)) or "none")


async def run_authz(
    config_path: str | Path | None,
    *,
    etcd: EtcdSettings | None = None,
    prefix: str = DEFAULT_PREFIX,
    listen: tuple[str, int] = ("127.0.0.1", 18001),
    timeout: float = 0.1,
    fail_open: bool = False,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve envoy.service.auth.v3 with the config's policies, following its changes, until `stop`."""
    stop = stop or asyncio.Event()
    registry = PolicyRegistry()
    server, port = await serve(registry, host=listen[0], port=listen[1], timeout=timeout, fail_open=fail_open)
    feed = PolicyFeed(registry)
    try:
        started = (lambda: on_ready(port)) if on_ready is not None else None
        await follow(config_path, etcd, prefix, feed.on_revision, stop, started=started)
    finally:
        await server.stop(1.0)
