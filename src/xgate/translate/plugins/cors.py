"""The cors plugin: Envoy's own CORS filter, policy per route (no Python runs per request)."""

from __future__ import annotations

from typing import ClassVar

from envoy.extensions.filters.http.cors.v3 import cors_pb2 as cors_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.type.matcher.v3 import regex_pb2 as regex_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3
from google.protobuf import wrappers_pb2
from pydantic import Field, field_validator

from xgate.config.schema import Model
from xgate.config.types import Duration, Regex
from xgate.translate.plugins.base import Plugin, pack


class CorsSettings(Model):
    """Which cross-origin requests browsers may make. `allow_origins: ["*"]` allows any origin."""

    allow_origins: tuple[str, ...] = Field(default=(), min_length=0)
    allow_origin_regexes: tuple[Regex, ...] = ()
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: Duration | None = None
    allow_credentials: bool = False

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if origin != "*" and "://" not in origin:
                raise ValueError(f"origin {origin!r} must be '*' or scheme://host[:port]")
        return origins


class CorsPlugin(Plugin):
    name: ClassVar[str] = "cors"
    filter_name: ClassVar[str] = "envoy.filters.http.cors"
    settings: ClassVar[type[Model]] = CorsSettings

    def http_filter(self) -> hcm_v3.HttpFilter:
        return hcm_v3.HttpFilter(name=self.filter_name, typed_config=pack(cors_v3.Cors()))

    def route_config(self, settings: Model) -> cors_v3.CorsPolicy:
        assert isinstance(settings, CorsSettings)
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
