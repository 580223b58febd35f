"""The policy plugin in Envoy: the ext_authz filter asking `xgate authz`, the route's policy as a context extension."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from envoy.config.core.v3 import config_source_pb2 as config_source_v3
from envoy.config.core.v3 import grpc_service_pb2 as grpc_service_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as ext_authz_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.type.v3 import http_status_pb2 as http_status_v3
from google.protobuf.message import Message

from xgate.config.schema import Route
from xgate.plugins.jwt import AUTHZ_FILTER, JWT_FILTER
from xgate.plugins.policy import POLICY_KEY, ROUTE_KEY, PolicySettings, PolicySpec, policy_resources
from xgate.translate.plugins.base import PluginTranslator
from xgate.translate.plugins.services import service_cluster
from xgate.translate.protos import duration, pack

SERVICE_CLUSTER = "xgate-authz"
_BUILT_IN = PolicySettings()


class PolicyTranslator(PluginTranslator[PolicySettings]):
    spec: ClassVar[PolicySpec] = PolicySpec()

    def http_filters(
        self, defaults: PolicySettings | None, manager: hcm_v3.HttpConnectionManager
    ) -> list[hcm_v3.HttpFilter]:
        settings = defaults or _BUILT_IN
        config = ext_authz_v3.ExtAuthz(
            grpc_service=grpc_service_v3.GrpcService(
                envoy_grpc=grpc_service_v3.GrpcService.EnvoyGrpc(cluster_name=SERVICE_CLUSTER),
                timeout=duration(settings.timeout),
            ),
            transport_api_version=config_source_v3.ApiVersion.V3,
            failure_mode_allow=settings.failure_mode == "open",
            status_on_error=http_status_v3.HttpStatus(code=settings.failure_status),
            metadata_context_namespaces=[JWT_FILTER],
            # A repeated header's values apart, as jwt_authn sees them (xgate.authz.extract: every token counts).
            encode_raw_headers=True,
        )
        return [hcm_v3.HttpFilter(name=AUTHZ_FILTER, typed_config=pack(config))]

    def route(
        self, settings: PolicySettings | None, route: Route, proto: route_components_v3.Route
    ) -> Sequence[route_components_v3.Route]:
        """The route's check names its policy; a check the jwt plugin already put there (a token verified in
        Python) is extended, so one call verifies and runs the policy. Without a policy the check is off, unless
        the jwt plugin needs it."""
        shared = proto.typed_per_filter_config.get(AUTHZ_FILTER)
        if settings is None or settings.name is None:
            if shared is None:
                disabled = ext_authz_v3.ExtAuthzPerRoute(disabled=True)
                proto.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(pack(disabled))
            return (proto,)
        per_route = ext_authz_v3.ExtAuthzPerRoute()
        if shared is not None:
            shared.Unpack(per_route)
        per_route.check_settings.context_extensions.update({POLICY_KEY: settings.name, ROUTE_KEY: proto.name})
        proto.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(pack(per_route))
        return (proto,)

    def resources(self, defaults: PolicySettings | None) -> list[Message]:
        # Few streams per connection, so several authz processes on one port (SO_REUSEPORT) share the load.
        cluster = service_cluster(SERVICE_CLUSTER, (defaults or _BUILT_IN).service, max_streams=4)
        return [cluster, *policy_resources(defaults)]
