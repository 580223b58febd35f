"""The dyeing plugin in Envoy: native rules as route matches, the others through the ext_proc service.

- native: rules on headers, cookies and query parameters become route matches (see dyeing_routes), sticky
  rules a Lua filter marking the requests in their percentage (dyeing_sticky): no Python per request.
- ext_proc: rules Envoy cannot express (source ranges, JWT claims, trust by source) run in `xgate dyeing`,
  Envoy's ext_proc service, with every other rule of the same settings. It sees only the request headers, sets
  the stage and clears the route cache, and the route's entries match on the stage header.

A stage sent by the client is removed before routing unless the client is trusted (`trust`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2 as mutation_rules_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import extension_pb2 as extension_v3
from envoy.config.core.v3 import grpc_service_pb2 as grpc_service_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2 as ext_proc_v3
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as processing_mode_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early_mutation_v3,
)
from envoy.type.matcher.v3 import regex_pb2 as regex_v3
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from xgate.config.schema import Route
from xgate.plugins.dyeing import (
    EXT_PROC_FILTER,
    SETTINGS_METADATA,
    SOURCE_ATTRIBUTE,
    DyeingSettings,
    DyeingSpec,
    settings_key,
    settings_resource,
)
from xgate.plugins.jwt import PAYLOAD_NAMESPACES
from xgate.translate.plugins.base import PluginTranslator
from xgate.translate.plugins.dyeing_routes import expand
from xgate.translate.plugins.dyeing_sticky import STICKY_FILTER, sticky_filter, sticky_off
from xgate.translate.plugins.services import service_cluster
from xgate.translate.protos import duration, pack

SERVICE_CLUSTER = "xgate-dyeing"
_BUILT_IN = DyeingSettings()


class DyeingTranslator(PluginTranslator[DyeingSettings]):
    spec: ClassVar[DyeingSpec] = DyeingSpec()

    def http_filters(
        self, defaults: DyeingSettings | None, manager: hcm_v3.HttpConnectionManager
    ) -> list[hcm_v3.HttpFilter]:
        settings = defaults or _BUILT_IN
        if settings.trust == "none":
            # Remove the stage header a client sent before anything routes on it, unless every client is
            # trusted (trusted source ranges are decided by the service, which sees the address).
            mutation = early_mutation_v3.HeaderMutation(
                mutations=[mutation_rules_v3.HeaderMutation(remove=settings.header)]
            )
            manager.early_header_mutation_extensions.append(
                extension_v3.TypedExtensionConfig(name="xgate.dyeing.untrusted-stage", typed_config=pack(mutation))
            )
        if not settings.uses_service:
            return sticky_filter(settings)
        config = ext_proc_v3.ExternalProcessor(
            grpc_service=grpc_service_v3.GrpcService(
                envoy_grpc=grpc_service_v3.GrpcService.EnvoyGrpc(cluster_name=SERVICE_CLUSTER),
                timeout=duration(settings.timeout),
            ),
            failure_mode_allow=settings.on_error == "pass",
            processing_mode=processing_mode_v3.ProcessingMode(
                request_header_mode=processing_mode_v3.ProcessingMode.SEND,
                response_header_mode=processing_mode_v3.ProcessingMode.SKIP,
                request_body_mode=processing_mode_v3.ProcessingMode.NONE,
                response_body_mode=processing_mode_v3.ProcessingMode.NONE,
                request_trailer_mode=processing_mode_v3.ProcessingMode.SKIP,
                response_trailer_mode=processing_mode_v3.ProcessingMode.SKIP,
            ),
            message_timeout=duration(settings.timeout),
            request_attributes=[SOURCE_ATTRIBUTE],
            metadata_options=ext_proc_v3.MetadataOptions(
                forwarding_namespaces=ext_proc_v3.MetadataOptions.MetadataNamespaces(untyped=list(PAYLOAD_NAMESPACES))
            ),
            # The service may only touch the stage and baggage headers.
            mutation_rules=mutation_rules_v3.HeaderMutationRules(
                allow_expression=regex_v3.RegexMatcher(regex=f"^({re.escape(settings.header)}|baggage)$"),
                disallow_is_error=wrappers_pb2.BoolValue(value=True),
            ),
            route_cache_action=ext_proc_v3.ExternalProcessor.CLEAR,
        )
        return [hcm_v3.HttpFilter(name=EXT_PROC_FILTER, typed_config=pack(config))]

    def route(
        self, settings: DyeingSettings | None, route: Route, proto: route_components_v3.Route
    ) -> Sequence[route_components_v3.Route]:
        if settings is None:
            proto.typed_per_filter_config[EXT_PROC_FILTER].CopyFrom(pack(ext_proc_v3.ExtProcPerRoute(disabled=True)))
            proto.typed_per_filter_config[STICKY_FILTER].CopyFrom(pack(sticky_off()))
            return (proto,)
        if settings.uses_service:
            # The rules travel by key with each route (RDS), so changing a rule never changes the listener.
            key = base_v3.HeaderValue(key=SETTINGS_METADATA, value=settings_key(settings))
            per_route = ext_proc_v3.ExtProcPerRoute(overrides=ext_proc_v3.ExtProcOverrides(grpc_initial_metadata=[key]))
            proto.typed_per_filter_config[EXT_PROC_FILTER].CopyFrom(pack(per_route))
        return expand(settings, route, proto)

    def resources(self, defaults: DyeingSettings | None) -> list[Message]:
        settings = defaults or _BUILT_IN
        if not settings.uses_service:
            return []
        # One stream per request and few per connection, so several `xgate dyeing` processes on one port
        # (SO_REUSEPORT) share the load over Envoy's connections.
        return [service_cluster(SERVICE_CLUSTER, settings.service, max_streams=8), settings_resource(settings)]
