"""The rate_limit plugin, local tier: Envoy's own token bucket per route (and per client IP or header value),
enforced inside each Envoy with no call out, so a burst is absorbed at zero added latency."""

from __future__ import annotations

from typing import ClassVar

from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as ratelimit_v3
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as local_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.type.v3 import percent_pb2 as percent_v3
from envoy.type.v3 import token_bucket_pb2 as token_bucket_v3
from google.protobuf import wrappers_pb2
from pydantic import Field, field_validator, model_validator

from xgate.config.schema import Model
from xgate.config.types import Duration
from xgate.translate.plugins.base import Plugin, pack
from xgate.translate.protos import duration

STAT_PREFIX = "xgate_local_rate_limit"
_ON = percent_v3.FractionalPercent(numerator=100, denominator=percent_v3.FractionalPercent.HUNDRED)
_KEYS = {"client_ip": "remote_address"}


class LocalLimit(Model):
    """`requests` per `per`, with bursts up to `burst` (default: `requests`), counted per `by`:
    `route` (one bucket for the route), `client_ip`, or `header:<name>` (one bucket per value; requests
    without the header share the route's bucket). Each Envoy counts on its own."""

    requests: int = Field(ge=1, le=1_000_000_000)
    per: Duration = 1.0
    burst: int | None = Field(default=None, ge=1, le=1_000_000_000)
    by: str = "route"
    max_keys: int = Field(default=10_000, ge=1, le=1_000_000)

    @field_validator("by")
    @classmethod
    def _by(cls, by: str) -> str:
        if by in ("route", "client_ip") or (by.startswith("header:") and len(by) > len("header:")):
            return by
        raise ValueError(f"by {by!r}: use route, client_ip or header:<name>")

    @model_validator(mode="after")
    def _interval(self) -> LocalLimit:
        if self.per < 0.05:
            raise ValueError("per: Envoy refills buckets at most every 50ms")
        return self


class RateLimitSettings(Model):
    local: LocalLimit | None = None
    headers: bool = True  # the draft IETF RateLimit headers (x-ratelimit-limit / -remaining / -reset)

    @model_validator(mode="after")
    def _some(self) -> RateLimitSettings:
        if self.local is None:
            raise ValueError("set local (the global tier is not available yet)")
        return self


class RateLimitPlugin(Plugin):
    name: ClassVar[str] = "rate_limit"
    filter_name: ClassVar[str] = "envoy.filters.http.local_ratelimit"
    settings: ClassVar[type[Model]] = RateLimitSettings

    def http_filter(self) -> hcm_v3.HttpFilter:
        # No bucket at the listener: only routes with their own config are limited.
        return hcm_v3.HttpFilter(
            name=self.filter_name, typed_config=pack(local_v3.LocalRateLimit(stat_prefix=STAT_PREFIX))
        )

    def route_config(self, settings: Model) -> local_v3.LocalRateLimit:
        assert isinstance(settings, RateLimitSettings) and settings.local is not None
        limit = settings.local
        bucket = token_bucket_v3.TokenBucket(
            max_tokens=limit.burst or limit.requests,
            tokens_per_fill=wrappers_pb2.UInt32Value(value=limit.requests),
            fill_interval=duration(limit.per),
        )
        # filter_enabled and filter_enforced default to 0%: without them the filter neither counts nor limits.
        config = local_v3.LocalRateLimit(
            stat_prefix=STAT_PREFIX,
            token_bucket=bucket,
            filter_enabled=base_v3.RuntimeFractionalPercent(default_value=_ON, runtime_key=f"{STAT_PREFIX}_enabled"),
            filter_enforced=base_v3.RuntimeFractionalPercent(default_value=_ON, runtime_key=f"{STAT_PREFIX}_enforced"),
            response_headers_to_add=[
                base_v3.HeaderValueOption(
                    header=base_v3.HeaderValue(key="x-xgate-rate-limited", value="local"),
                    append_action=base_v3.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            ],
        )
        if settings.headers:
            config.enable_x_ratelimit_headers = ratelimit_v3.DRAFT_VERSION_03
        if limit.by != "route":
            key, action = _descriptor(limit.by)
            config.rate_limits.append(route_components_v3.RateLimit(actions=[action]))
            # An empty value makes a dynamic descriptor: one bucket per distinct value, at most max_keys.
            config.descriptors.append(
                ratelimit_v3.LocalRateLimitDescriptor(
                    entries=[ratelimit_v3.RateLimitDescriptor.Entry(key=key, value="")], token_bucket=bucket
                )
            )
            config.max_dynamic_descriptors.value = limit.max_keys
            config.always_consume_default_token_bucket.value = False
        return config


def _descriptor(by: str) -> tuple[str, route_components_v3.RateLimit.Action]:
    if by == "client_ip":
        return "remote_address", route_components_v3.RateLimit.Action(
            remote_address=route_components_v3.RateLimit.Action.RemoteAddress()
        )
    header = by.removeprefix("header:").lower()
    key = f"header_{header}"
    return key, route_components_v3.RateLimit.Action(
        request_headers=route_components_v3.RateLimit.Action.RequestHeaders(header_name=header, descriptor_key=key)
    )
