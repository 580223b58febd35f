"""The dyeing plugin: give each request a release stage (canary, beta, stable...) and route by it.

Rules live in the global or listener defaults, first match wins, the `default` stage when none matches. The
stage goes to the upstream in a header (`x-xgate-stage`) and as a W3C `baggage` member, and a route's
`canary` entries send a stage to another upstream.

Two ways to run the rules, with the same answers (tests hold both to that):
- native: rules on headers, cookies and query parameters become route matches (see dyeing_routes): no
  filter, no Python per request.
- ext_proc: rules Envoy cannot express (source ranges, JWT claims, sticky percentages, trust by source)
  run in `xgate dyeing`, Envoy's ext_proc service. It sees only the request headers, sets the stage
  and clears the route cache, and the route's entries match on the stage header.

A stage sent by the client is removed before routing unless the client is trusted (`trust`).
"""

from __future__ import annotations

import re
from typing import ClassVar

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
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

from xgate.config.schema import Model, Route
from xgate.translate.plugins.base import Plugin, pack
from xgate.translate.plugins.dyeing_routes import expand, native_problems
from xgate.translate.plugins.dyeing_settings import (
    EXT_PROC_FILTER,
    SETTINGS_METADATA,
    SOURCE_ATTRIBUTE,
    DyeingSettings,
    settings_key,
)
from xgate.translate.plugins.jwt import PAYLOAD_NAMESPACES
from xgate.translate.plugins.services import service_cluster
from xgate.translate.protos import duration

SERVICE_CLUSTER = "xgate-dyeing"


_BUILT_IN = DyeingSettings()


class DyeingPlugin(Plugin):
    name: ClassVar[str] = "dyeing"
    filter_name: ClassVar[str] = EXT_PROC_FILTER
    settings: ClassVar[type[Model]] = DyeingSettings

    def http_filter(self) -> hcm_v3.HttpFilter:
        raise NotImplementedError("dyeing's filter depends on its settings: see http_filters")

    def http_filters(self, defaults: Model | None) -> list[hcm_v3.HttpFilter]:
        settings = defaults if isinstance(defaults, DyeingSettings) else _BUILT_IN
        if not settings.uses_service:
            return []
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
        return [hcm_v3.HttpFilter(name=self.filter_name, typed_config=pack(config))]

    def patch_connection_manager(self, defaults: Model | None, manager: hcm_v3.HttpConnectionManager) -> None:
        """Remove the stage header a client sent before anything routes on it, unless every client is trusted
        (trusted source ranges are decided by the service, which sees the address)."""
        settings = defaults if isinstance(defaults, DyeingSettings) else _BUILT_IN
        if settings.trust != "none":
            return
        mutation = early_mutation_v3.HeaderMutation(
            mutations=[mutation_rules_v3.HeaderMutation(remove=settings.header)]
        )
        manager.early_header_mutation_extensions.append(
            extension_v3.TypedExtensionConfig(name="xgate.dyeing.untrusted-stage", typed_config=pack(mutation))
        )

    def route_config(self, settings: Model) -> Message:
        raise NotImplementedError("dyeing has no per-route config when on: see route_configs")

    def route_configs(self, settings: Model) -> dict[str, Message]:
        assert isinstance(settings, DyeingSettings)
        if not settings.uses_service:
            return {}
        # The rules travel by key with each route (RDS), so changing a rule never changes the listener.
        key = base_v3.HeaderValue(key=SETTINGS_METADATA, value=settings_key(settings))
        return {
            self.filter_name: ext_proc_v3.ExtProcPerRoute(
                overrides=ext_proc_v3.ExtProcOverrides(grpc_initial_metadata=[key])
            )
        }

    def disabled_route_configs(self) -> dict[str, Message]:
        return {self.filter_name: ext_proc_v3.ExtProcPerRoute(disabled=True)}

    def check(self, settings: Model, defaults: Model | None, inherited: bool) -> list[str]:
        if not inherited:
            return ["dyeing is set up in the global or listener plugin defaults; a route can only switch it off"]
        return []

    def check_route(self, settings: Model, route: Route) -> list[str]:
        assert isinstance(settings, DyeingSettings)
        return native_problems(settings, route)

    def expand_route(
        self, settings: Model, route: Route, proto: route_components_v3.Route
    ) -> list[route_components_v3.Route]:
        assert isinstance(settings, DyeingSettings)
        return expand(settings, route, proto)

    def clusters(self, defaults: Model | None) -> list[cluster_v3.Cluster]:
        settings = defaults if isinstance(defaults, DyeingSettings) else _BUILT_IN
        if not settings.uses_service:
            return []
        # One stream per request and few per connection, so several `xgate dyeing` processes on one port
        # (SO_REUSEPORT) share the load over Envoy's connections.
        return [service_cluster(SERVICE_CLUSTER, settings.service, max_streams=8)]
