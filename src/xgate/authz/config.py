"""`xgate authz` as a service of the skeleton: configured by the control plane with the policies and the
Python-verified JWT providers (xgate.api Policy and JwtProvider resources)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from xgate.api import JWT_PROVIDER, POLICY, authz_pb2
from xgate.authz.http import CheckProtocol, HttpChecks
from xgate.authz.policy import PolicyRegistry
from xgate.authz.service import AuthzServer, serve
from xgate.authz.tokens import JwtProviders
from xgate.heap import DeferredFreeze
from xgate.listen import check_free
from xgate.metricsapi import counters
from xgate.plugins.jwt import Provider, provider_from_resource
from xgate.service import Ready, ServiceOptions, run_service
from xgate.xdsclient import Subscription

log = logging.getLogger("xgate.authz")


class AuthzService:
    """Checks with the policies and providers the control plane sends; a policy that does not import, or a
    provider whose keys cannot be read here, refuses the whole update (NACK) and the previous set keeps serving."""

    name: ClassVar[str] = "authz"

    def __init__(self, *, timeout: float = 0.1, fail_open: bool = False, http: tuple[str, int] | None = None) -> None:
        self.registry = PolicyRegistry()
        self.providers = JwtProviders()
        self._timeout, self._fail_open = timeout, fail_open
        self._http = http
        self.server: AuthzServer | None = None
        self.http_server: asyncio.Server | None = None
        # After each load, the heap (modules, policies, keys) leaves the cyclic collector's reach: its full passes
        # over it paused every check in flight for 30-45 ms under load.
        self._freeze = DeferredFreeze(2.0)

    async def start(self, host: str, port: int, reuse_port: bool) -> int:
        self.server, bound = await serve(
            self.registry,
            host=host,
            port=port,
            reuse_port=reuse_port,
            timeout=self._timeout,
            fail_open=self._fail_open,
            providers=self.providers,
        )
        if self._http is not None:
            service = self.server.service
            checks = HttpChecks(self.registry.get, service.runner, service.count, service.closed_answer)
            host, port = self._http
            check_free(host, port, "authz HTTP checks, --http-listen")
            self.http_server = await asyncio.get_running_loop().create_server(lambda: CheckProtocol(checks), host, port)
            log.info(
                "HTTP checks (policy transport: http) on %s:%d", host, self.http_server.sockets[0].getsockname()[1]
            )
        return bound

    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription(POLICY, authz_pb2.Policy, self.apply_policies),
            Subscription(JWT_PROVIDER, authz_pb2.JwtProvider, self.apply_providers),
        ]

    async def apply_policies(self, resources: Mapping[str, authz_pb2.Policy]) -> None:
        paths = {name: resource.import_path for name, resource in resources.items()}
        # Imports run user code: off the event loop, which serves async policies and JWKS fetches.
        errors = await asyncio.to_thread(self.registry.load, paths, strict=True)
        if errors:
            raise ValueError("; ".join(f"policy {name}: {error.reason}" for name, error in sorted(errors.items())))
        log.info("policies: %s", ", ".join(sorted(paths)) or "none")
        self._freeze.soon()

    async def apply_providers(self, resources: Mapping[str, authz_pb2.JwtProvider]) -> None:
        providers: dict[str, Provider] = {}
        problems: list[str] = []
        for name, resource in resources.items():
            try:
                providers[name] = await asyncio.to_thread(provider_from_resource, resource)  # reads jwks files
            except ValueError as exc:
                problems.append(f"jwt provider {name}: {_first_line(exc)}")
        if problems:
            raise ValueError("; ".join(problems))
        await self.providers.load(providers, strict=True)
        log.info("jwt providers verified here: %s", ", ".join(sorted(providers)) or "none")
        self._freeze.soon()

    def metrics(self) -> dict[str, Any]:
        service = self._service()
        return {
            "checks": service.metrics() if service else {},
            "policies": sorted(self.registry.policies),
            "not_loaded": {name: str(error) for name, error in self.registry.errors.items()},
            "jwks": self.providers.health(),
        }

    def families(self) -> Iterable[Metric]:
        service = self._service()
        yield counters(
            "xgate_authz_checks",
            "Checks answered, per policy (jwt:<provider> for tokens verified here) and outcome",
            ("policy", "outcome"),
            service.metrics() if service else {},
        )
        yield GaugeMetricFamily("xgate_authz_policies", "Policies loaded", value=len(self.registry.policies))
        failed = GaugeMetricFamily(
            "xgate_authz_policy_not_loaded",
            "1 for a policy of the last update that failed to load (the update was refused)",
            labels=["policy"],
        )
        for name in self.registry.errors:
            failed.add_metric([name], 1)
        yield failed
        yield from jwks_families(self.providers.health())

    async def stop(self, grace: float) -> None:
        if self.http_server is not None:
            self.http_server.close()
        if self.server is not None:
            await self.server.stop(grace)

    def _service(self) -> Any:
        return self.server.service if self.server is not None else None


def jwks_families(providers: list[dict[str, Any]]) -> Iterable[Metric]:
    """Per provider verified here: keys held, JWKS fetches by outcome, the last good fetch."""
    keys = GaugeMetricFamily("xgate_authz_jwks_keys", "Keys held per jwt provider", labels=["provider"])
    fetches = CounterMetricFamily(
        "xgate_authz_jwks_fetches", "JWKS fetches per provider and outcome", labels=["provider", "outcome"]
    )
    last = GaugeMetricFamily(
        "xgate_authz_jwks_last_success_timestamp_seconds", "The provider's last good JWKS fetch", labels=["provider"]
    )
    for provider in providers:
        name = provider["provider"]
        keys.add_metric([name], provider["keys"])
        if "fetch_success" in provider:
            fetches.add_metric([name, "success"], provider["fetch_success"])
            fetches.add_metric([name, "failed"], provider["fetch_failed"])
        if provider.get("last_success"):
            last.add_metric([name], provider["last_success"])
    return (keys, fetches, last)


def _first_line(error: Exception) -> str:
    """A pydantic error's first issue in one line (the others are the same object seen another way)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(error).__name__


async def run_authz(
    options: ServiceOptions,
    *,
    timeout: float = 0.1,
    fail_open: bool = False,
    http: tuple[str, int] | None = None,
    on_ready: Callable[[Ready], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve envoy.service.auth.v3 with what the control plane at `options.xds` sends, until `stop`. With
    `options.status`, GET /metrics there answers the checks per policy (and per jwt provider, as
    "jwt:<name>") and outcome (allowed, denied, errors, timeouts), and the config feed's state. With `http`, it
    also answers Envoy's HTTP checks there (the policy plugin's `transport: http`, see http.py)."""
    if http is not None:  # the service starts serving with its first config: a taken port must fail before it
        check_free(*http, "authz HTTP checks, --http-listen")
    service = AuthzService(timeout=timeout, fail_open=fail_open, http=http)
    await run_service(service, options, on_ready=on_ready, stop=stop)
