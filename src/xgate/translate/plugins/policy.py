"""The policy plugin in Envoy: the ext_authz filter asking `xgate authz`, the route's policy as a context extension;
a policy the control plane lowered (a declarative rule) is Envoy's RBAC filter instead (policy_rbac.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from envoy.config.core.v3 import config_source_pb2 as config_source_v3
from envoy.config.core.v3 import grpc_service_pb2 as grpc_service_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as ext_authz_v3
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.type.v3 import http_status_pb2 as http_status_v3
from google.protobuf.message import Message

from xgate.config.schema import Route
from xgate.plugins.jwt import AUTHZ_FILTER, JWT_FILTER, PROVIDER_KEY
from xgate.plugins.policy import POLICY_KEY, ROUTE_KEY, PolicySettings, PolicySpec, policy_resources
from xgate.translate.plugins.base import PluginTranslator
from xgate.translate.plugins.policy_http import HTTP_AUTHZ_FILTER, enabled, http_cluster, http_filter
from xgate.translate.plugins.policy_rbac import RBAC_FILTER, deny_mapper, per_route, rbac_filter, route_metadata
from xgate.translate.plugins.services import service_cluster
from xgate.translate.protos import duration, pack

SERVICE_CLUSTER = "xgate-authz"
_BUILT_IN = PolicySettings()
_AUTHZ_OFF = pack(ext_authz_v3.ExtAuthzPerRoute(disabled=True))  # only ever copied from, never changed


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
        filters = [hcm_v3.HttpFilter(name=AUTHZ_FILTER, typed_config=pack(config))]
        if settings.transport == "http" and settings.in_python:
            filters.append(http_filter(settings))
        if settings.lowered:
            # After ext_authz: a token verified in Python has its claims in metadata by then.
            filters.append(rbac_filter())
            for name, rule in sorted(settings.lowered.items()):
                manager.local_reply_config.mappers.append(deny_mapper(name, rule))
        return filters

    def route(
        self, settings: PolicySettings | None, route: Route, proto: route_components_v3.Route
    ) -> Sequence[route_components_v3.Route]:
        """The route's check names its policy; a check the jwt plugin already put there (a token verified in
        Python) is extended, so one call verifies and runs the policy. Without a policy the check is off, unless
        the jwt plugin needs it."""
        shared = proto.typed_per_filter_config.get(AUTHZ_FILTER)
        if settings is None or settings.name is None:
            if shared is None:
                proto.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(_AUTHZ_OFF)
            return (proto,)
        rule = settings.rule()
        if rule is not None:
            # Lowered: Envoy decides; ext_authz stays on only for a token the jwt plugin verifies in Python.
            if shared is None:
                proto.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(_AUTHZ_OFF)
            proto.typed_per_filter_config[RBAC_FILTER].CopyFrom(pack(per_route(rule, _payload_namespace(proto))))
            proto.metadata.MergeFrom(route_metadata(settings.name))
            return (proto,)
        if settings.transport == "http" and shared is None:
            # Plain HTTP to the lean server; the gRPC check stays for a token xgate authz verifies (one call).
            proto.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(_AUTHZ_OFF)
            proto.typed_per_filter_config[HTTP_AUTHZ_FILTER].CopyFrom(pack(enabled()))
            proto.metadata.MergeFrom(route_metadata(settings.name))
            return (proto,)
        check = ext_authz_v3.ExtAuthzPerRoute()
        if shared is not None:
            shared.Unpack(check)
        check.check_settings.context_extensions.update({POLICY_KEY: settings.name, ROUTE_KEY: proto.name})
        proto.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(pack(check))
        return (proto,)

    def resources(self, defaults: PolicySettings | None) -> list[Message]:
        # Few streams per connection, so several authz processes on one port (SO_REUSEPORT) share the load.
        settings = defaults or _BUILT_IN
        cluster = service_cluster(SERVICE_CLUSTER, settings.service, max_streams=4)
        if settings.transport == "http" and settings.in_python:
            return [cluster, http_cluster(settings.http_service), *policy_resources(defaults)]
        return [cluster, *policy_resources(defaults)]


def _payload_namespace(proto: route_components_v3.Route) -> str | None:
    """Where the route's verified JWT payload will be, from what the jwt plugin (translated before this one)
    made of the route: a provider `xgate authz` verifies puts it in ext_authz's namespace, jwt_authn in its own;
    None: the route has no token to read claims from."""
    check = proto.typed_per_filter_config.get(AUTHZ_FILTER)
    if check is not None:
        settings = ext_authz_v3.ExtAuthzPerRoute()
        check.Unpack(settings)
        if PROVIDER_KEY in settings.check_settings.context_extensions:
            return AUTHZ_FILTER
    native = proto.typed_per_filter_config.get(JWT_FILTER)
    if native is not None:
        requirement = jwt_v3.PerRouteConfig()
        native.Unpack(requirement)
        if requirement.requirement_name:
            return JWT_FILTER
    return None
