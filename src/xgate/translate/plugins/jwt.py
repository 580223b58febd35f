"""The jwt plugin in Envoy: native providers in jwt_authn's config (over ECDS), a requirement per route.

A provider with `verify: native` compiles into jwt_authn's config (no Python per request; the config travels
over ECDS, so a key change drains no connection, see translate.filterconfig), behind the guard (jwt_guard.py: a
small Lua filter refusing what jwt_authn would let through: oversized tokens, `crit`, `b64`, ECDSA signatures
of the wrong length). One with `verify: python` gives its routes no jwt_authn
requirement: the route goes to the ext_authz filter of the `policy` plugin with the provider's name as a context
extension, and `xgate authz` verifies as jwt_authn does (see xgate.authz.tokens). Both paths give the same
answers (tests/integration/test_jwt_agreement.py; xgate.plugins.jwt for the settings and what the native path
refuses).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import ClassVar
from urllib.parse import urlsplit

from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import http_uri_pb2 as http_uri_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as ext_authz_v3
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from xgate.config.schema import Route
from xgate.plugins.jwks import stamped_jwks
from xgate.plugins.jwt import (
    AUTHZ_FILTER,
    JWT_FILTER,
    OPTIONAL_KEY,
    PAYLOAD_METADATA,
    PROVIDER_KEY,
    ROUTE_KEY,
    JwtSettings,
    JwtSpec,
    Provider,
    provider_resource,
    providers_of,
)
from xgate.translate.filterconfig import discovered_filter, filter_config
from xgate.translate.plugins.base import PluginTranslator
from xgate.translate.plugins.jwt_guard import GUARD_FILTER, guard_filter, guard_route
from xgate.translate.plugins.services import https_cluster
from xgate.translate.protos import duration, pack

JWT_CACHE_SIZE = 10_000  # verified tokens Envoy keeps per provider, as many as the Python path
JWKS_CLUSTER = "xgate-jwks/"  # + provider name: the cluster Envoy fetches a provider's jwks_uri through


class JwtTranslator(PluginTranslator[JwtSettings]):
    spec: ClassVar[JwtSpec] = JwtSpec()

    def http_filters(
        self, defaults: JwtSettings | None, manager: hcm_v3.HttpConnectionManager
    ) -> list[hcm_v3.HttpFilter]:
        """The guard, and jwt_authn naming its config over ECDS (see resources)."""
        return [*guard_filter(providers_of(defaults, "native")), _JWT_DISCOVERED]

    def route(
        self, settings: JwtSettings | None, route: Route, proto: route_components_v3.Route
    ) -> Sequence[route_components_v3.Route]:
        provider = settings.required() if settings is not None else None
        if settings is None or provider is None or provider.verify == "python":
            proto.typed_per_filter_config[JWT_FILTER].CopyFrom(_JWT_OFF)
        else:
            requirement = f"{provider.name}?" if settings.optional else provider.name
            proto.typed_per_filter_config[JWT_FILTER].CopyFrom(_requirement(requirement))
            proto.typed_per_filter_config[GUARD_FILTER].CopyFrom(_guard(provider.name))
        if settings is not None and provider is not None and provider.verify == "python":
            # The route's ext_authz check carries the provider's name (the policy plugin, translated after this
            # one, adds its own keys to the same check), so one call verifies and runs the policy.
            extensions = {PROVIDER_KEY: provider.name, ROUTE_KEY: proto.name}
            if settings.optional:
                extensions[OPTIONAL_KEY] = "true"
            per_route = ext_authz_v3.ExtAuthzPerRoute(
                check_settings=ext_authz_v3.CheckSettings(context_extensions=extensions)
            )
            proto.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(pack(per_route))
        return (proto,)

    def resources(self, defaults: JwtSettings | None) -> list[Message]:
        """jwt_authn's config (over ECDS: a key change, e.g. of a watched jwks_file, reaches Envoy without
        rebuilding a listener, so without draining a connection; every listener's native providers merge into
        the one config), the clusters Envoy fetches remote JWKS through, and the providers `xgate authz`
        verifies for."""
        native = providers_of(defaults, "native")
        found: list[Message] = [filter_config(JWT_FILTER, _authentication(native))]
        found += [
            https_cluster(JWKS_CLUSTER + provider.name, *_host_port(provider.jwks_uri), provider.jwks_ca_file)
            for provider in native
            if provider.jwks_uri is not None
        ]
        return found + [provider_resource(provider) for provider in providers_of(defaults, "python")]


def _authentication(native: Sequence[Provider]) -> jwt_v3.JwtAuthentication:
    config = jwt_v3.JwtAuthentication(bypass_cors_preflight=True)
    for provider in native:
        config.providers[provider.name].CopyFrom(_provider(provider))
        config.requirement_map[provider.name].provider_name = provider.name
        optional = config.requirement_map[f"{provider.name}?"]
        optional.requires_any.requirements.add().provider_name = provider.name
        optional.requires_any.requirements.add().allow_missing.SetInParent()
    return config


# The listener's jwt_authn filter: the same for every listener, whatever its providers (they travel over ECDS).
_JWT_DISCOVERED = discovered_filter(JWT_FILTER, jwt_v3.JwtAuthentication)


_JWT_OFF = pack(jwt_v3.PerRouteConfig(disabled=True))  # only ever copied from, never changed


# Packed once per requirement and provider: thousands of routes name the same few, and packing each route's
# anew was a measurable part of translating 50,000 routes. Callers only copy from the result.
@functools.lru_cache(maxsize=256)
def _requirement(name: str) -> any_pb2.Any:
    return pack(jwt_v3.PerRouteConfig(requirement_name=name))


@functools.lru_cache(maxsize=256)
def _guard(provider: str) -> any_pb2.Any:
    return pack(guard_route(provider))


def _host_port(uri: str) -> tuple[str, int]:
    parts = urlsplit(uri)
    assert parts.hostname is not None  # checked by Provider
    return parts.hostname, parts.port or 443


def _provider(provider: Provider) -> jwt_v3.JwtProvider:
    proto = jwt_v3.JwtProvider(
        issuer=provider.issuer or "",
        audiences=list(provider.audiences),
        require_expiration=provider.require_exp,
        from_headers=[jwt_v3.JwtHeader(name=h.name, value_prefix=h.prefix) for h in provider.headers],
        from_cookies=list(provider.cookies),
        from_params=list(provider.query),
        claim_to_headers=[
            jwt_v3.JwtClaimToHeader(claim_name=claim, header_name=header)
            for claim, header in sorted(provider.forward_claims.items())
        ],
        clock_skew_seconds=int(provider.clock_skew),
        payload_in_metadata=PAYLOAD_METADATA,
    )
    # Envoy's verified-token cache (per provider, LRU, honours exp; tokens over 4 KiB are not cached) saves the
    # signature check on repeated tokens: jwt_authn's largest cost. Only for keys that come with the config
    # (a jwks_file's too: the control plane reads it and sends its keys inline, and again when it changes):
    # a key change is a new filter config and an empty cache. Envoy does not empty it when a remote JWKS
    # changes, so with jwks_uri a token of a rotated-out key would keep passing: no cache there.
    if (keys := provider.key_set) is not None:
        jwks = stamped_jwks(keys, provider.algorithms)
        proto.local_jwks.CopyFrom(base_v3.DataSource(inline_string=json.dumps(jwks, sort_keys=True)))
        proto.jwt_cache_config.jwt_cache_size = JWT_CACHE_SIZE
    else:
        assert provider.jwks_uri is not None
        proto.remote_jwks.CopyFrom(_remote(provider, provider.jwks_uri))
    if provider.max_lifetime is not None:
        proto.max_lifetime.CopyFrom(duration_pb2.Duration(seconds=int(provider.max_lifetime)))
    return proto


def _remote(provider: Provider, uri: str) -> jwt_v3.RemoteJwks:
    """Fetched by Envoy through the provider's own TLS cluster, before the listener takes traffic (so the first
    requests do not fail for want of keys), again every `jwks_refresh`, and after a failed fetch again after
    `jwks_min_refetch`. Envoy has no refetch on an unknown `kid` (the Python path has).

    No retry_policy: while Envoy has no keys it fetches for each request and holds the request meanwhile, so
    retries (1 s backoff) held every request 1.4-2.6 s while the endpoint failed; without them it is refused
    at once, and the next request's fetch (or the refetch above) picks the keys up when the endpoint is back."""
    return jwt_v3.RemoteJwks(
        http_uri=http_uri_v3.HttpUri(uri=uri, cluster=JWKS_CLUSTER + provider.name, timeout=duration(5.0)),
        cache_duration=duration(provider.jwks_refresh),
        async_fetch=jwt_v3.JwksAsyncFetch(
            fast_listener=False, failed_refetch_duration=duration(provider.jwks_min_refetch)
        ),
    )
