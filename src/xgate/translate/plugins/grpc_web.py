"""The grpc_web plugin: Envoy's gRPC-Web filter on the listener, switched per route; CORS for browsers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2 as grpc_web_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)

from xgate.config.schema import Route
from xgate.plugins.cors import CorsSettings
from xgate.plugins.grpc_web import REQUEST_HEADERS, RESPONSE_HEADERS, GrpcWebSettings, GrpcWebSpec
from xgate.translate.plugins.base import PluginTranslator
from xgate.translate.plugins.cors import FILTER as CORS_FILTER
from xgate.translate.plugins.cors import cors_policy
from xgate.translate.protos import pack

FILTER = "envoy.filters.http.grpc_web"


class GrpcWebTranslator(PluginTranslator[GrpcWebSettings]):
    spec: ClassVar[GrpcWebSpec] = GrpcWebSpec()

    def http_filters(
        self, defaults: GrpcWebSettings | None, manager: hcm_v3.HttpConnectionManager
    ) -> list[hcm_v3.HttpFilter]:
        return [hcm_v3.HttpFilter(name=FILTER, typed_config=pack(grpc_web_v3.GrpcWeb()))]

    def route(
        self, settings: GrpcWebSettings | None, route: Route, proto: route_components_v3.Route
    ) -> Sequence[route_components_v3.Route]:
        if settings is None:
            proto.typed_per_filter_config[FILTER].CopyFrom(pack(route_components_v3.FilterConfig(disabled=True)))
            return (proto,)
        if settings.allow_origins:
            # Runs after the cors plugin (filter order), so this policy is the route's.
            cors = CorsSettings(
                allow_origins=settings.allow_origins,
                allow_methods=("POST", "OPTIONS"),
                allow_headers=REQUEST_HEADERS,
                expose_headers=RESPONSE_HEADERS,
                max_age=settings.max_age,
            )
            proto.typed_per_filter_config[CORS_FILTER].CopyFrom(pack(cors_policy(cors)))
        return (proto,)
