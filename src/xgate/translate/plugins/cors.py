"""The cors plugin: Envoy's own CORS filter, policy per route (no Python runs per request)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.http.cors.v3 import cors_pb2 as cors_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.type.matcher.v3 import regex_pb2 as regex_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3
from google.protobuf import any_pb2, wrappers_pb2

from xgate.config.schema import Route
from xgate.plugins.cors import CorsSettings, CorsSpec
from xgate.translate.plugins.base import PluginTranslator
from xgate.translate.protos import pack

FILTER = "envoy.filters.http.cors"


class CorsTranslator(PluginTranslator[CorsSettings]):
    spec: ClassVar[CorsSpec] = CorsSpec()

    def http_filters(
        self, defaults: CorsSettings | None, manager: hcm_v3.HttpConnectionManager
    ) -> list[hcm_v3.HttpFilter]:
        return [hcm_v3.HttpFilter(name=FILTER, typed_config=pack(cors_v3.Cors()))]

    def route(
        self, settings: CorsSettings | None, route: Route, proto: route_components_v3.Route
    ) -> Sequence[route_components_v3.Route]:
        proto.typed_per_filter_config[FILTER].CopyFrom(_packed(settings))
        return (proto,)


# Packed once per distinct settings: every route of a listener shares a few, and building and packing each
# route's policy anew was a measurable part of translating 50,000 routes. Callers only copy from the result.
@functools.lru_cache(maxsize=256)
def _packed(settings: CorsSettings | None) -> any_pb2.Any:
    return pack(route_components_v3.FilterConfig(disabled=True) if settings is None else cors_policy(settings))


def cors_policy(settings: CorsSettings) -> cors_v3.CorsPolicy:
    matchers = [
        # Envoy refuses an empty prefix, so "any origin" is the regex ".*".
        string_v3.StringMatcher(safe_regex=regex_v3.RegexMatcher(regex=".*"))
        if origin == "*"
        else string_v3.StringMatcher(exact=origin)
        for origin in settings.allow_origins
    ]
    matchers += [
        string_v3.StringMatcher(safe_regex=regex_v3.RegexMatcher(regex=pattern))
        for pattern in settings.allow_origin_regexes
    ]
    policy = cors_v3.CorsPolicy(
        allow_origin_string_match=matchers,
        allow_methods=",".join(settings.allow_methods),
        allow_headers=",".join(settings.allow_headers),
        expose_headers=",".join(settings.expose_headers),
    )
    if settings.max_age is not None:
        policy.max_age = str(int(settings.max_age))
    if settings.allow_credentials:
        policy.allow_credentials.CopyFrom(wrappers_pb2.BoolValue(value=True))
    return policy
