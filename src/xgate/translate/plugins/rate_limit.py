"""The rate_limit plugin in Envoy. Local tier: Envoy's own token bucket per route (and per client IP or header
value), enforced inside each Envoy with no call out, so a burst is absorbed at zero added latency. Global tier:
a limit shared by every Envoy, counted by xgate's rate-limit service (token bucket or GCRA, in Redis); the
route carries the rate-limit actions that describe a request, the service the limits for those descriptors.
In front of the global tier, each Envoy's pre-limit (a second local_ratelimit filter, plugins.rate_limit
`prelimit`) refuses what the global limit would refuse anyway, so the service only decides what could pass."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import ClassVar

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
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message

from xgate.config.schema import Route
from xgate.plugins.jwt import PAYLOAD_METADATA, PAYLOAD_NAMESPACES
from xgate.plugins.rate_limit import (
    DOMAIN,
    MAX_TOKENS,
    ROUTE_KEY,
    GlobalLimit,
    LocalLimit,
    RateLimitSettings,
    RateLimitSpec,
    descriptor_key,
    limit_resource,
    prelimit,
)
from xgate.translate.plugins.base import PluginTranslator
from xgate.translate.plugins.services import service_cluster
from xgate.translate.protos import duration, pack

STAT_PREFIX = "xgate_local_rate_limit"
LOCAL_FILTER = "envoy.filters.http.local_ratelimit"
PRELIMIT_FILTER = "xgate.global_prelimit"  # a second local_ratelimit filter: the global limit's pre-limit
PRELIMIT_STAT_PREFIX = "xgate_global_prelimit"
GLOBAL_FILTER = "envoy.filters.http.ratelimit"
SERVICE_CLUSTER = "xgate-ratelimit"
_SET = base_v3.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_ON = percent_v3.FractionalPercent(numerator=100, denominator=percent_v3.FractionalPercent.HUNDRED)
_BUILT_IN = RateLimitSettings.model_construct(
    service="127.0.0.1:18003", timeout=0.05, failure_mode="open", local=None, shared=None, headers=True
)


class RateLimitTranslator(PluginTranslator[RateLimitSettings]):
    spec: ClassVar[RateLimitSpec] = RateLimitSpec()

    def http_filters(
        self, defaults: RateLimitSettings | None, manager: hcm_v3.HttpConnectionManager
    ) -> list[hcm_v3.HttpFilter]:
        """Local first (a burst it absorbs never reaches the service), then global. Both are always there,
        so a route switching tiers never changes the listener; without actions the global one does nothing.
        Service address, timeout and failure mode come from the global/listener defaults (else built-ins):
        per-route values would make the listener depend on its routes."""
        settings = defaults or _BUILT_IN
        service = ratelimit_filter_v3.RateLimit(
            domain=DOMAIN,
            rate_limit_service=ratelimit_config_v3.RateLimitServiceConfig(
                grpc_service=grpc_service_v3.GrpcService(
                    envoy_grpc=grpc_service_v3.GrpcService.EnvoyGrpc(cluster_name=SERVICE_CLUSTER)
                ),
                transport_api_version=config_source_v3.ApiVersion.V3,
            ),
            timeout=duration(settings.timeout),
            failure_mode_deny=settings.failure_mode == "closed",
            # Closed and the service cannot answer: 503 says "try later", Envoy's default would be a 500.
            status_on_error=http_status_v3.HttpStatus(code=http_status_v3.ServiceUnavailable),
        )
        # No bucket at the listener: only routes with their own config are limited.
        local = local_v3.LocalRateLimit(stat_prefix=STAT_PREFIX)
        pre = local_v3.LocalRateLimit(stat_prefix=PRELIMIT_STAT_PREFIX)
        return [
            hcm_v3.HttpFilter(name=LOCAL_FILTER, typed_config=pack(local)),
            hcm_v3.HttpFilter(name=PRELIMIT_FILTER, typed_config=pack(pre)),
            hcm_v3.HttpFilter(name=GLOBAL_FILTER, typed_config=pack(service)),
        ]

    def route(
        self, settings: RateLimitSettings | None, route: Route, proto: route_components_v3.Route
    ) -> Sequence[route_components_v3.Route]:
        if settings is None:
            proto.typed_per_filter_config[LOCAL_FILTER].CopyFrom(_DISABLED)
            return (proto,)
        if settings.local is not None:
            proto.typed_per_filter_config[LOCAL_FILTER].CopyFrom(_packed_local(settings.local, settings.headers))
        pre = _packed_prelimit(settings.shared, settings.headers) if settings.shared is not None else None
        if pre is not None and proto.HasField("route"):
            proto.typed_per_filter_config[PRELIMIT_FILTER].CopyFrom(pre)
        if settings.shared is not None and proto.HasField("route"):
            # The global tier's descriptor: this route's name, plus the client IP or header value to count by.
            actions = [
                route_components_v3.RateLimit.Action(
                    generic_key=route_components_v3.RateLimit.Action.GenericKey(
                        descriptor_key=ROUTE_KEY, descriptor_value=proto.name
                    )
                )
            ]
            if settings.shared.by == "route":
                proto.route.rate_limits.append(route_components_v3.RateLimit(actions=actions))
            else:
                for action in _descriptor(settings.shared.by)[1]:  # a claim: one per place a payload can be
                    proto.route.rate_limits.append(route_components_v3.RateLimit(actions=[*actions, action]))
        return (proto,)

    def resources(self, defaults: RateLimitSettings | None) -> list[Message]:
        return [service_cluster(SERVICE_CLUSTER, (defaults or _BUILT_IN).service, max_streams=16)]

    def route_resources(self, settings: RateLimitSettings, route: Route) -> list[Message]:
        if settings.shared is None or (route.upstream is None and route.split is None):
            return []  # global limits count requests that go to an upstream (the actions are on RouteAction)
        return [limit_resource(route.name, settings.shared)]


_DISABLED = pack(route_components_v3.FilterConfig(disabled=True))  # only ever copied from, never changed


# Packed once per distinct limit: tens of thousands of routes share a handful of limits, and building and packing
# each route's bucket anew was a fifth of `xgate validate`'s translation time. Callers only copy from the result.
@functools.lru_cache(maxsize=1024)
def _packed_local(limit: LocalLimit, headers: bool) -> any_pb2.Any:
    return pack(_local(limit, headers))


@functools.lru_cache(maxsize=1024)
def _packed_prelimit(limit: GlobalLimit, headers: bool) -> any_pb2.Any | None:
    pre = _prelimit(limit, headers)
    return None if pre is None else pack(pre)


def _local(limit: LocalLimit, headers: bool, prefix: str = STAT_PREFIX, tier: str = "local") -> local_v3.LocalRateLimit:
    bucket = token_bucket_v3.TokenBucket(
        max_tokens=limit.burst or limit.requests,
        tokens_per_fill=wrappers_pb2.UInt32Value(value=limit.requests),
        fill_interval=duration(limit.per),
    )
    # filter_enabled and filter_enforced default to 0%: without them the filter neither counts nor limits.
    config = local_v3.LocalRateLimit(
        stat_prefix=prefix,
        token_bucket=bucket,
        filter_enabled=base_v3.RuntimeFractionalPercent(default_value=_ON, runtime_key=f"{prefix}_enabled"),
        filter_enforced=base_v3.RuntimeFractionalPercent(default_value=_ON, runtime_key=f"{prefix}_enforced"),
        response_headers_to_add=[
            base_v3.HeaderValueOption(
                header=base_v3.HeaderValue(key="x-xgate-rate-limited", value=tier), append_action=_SET
            )
        ],
    )
    if headers:
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


def _prelimit(limit: GlobalLimit, headers: bool) -> local_v3.LocalRateLimit | None:
    """The pre-limit's config, or None. Its 429 says `x-xgate-rate-limited: global` and, like the service's,
    the global limit's `x-ratelimit-limit` (its bucket is not the limit), none left, and when to try again
    (at most one refill step). Counted by a header or claim, a request without one has no global
    descriptor and no global limit: the route's own bucket, which such a request falls into here, is then
    made unlimited."""
    local = prelimit(limit)
    if local is None:
        return None
    config = _local(local, False, PRELIMIT_STAT_PREFIX, "global")
    if headers:
        for name, value in (
            ("x-ratelimit-limit", str(limit.requests)),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", str(math.ceil(local.per))),
        ):
            config.response_headers_to_add.append(
                base_v3.HeaderValueOption(header=base_v3.HeaderValue(key=name, value=value), append_action=_SET)
            )
    if limit.by != "route":
        config.token_bucket.CopyFrom(
            token_bucket_v3.TokenBucket(
                max_tokens=MAX_TOKENS,
                tokens_per_fill=wrappers_pb2.UInt32Value(value=MAX_TOKENS),
                fill_interval=duration(0.05),
            )
        )
    return config


def _descriptor(by: str) -> tuple[str, list[route_components_v3.RateLimit.Action]]:
    """The descriptor key of `by`, and the actions that may produce its entry, each for a descriptor of its own."""
    if by.startswith("claim:"):
        # A claim of the token the jwt plugin verified (its filters run first): jwt_authn keeps the payload in
        # dynamic metadata, and `xgate authz` (verify: python) in ext_authz's. A request without the claim is
        # not counted by claim (the route's bucket applies): an action whose metadata is absent skips its whole
        # descriptor, so each namespace gets one, and a request only ever has one of the two.
        claim = by.removeprefix("claim:")
        key = descriptor_key(by)
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
        return descriptor_key(by), [
            route_components_v3.RateLimit.Action(remote_address=route_components_v3.RateLimit.Action.RemoteAddress())
        ]
    header = by.removeprefix("header:").lower()
    key = descriptor_key(by)
    return key, [
        route_components_v3.RateLimit.Action(
            request_headers=route_components_v3.RateLimit.Action.RequestHeaders(header_name=header, descriptor_key=key)
        )
    ]
