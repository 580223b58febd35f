"""The policy plugin: a Python auth policy runs for the route, in xgate's ext_authz service (`xgate authz`).

Policies are named in the global defaults (`policies: {name: "package.module:callable"}`, loaded by the
service from the same config) and a route names the one it runs. Envoy's ext_authz filter asks the service
with the route and policy names as context extensions and jwt_authn's verified payload as metadata, so a
policy sees the claims without verifying the token again. Fail closed by default.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import config_source_pb2 as config_source_v3
from envoy.config.core.v3 import grpc_service_pb2 as grpc_service_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as ext_authz_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.type.v3 import http_status_pb2 as http_status_v3
from google.protobuf.message import Message
from pydantic import Field, field_validator

from xgate.config.schema import Model
from xgate.config.types import Duration, Name
from xgate.translate.plugins.base import Plugin, pack
from xgate.translate.plugins.jwt import JWT_FILTER
from xgate.translate.plugins.services import service_cluster
from xgate.translate.protos import duration

SERVICE_CLUSTER = "xgate-authz"
DEFAULT_SERVICE = "127.0.0.1:18001"
POLICY_KEY = "xgate_policy"
ROUTE_KEY = "xgate_route"
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class PolicySettings(Model):
    """Defaults: `policies` (name -> import path), `service`, `timeout`, `failure_mode` (closed: deny with
    `failure_status` when the service cannot answer). A route: `name`, the policy it runs."""

    policies: dict[Name, str] = Field(default_factory=dict)
    name: Name | None = None
    service: str = Field(default=DEFAULT_SERVICE, pattern=r"^[^:\s]+:\d{1,5}$")
    timeout: Duration = 0.2
    failure_mode: Literal["open", "closed"] = "closed"
    failure_status: Literal[403, 503] = 403

    @field_validator("policies")
    @classmethod
    def _paths(cls, policies: dict[str, str]) -> dict[str, str]:
        for name, path in policies.items():
            if not _IMPORT_PATH.match(path):
                raise ValueError(f"policy {name}: {path!r} is not an import path like 'package.module:callable'")
        return policies


_BUILT_IN = PolicySettings()


class PolicyPlugin(Plugin):
    name: ClassVar[str] = "policy"
    filter_name: ClassVar[str] = "envoy.filters.http.ext_authz"
    settings: ClassVar[type[Model]] = PolicySettings

    def http_filter(self) -> hcm_v3.HttpFilter:
        return self.http_filters(None)[0]

    def http_filters(self, defaults: Model | None) -> list[hcm_v3.HttpFilter]:
        settings = defaults if isinstance(defaults, PolicySettings) else _BUILT_IN
        config = ext_authz_v3.ExtAuthz(
            grpc_service=grpc_service_v3.GrpcService(
                envoy_grpc=grpc_service_v3.GrpcService.EnvoyGrpc(cluster_name=SERVICE_CLUSTER),
                timeout=duration(settings.timeout),
            ),
            transport_api_version=config_source_v3.ApiVersion.V3,
            failure_mode_allow=settings.failure_mode == "open",
            status_on_error=http_status_v3.HttpStatus(code=settings.failure_status),
            metadata_context_namespaces=[JWT_FILTER],
        )
        return [hcm_v3.HttpFilter(name=self.filter_name, typed_config=pack(config))]

    def route_config(self, settings: Model) -> Message:
        raise NotImplementedError("policy's per-route config needs the route name: see patch_route")

    def route_configs(self, settings: Model) -> dict[str, Message]:
        return {}

    def disabled_route_config(self) -> Message:
        return ext_authz_v3.ExtAuthzPerRoute(disabled=True)

    def check(self, settings: Model, defaults: Model | None, inherited: bool) -> list[str]:
        assert isinstance(settings, PolicySettings)
        defined = defaults.policies if isinstance(defaults, PolicySettings) else {}
        if settings.policies and not inherited:
            return ["define policies in the global plugin defaults; a route names one with name"]
        if settings.name is None and inherited:
            return []  # the defaults define policies; a route runs one only when it names it
        if settings.name is None:
            return [f"name the policy this route runs (defined: {', '.join(sorted(defined)) or 'none'})"]
        if settings.name not in defined:
            return [f"policy {settings.name!r} is not defined (defined: {', '.join(sorted(defined)) or 'none'})"]
        return []

    def patch_route(self, settings: Model, route: route_components_v3.Route) -> None:
        """The route's check names its policy; a check the jwt plugin already put there (a token verified in
        Python) is extended, so one call verifies and runs the policy."""
        assert isinstance(settings, PolicySettings)
        shared = route.typed_per_filter_config.get(self.filter_name)
        if settings.name is None:
            if shared is None:
                route.typed_per_filter_config[self.filter_name].CopyFrom(pack(self.disabled_route_config()))
            return
        per_route = ext_authz_v3.ExtAuthzPerRoute()
        if shared is not None:
            shared.Unpack(per_route)
        per_route.check_settings.context_extensions.update({POLICY_KEY: settings.name, ROUTE_KEY: route.name})
        route.typed_per_filter_config[self.filter_name].CopyFrom(pack(per_route))

    def clusters(self, defaults: Model | None) -> list[cluster_v3.Cluster]:
        settings = defaults if isinstance(defaults, PolicySettings) else _BUILT_IN
        # Few streams per connection, so several authz processes on one port (SO_REUSEPORT) share the load.
        return [service_cluster(SERVICE_CLUSTER, settings.service, max_streams=4)]
