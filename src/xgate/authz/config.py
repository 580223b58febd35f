"""The authz service's side of the one config: the policies named in the `policy` plugin's defaults and the jwt
providers that verify in Python, loaded (and reloaded) from the same config source the control plane follows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from xgate.authz.policy import PolicyRegistry
from xgate.authz.service import AuthorizationService, serve
from xgate.authz.tokens import JwtProviders
from xgate.config.load import ConfigSet
from xgate.metricsapi import counters, serve_metrics
from xgate.sources.etcd.client import EtcdSettings
from xgate.sources.etcd.layout import DEFAULT_PREFIX
from xgate.sources.follow import Merged, follow
from xgate.sources.revision import Revision
from xgate.translate.plugins.jwt import JwtSettings, Provider
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


def python_providers(config: ConfigSet) -> dict[str, Provider]:
    """The `verify: python` jwt providers of the global and listener defaults, by name. Invalid defaults are
    skipped (the control plane reports them and routes cannot use them); a name defined twice differently
    keeps its first definition, global before listeners, and is logged."""
    found: dict[str, Provider] = {}
    places = [("plugins", config.plugins.get("jwt"))]
    places += [(f"listener {listener.name}", listener.plugins.get("jwt")) for listener in config.listeners]
    for where, raw in places:
        if not isinstance(raw, dict):
            continue
        try:
            settings = JwtSettings.model_validate(raw)
        except ValueError as exc:
            log.error("jwt defaults of %s are invalid; not loaded: %s", where, exc)
            continue
        for provider in settings.providers:
            if provider.verify != "python":
                continue
            if (known := found.setdefault(provider.name, provider)) != provider:
                log.error("jwt provider %s of %s differs from the one defined before; keeping that", known.name, where)
    return found


class PolicyFeed:
    """Reloads the registry and the jwt providers from the merged config; a policy that fails to load keeps
    its last good version (the registry's rule) and is logged."""

    def __init__(self, registry: PolicyRegistry, providers: JwtProviders | None = None) -> None:
        self.registry = registry
        self.providers = providers or JwtProviders()
        self.on_revision = Merged(self._load).on_revision

    async def _load(self, config: ConfigSet, revision: Revision, lenient: bool) -> bool:
        del lenient
        paths = policy_paths(config)
        await asyncio.to_thread(self.registry.load, paths)  # imports run user code: off the loop; it logs failures
        providers = await asyncio.to_thread(python_providers, config)  # validation reads jwks files
        await self.providers.load(providers)
        log.info("policies of revision %s: %s", revision.revision, ", ".join(sorted(paths)) or "none")
        return True


async def run_authz(
    config_path: str | Path | None,
    *,
    etcd: EtcdSettings | None = None,
    prefix: str = DEFAULT_PREFIX,
    listen: tuple[str, int] = ("127.0.0.1", 18001),
    timeout: float = 0.1,
    fail_open: bool = False,
    status: tuple[str, int] | None = None,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve envoy.service.auth.v3 with the config's policies and Python-verified jwt providers, following its
    changes, until `stop`. With `status`, GET /metrics there answers the checks per policy (and per jwt
    provider, as "jwt:<name>") and outcome (allowed, denied, errors, timeouts), and the policies that failed
    to load with why."""
    stop = stop or asyncio.Event()
    registry = PolicyRegistry()
    providers = JwtProviders()
    server, port = await serve(
        registry,
        host=listen[0],
        port=listen[1],
        timeout=timeout,
        fail_open=fail_open,
        providers=providers,
        reuse_port=reuse_port,
    )
    feed = PolicyFeed(registry, providers)
    runner = None
    try:
        if status is not None:
            runner = await serve_metrics(*status, lambda: _metrics(server.service), lambda: _families(server.service))
        started = (lambda: on_ready(port)) if on_ready is not None else None
        await follow(config_path, etcd, prefix, feed.on_revision, stop, started=started)
    finally:
        if runner is not None:
            await runner.cleanup()
        await server.stop(1.0)


def _metrics(service: AuthorizationService) -> dict[str, Any]:
    errors = service.registry.errors
    return {"checks": service.metrics(), "not_loaded": {name: str(error) for name, error in errors.items()}}


def _families(service: AuthorizationService) -> Iterator[Metric]:
    yield counters(
        "xgate_authz_checks",
        "Checks answered, per policy (jwt:<provider> for tokens verified here) and outcome",
        ("policy", "outcome"),
        service.metrics(),
    )
    failed = GaugeMetricFamily(
        "xgate_authz_policy_not_loaded", "1 for a policy whose current version failed to load", labels=["policy"]
    )
    for name in service.registry.errors:
        failed.add_metric([name], 1)
    yield failed
