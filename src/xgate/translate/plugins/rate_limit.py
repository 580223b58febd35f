"""The rate_limit plugin. Local tier: Envoy's own token bucket per route (and per client IP or header value),
enforced inside each Envoy with no call out, so a burst is absorbed at zero added latency. Global tier: a
limit shared by every Envoy, counted by xgate's rate-limit service (token bucket or GCRA, in Redis); the
route carries the rate-limit actions, the service gets the limits from the same config (`limit_table`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import config_source_pb2 as config_source_v3
from envoy.config.core.v3 import grpc_service_pb2 as grpc_service_v3
from envoy.config.ratelimit.v3 import rls_pb2 as ratelimit_config_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as ratelimit_v3
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as local_v3
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2 as ratelimit_filter_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.type.metadata.v3 import metadata_pb2 as metadata_v3
from envoy.type.v3 import http_status_pb2 as http_status_v3
from envoy.type.v3 import percent_pb2 as percent_v3
from envoy.type.v3 import token_bucket_pb2 as token_bucket_v3
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message
from pydantic import ConfigDict, Field, field_validator, model_validator

from xgate.config.schema import Model
from xgate.config.types import Duration
from xgate.translate.plugins.base import Plugin, pack
from xgate.translate.plugins.jwt import PAYLOAD_METADATA, PAYLOAD_NAMESPACES
from xgate.translate.plugins.services import service_cluster
from xgate.translate.protos import duration

STAT_PREFIX = "xgate_local_rate_limit"
GLOBAL_FILTER = "envoy.filters.http.ratelimit"
SERVICE_CLUSTER = "xgate-ratelimit"
DOMAIN = "xgate"
ROUTE_KEY = "xgate_route"
DEFAULT_SERVICE = "127.0.0.1:18003"
_ON = percent_v3.FractionalPercent(numerator=100, denominator=percent_v3.FractionalPercent.HUNDRED)
_KEYS = {"client_ip": "remote_address"}


def check_by(by: str) -> str:
    """What a limit counts by: route, client_ip, header:<name> or claim:<name>."""
    for prefix in ("header:", "claim:"):
        if by.startswith(prefix) and len(by) > len(prefix):
            return by
    if by in ("route", "client_ip"):
        return by
    raise ValueError(f"by {by!r}: use route, client_ip, header:<name> or claim:<name>")


class LocalLimit(Model):
    """`requests` per `per`, with bursts up to `burst` (default: `requests`), counted per `by`:
    `route` (one bucket for the route), `client_ip`, `header:<name>` or `claim:<name>` (a claim of the token
    the jwt plugin verified), one bucket per value; requests without the header or claim share the route's
    bucket. Each Envoy counts on its own."""

    requests: int = Field(ge=1, le=1_000_000_000)
    per: Duration = 1.0
    burst: int | None = Field(default=None, ge=1, le=1_000_000_000)
    by: str = "route"
    max_keys: int = Field(default=10_000, ge=1, le=1_000_000)

    _by = field_validator("by")(classmethod(lambda cls, by: check_by(by)))

    @model_validator(mode="after")
    def _interval(self) -> LocalLimit:
        if self.per < 0.05:
            raise ValueError("per: Envoy refills buckets at most every 50ms")
        return self


class GlobalLimit(Model):
    """`requests` per `per` across the whole fleet, counted by the rate-limit service. `algorithm`:
    token_bucket (bursts up to `burst`, default `requests`) or gcra (smooth: at most `burst` requests back
    to back, default 1). `shadow`: count and report, never deny."""

    requests: int = Field(ge=1, le=1_000_000_000)
    per: Duration = 1.0
    algorithm: Literal["token_bucket", "gcra"] = "token_bucket"
    burst: int = Field(default=0, ge=0, le=1_000_000_000)
    by: str = "route"
    shadow: bool = False

    _by = field_validator("by")(classmethod(lambda cls, by: check_by(by)))


class RateLimitSettings(Model):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    local: LocalLimit | None = None
    shared: GlobalLimit | None = Field(default=None, alias="global")
    headers: bool = True  # the draft IETF RateLimit headers (x-ratelimit-limit / -remaining / -reset)
    # Where the rate-limit service listens, how long Envoy waits for it, and what it does when it cannot ask
    # (open: allow). Read from the global or listener defaults; one service for the whole gateway.
    service: str = Field(default=DEFAULT_SERVICE, pattern=r"^[^:\s]+:\d{1,5}$")
    timeout: Duration = 0.05
    failure_mode: Literal["open", "closed"] = "open"

    @model_validator(mode="after")
    def _some(self) -> RateLimitSettings:
        if self.local is None and self.shared is None:
            raise ValueError("set local, global or both")
        return self


_BUILT_IN = RateLimitSettings.model_construct(service=DEFAULT_SERVICE, timeout=0.05, failure_mode="open")


class RateLimitPlugin(Plugin):
    name: ClassVar[str] = "rate_limit"
    filter_name: ClassVar[str] = "envoy.filters.http.local_ratelimit"
    settings: ClassVar[type[Model]] = RateLimitSettings

    def http_filter(self) -> hcm_v3.HttpFilter:
        # No bucket at the listener: only routes with their own config are limited.
        return hcm_v3.HttpFilter(
            name=self.filter_name, typed_config=pack(local_v3.LocalRateLimit(stat_prefix=STAT_PREFIX))
        )

    def http_filters(self, defaults: Model | None) -> list[hcm_v3.HttpFilter]:
        """Local first (a burst it absorbs never reaches the service), then global. Both are always there,
        so a route switching tiers never changes the listener; without actions the global one does nothing."""
        service_settings = _service_settings(defaults)
        service = ratelimit_filter_v3.RateLimit(
            domain=DOMAIN,
            rate_limit_service=ratelimit_config_v3.RateLimitServiceConfig(
                grpc_service=grpc_service_v3.GrpcService(
                    envoy_grpc=grpc_service_v3.GrpcService.EnvoyGrpc(cluster_name=SERVICE_CLUSTER)
                ),
                transport_api_version=config_source_v3.ApiVersion.V3,
            ),
            timeout=duration(service_settings.timeout),
            failure_mode_deny=service_settings.failure_mode == "closed",
            # Closed and the service cannot answer: 503 says "try later", Envoy's default would be a 500.
            status_on_error=http_status_v3.HttpStatus(code=http_status_v3.ServiceUnavailable),
        )
        return [self.http_filter(), hcm_v3.HttpFilter(name=GLOBAL_FILTER, typed_config=pack(service))]

    def route_configs(self, settings: Model) -> dict[str, Message]:
        assert isinstance(settings, RateLimitSettings)
        return {self.filter_name: self.route_config(settings)} if settings.local is not None else {}

    def patch_route(self, settings: Model, route: route_components_v3.Route) -> None:
        """The global tier's descriptor: this route's name, plus the client IP or header value to count by."""
        assert isinstance(settings, RateLimitSettings)
        if settings.shared is None or not route.HasField("route"):
            return
        actions = [
            route_components_v3.RateLimit.Action(
                generic_key=route_components_v3.RateLimit.Action.GenericKey(
                    descriptor_key=ROUTE_KEY, descriptor_value=route.name
                )
            )
        ]
        if settings.shared.by == "route":
            route.route.rate_limits.append(route_components_v3.RateLimit(actions=actions))
            return
        for action in _descriptor(settings.shared.by)[1]:  # a claim: one per place a payload can be
            route.route.rate_limits.append(route_components_v3.RateLimit(actions=[*actions, action]))

    def clusters(self, defaults: Model | None) -> list[cluster_v3.Cluster]:
        return [service_cluster(SERVICE_CLUSTER, _service_settings(defaults).service, max_streams=16)]

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
            key, actions = _descriptor(limit.by)
            config.rate_limits.extend(route_components_v3.RateLimit(actions=[action]) for action in actions)
            # An empty value makes a dynamic descriptor: one bucket per distinct value, at most max_keys.
            config.descriptors.append(
                ratelimit_v3.LocalRateLimitDescriptor(
                    entries=[ratelimit_v3.RateLimitDescriptor.Entry(key=key, value="")], token_bucket=bucket
                )
            )
            config.max_dynamic_descriptors.value = limit.max_keys
            config.always_consume_default_token_bucket.value = False
        return config


def _service_settings(defaults: Model | None) -> RateLimitSettings:
    """Service address, timeout and failure mode come from the global/listener defaults (else built-ins):
    per-route values would make the listener depend on its routes."""
    if isinstance(defaults, RateLimitSettings):
        return defaults
    return _BUILT_IN


def descriptor_key(by: str) -> str:
    """The descriptor entry key a `by` produces (shared with the rate-limit service's limit table)."""
    return _descriptor(by)[0]


def _descriptor(by: str) -> tuple[str, list[route_components_v3.RateLimit.Action]]:
    """The descriptor key of `by`, and the actions that may produce its entry, each for a descriptor of its own."""
    if by.startswith("claim:"):
        # A claim of the token the jwt plugin verified (its filters run first): jwt_authn keeps the payload in
        # dynamic metadata, and `xgate authz` (verify: python) in ext_authz's. A request without the claim is
        # not counted by claim (the route's bucket applies): an action whose metadata is absent skips its whole
        # descriptor, so each namespace gets one, and a request only ever has one of the two.
        claim = by.removeprefix("claim:")
        key = f"claim_{claim}"
        return key, [
            route_components_v3.RateLimit.Action(
                metadata=route_components_v3.RateLimit.Action.MetaData(
                    descriptor_key=key,
                    metadata_key=metadata_v3.MetadataKey(
                        key=namespace,
                        path=[
                            metadata_v3.MetadataKey.PathSegment(key=PAYLOAD_METADATA),
                            metadata_v3.MetadataKey.PathSegment(key=claim),
                        ],
                    ),
                    source=route_components_v3.RateLimit.Action.MetaData.DYNAMIC,
                    skip_if_absent=True,
                )
            )
            for namespace in PAYLOAD_NAMESPACES
        ]
    if by == "client_ip":
        return "remote_address", [
            route_components_v3.RateLimit.Action(remote_address=route_components_v3.RateLimit.Action.RemoteAddress())
        ]
    header = by.removeprefix("header:").lower()
    key = f"header_{header}"
    return key, [
        route_components_v3.RateLimit.Action(
            request_headers=route_components_v3.RateLimit.Action.RequestHeaders(header_name=header, descriptor_key=key)
        )
    ]
