"""The jwt plugin: tokens verified by Envoy's own jwt_authn (native, the default) or by xgate authz (Python).

Providers (issuer, audiences, keys, where the token is) are defined once, in the global or listener plugin
defaults; a route names the provider it requires. A provider with `verify: native` compiles into the
listener's jwt_authn filter (no Python per request). One with `verify: python` gives its routes no jwt_authn
requirement: the route goes to the ext_authz filter of the `policy` plugin with the provider's name as a context
extension, and the authz service verifies with PyJWT (see xgate.authz.tokens). Both paths give the same
answers: 401 with `WWW-Authenticate: Bearer` for a missing or invalid token, 403 for a valid token whose
audience is not allowed; verified claims can be forwarded to the upstream as headers and reach policies.

What the native path cannot express is refused with a pointer to `verify: python`, never silently weakened:
`required_claims` (jwt_authn has no such check), and `algorithms` with keys Envoy loads itself (`jwks_file`,
`jwks_uri`; inline keys are stamped with their allowed `alg`, see plugins/jwks.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import http_uri_pb2 as http_uri_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as ext_authz_v3
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from pydantic import Field, PrivateAttr, field_validator, model_validator

from xgate.config.schema import Model
from xgate.config.types import Duration, Name
from xgate.translate.plugins.base import Plugin, pack
from xgate.translate.plugins.jwks import Algorithm, stamped_jwks
from xgate.translate.plugins.services import https_cluster
from xgate.translate.protos import duration

JWT_FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD_METADATA = "jwt_payload"
AUTHZ_FILTER = "envoy.filters.http.ext_authz"  # the policy plugin's filter, which the Python path goes through
# Where a verified payload sits in Envoy's dynamic metadata, as {PAYLOAD_METADATA: payload}: jwt_authn's
# namespace on the native path, ext_authz's for a token `xgate authz` verified (it returns it with its answer).
PAYLOAD_NAMESPACES = (JWT_FILTER, AUTHZ_FILTER)
PROVIDER_KEY = "xgate_jwt"  # ext_authz context extension: the provider the authz service verifies with
OPTIONAL_KEY = "xgate_jwt_optional"  # ext_authz context extension: "true" lets a request without a token pass
ROUTE_KEY = "xgate_route"
JWT_CACHE_SIZE = 10_000  # verified tokens Envoy keeps per provider, as many as the Python path
JWKS_CLUSTER = "xgate-jwks/"  # + provider name: the cluster Envoy fetches a provider's jwks_uri through
_KEY_TYPES = {"RSA", "EC", "OKP", "oct"}


class TokenHeader(Model):
    name: str = Field(min_length=1)
    prefix: str = ""


class Provider(Model):
    """Who issues tokens and with which keys: exactly one of `jwks` (a JWKS object), `jwks_file` (a path to
    one) or `jwks_uri` (HTTPS, optionally trusting `jwks_ca_file`; refreshed every `jwks_refresh`, and on a token
    with an unknown `kid` at most once per `jwks_min_refetch`). `algorithms` limits the signature algorithms
    (default: each key's own `alg`, else every algorithm its type can verify); HS256 needs an `oct` key listed
    in `jwks` or `jwks_file`: an RSA or EC key is never used as an HMAC secret, and a secret never comes over
    the network. `required_claims` must be present in the token (Python path only). `verify`: who checks."""

    name: Name
    verify: Literal["native", "python"] = "native"
    issuer: str | None = None
    audiences: tuple[str, ...] = ()
    jwks: dict[str, Any] | None = None
    jwks_file: str | None = None
    jwks_uri: str | None = None
    jwks_ca_file: str | None = None
    jwks_refresh: Duration = 300.0
    jwks_min_refetch: Duration = 30.0
    algorithms: tuple[Algorithm, ...] | None = Field(default=None, min_length=1)
    required_claims: tuple[str, ...] = ()
    headers: tuple[TokenHeader, ...] = (TokenHeader(name="authorization", prefix="Bearer "),)
    cookies: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    forward_claims: dict[str, str] = Field(default_factory=dict)  # claim -> request header to the upstream
    clock_skew: Duration = 60.0
    require_exp: bool = True
    max_lifetime: Duration | None = None

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, jwks: dict[str, Any] | None) -> dict[str, Any] | None:
        if jwks is None:
            return None
        keys = jwks.get("keys")
        if not isinstance(keys, list) or not keys:
            raise ValueError("jwks must be a JWKS object with a non-empty 'keys' list")
        for index, key in enumerate(keys):
            if not isinstance(key, dict) or key.get("kty") not in _KEY_TYPES:
                raise ValueError(f"jwks key {index}: kty must be one of {sorted(_KEY_TYPES)}")
        return jwks

    @field_validator("jwks_uri")
    @classmethod
    def _uri(cls, uri: str | None) -> str | None:
        if uri is not None:
            parts = urlsplit(uri)
            if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
                raise ValueError(f"jwks_uri {uri!r} must be an https:// URL with a host (and no credentials)")
        return uri

    @model_validator(mode="after")
    def _keys(self) -> Provider:
        if sum(source is not None for source in (self.jwks, self.jwks_file, self.jwks_uri)) != 1:
            raise ValueError("set exactly one of jwks, jwks_file, jwks_uri")
        for what in ("jwks_file", "jwks_ca_file"):
            path = getattr(self, what)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{what} {path!r} does not exist")
        if self.jwks_ca_file is not None and self.jwks_uri is None:
            raise ValueError("jwks_ca_file only goes with jwks_uri")
        hmac = self.algorithms is not None and "HS256" in self.algorithms
        if hmac and (self.jwks_uri is not None or (self.jwks is not None and not _has_oct(self.jwks))):
            raise ValueError("HS256 needs an explicit oct key in jwks or jwks_file (never from jwks_uri)")
        if self.jwks is not None and not stamped_jwks(self.jwks, self.algorithms)["keys"]:
            raise ValueError("no key in jwks may verify any of the allowed algorithms")
        if self.verify == "native":
            if self.required_claims:
                raise ValueError("required_claims: Envoy's jwt_authn cannot require claims; set verify: python")
            if self.algorithms is not None and self.jwks is None:
                raise ValueError(
                    "algorithms: Envoy loads jwks_file/jwks_uri keys itself and cannot be limited to them; "
                    "list the keys inline in jwks, or set verify: python"
                )
        return self


def _has_oct(jwks: dict[str, Any]) -> bool:
    return any(key.get("kty") == "oct" for key in jwks["keys"])


class JwtSettings(Model):
    """Defaults (global or listener): `providers`. A route: `provider` (default: the only one defined) and
    `optional` (a request without a token passes; one with a bad token does not)."""

    providers: tuple[Provider, ...] = ()
    provider: Name | None = None
    optional: bool = False
    _resolved: Provider | None = PrivateAttr(default=None)  # set by JwtPlugin.resolve; not config, not dumped

    @model_validator(mode="after")
    def _unique(self) -> JwtSettings:
        names = [provider.name for provider in self.providers]
        if len(names) != len(set(names)):
            raise ValueError("provider names must be unique")
        return self

    def required(self) -> Provider | None:
        """The provider a route requires, once its settings were resolved against the defaults."""
        if self._resolved is not None:
            return self._resolved
        name = self.provider or (self.providers[0].name if len(self.providers) == 1 else None)
        return next((provider for provider in self.providers if provider.name == name), None)


class JwtPlugin(Plugin):
    name: ClassVar[str] = "jwt"
    filter_name: ClassVar[str] = JWT_FILTER
    settings: ClassVar[type[Model]] = JwtSettings

    def http_filter(self) -> hcm_v3.HttpFilter:
        return self.http_filters(None)[0]

    def http_filters(self, defaults: Model | None) -> list[hcm_v3.HttpFilter]:
        config = jwt_v3.JwtAuthentication(bypass_cors_preflight=True)
        for provider in _native(defaults):
            config.providers[provider.name].CopyFrom(_provider(provider))
            config.requirement_map[provider.name].provider_name = provider.name
            optional = config.requirement_map[f"{provider.name}?"]
            optional.requires_any.requirements.add().provider_name = provider.name
            optional.requires_any.requirements.add().allow_missing.SetInParent()
        return [hcm_v3.HttpFilter(name=self.filter_name, typed_config=pack(config))]

    def check(self, settings: Model, defaults: Model | None, inherited: bool) -> list[str]:
        assert isinstance(settings, JwtSettings)
        defined = {p.name for p in defaults.providers} if isinstance(defaults, JwtSettings) else set()
        if settings.providers and not inherited:
            return ["define providers in the global or listener plugin defaults; a route names one with provider"]
        if settings.provider is None and len(defined) != 1:
            return [f"name the provider this route requires (defined: {', '.join(sorted(defined)) or 'none'})"]
        if settings.provider is not None and settings.provider not in defined:
            return [f"provider {settings.provider!r} is not defined (defined: {', '.join(sorted(defined)) or 'none'})"]
        return []

    def resolve(self, settings: Model, defaults: Model | None) -> Model:
        """The route's settings knowing the provider they name, so route translation knows how it verifies."""
        assert isinstance(settings, JwtSettings)
        if settings.providers or not isinstance(defaults, JwtSettings):
            return settings
        resolved = settings.model_copy()
        resolved._resolved = defaults.model_copy(update={"provider": settings.provider}).required()
        return resolved

    def needs(self, settings: Model) -> tuple[str, ...]:
        assert isinstance(settings, JwtSettings)
        provider = settings.required()
        return ("policy",) if provider is not None and provider.verify == "python" else ()

    def route_config(self, settings: Model) -> Message:
        assert isinstance(settings, JwtSettings)
        provider = settings.required()
        if provider is None or provider.verify == "python":
            return jwt_v3.PerRouteConfig(disabled=True)
        return jwt_v3.PerRouteConfig(requirement_name=f"{provider.name}?" if settings.optional else provider.name)

    def disabled_route_config(self) -> Message:
        return jwt_v3.PerRouteConfig(disabled=True)

    def patch_route(self, settings: Model, route: route_components_v3.Route) -> None:
        """A Python-verified provider: the route's ext_authz check carries the provider's name (the policy
        plugin, translated after this one, adds its own keys to the same check)."""
        assert isinstance(settings, JwtSettings)
        provider = settings.required()
        if provider is None or provider.verify != "python":
            return
        extensions = {PROVIDER_KEY: provider.name, ROUTE_KEY: route.name}
        if settings.optional:
            extensions[OPTIONAL_KEY] = "true"
        per_route = ext_authz_v3.ExtAuthzPerRoute(
            check_settings=ext_authz_v3.CheckSettings(context_extensions=extensions)
        )
        route.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(pack(per_route))

    def clusters(self, defaults: Model | None) -> list[cluster_v3.Cluster]:
        return [
            https_cluster(JWKS_CLUSTER + provider.name, *_host_port(provider.jwks_uri), provider.jwks_ca_file)
            for provider in _native(defaults)
            if provider.jwks_uri is not None
        ]


def _native(defaults: Model | None) -> tuple[Provider, ...]:
    providers = defaults.providers if isinstance(defaults, JwtSettings) else ()
    return tuple(provider for provider in providers if provider.verify == "native")


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
    # signature check on repeated tokens: jwt_authn's largest cost. Only for keys that come with the config:
    # a key change is a new filter config and an empty cache. Envoy does not empty it when a remote JWKS
    # changes, so with jwks_uri a token of a rotated-out key would keep passing: no cache there.
    if provider.jwks is not None:
        jwks = stamped_jwks(provider.jwks, provider.algorithms)
        proto.local_jwks.CopyFrom(base_v3.DataSource(inline_string=json.dumps(jwks, sort_keys=True)))
        proto.jwt_cache_config.jwt_cache_size = JWT_CACHE_SIZE
    elif provider.jwks_file is not None:
        proto.local_jwks.CopyFrom(base_v3.DataSource(filename=provider.jwks_file))
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
