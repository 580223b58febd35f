"""The jwt plugin, native path: Envoy's own jwt_authn verifies tokens (no Python per request).

Providers (issuer, audiences, keys, where the token is) are defined once, in the global or listener plugin
defaults, and compile into the listener's filter; a route names the provider it requires. Answers: 401 with
`WWW-Authenticate: Bearer` for a missing or invalid token, 403 for a valid token whose audience is not
allowed. Verified claims can be forwarded to the upstream as headers; the payload is also kept in dynamic
metadata (`jwt_payload`) for later stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from pydantic import Field, field_validator, model_validator

from xgate.config.schema import Model
from xgate.config.types import Duration, Name
from xgate.translate.plugins.base import Plugin, pack

PAYLOAD_METADATA = "jwt_payload"
_ALGORITHMS_WITH_KEYS = {"RSA", "EC", "OKP", "oct"}


class TokenHeader(Model):
    name: str = Field(min_length=1)
    prefix: str = ""


class Provider(Model):
    """Who issues tokens and with which keys. `jwks` is a JWKS object (or `jwks_file` a path to one);
    symmetric (`oct`) keys must be listed explicitly: an RSA or EC key is never used as an HMAC secret."""

    name: Name
    issuer: str | None = None
    audiences: tuple[str, ...] = ()
    jwks: dict[str, Any] | None = None
    jwks_file: str | None = None
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
            if not isinstance(key, dict) or key.get("kty") not in _ALGORITHMS_WITH_KEYS:
                raise ValueError(f"jwks key {index}: kty must be one of {sorted(_ALGORITHMS_WITH_KEYS)}")
        return jwks

    @model_validator(mode="after")
    def _keys(self) -> Provider:
        if (self.jwks is None) == (self.jwks_file is None):
            raise ValueError("set exactly one of jwks, jwks_file")
        if self.jwks_file is not None and not Path(self.jwks_file).is_file():
            raise ValueError(f"jwks_file {self.jwks_file!r} does not exist")
        return self


class JwtSettings(Model):
    """Defaults (global or listener): `providers`. A route: `provider` (default: the only one defined) and
    `optional` (a request without a token passes; one with a bad token does not)."""

    providers: tuple[Provider, ...] = ()
    provider: Name | None = None
    optional: bool = False

    @model_validator(mode="after")
    def _unique(self) -> JwtSettings:
        names = [provider.name for provider in self.providers]
        if len(names) != len(set(names)):
            raise ValueError("provider names must be unique")
        return self


class JwtPlugin(Plugin):
    name: ClassVar[str] = "jwt"
    filter_name: ClassVar[str] = "envoy.filters.http.jwt_authn"
    settings: ClassVar[type[Model]] = JwtSettings

    def http_filter(self) -> hcm_v3.HttpFilter:
        return self.http_filters(None)[0]

    def http_filters(self, defaults: Model | None) -> list[hcm_v3.HttpFilter]:
        config = jwt_v3.JwtAuthentication(bypass_cors_preflight=True)
        providers = defaults.providers if isinstance(defaults, JwtSettings) else ()
        for provider in providers:
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

    def route_config(self, settings: Model) -> Message:
        assert isinstance(settings, JwtSettings)
        name = settings.provider or (settings.providers[0].name if settings.providers else "")
        return jwt_v3.PerRouteConfig(requirement_name=f"{name}?" if settings.optional else name)

    def disabled_route_config(self) -> Message:
        return jwt_v3.PerRouteConfig(disabled=True)


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
    if provider.jwks is not None:
        proto.local_jwks.CopyFrom(base_v3.DataSource(inline_string=json.dumps(provider.jwks, sort_keys=True)))
    else:
        proto.local_jwks.CopyFrom(base_v3.DataSource(filename=str(provider.jwks_file)))
    if provider.max_lifetime is not None:
        proto.max_lifetime.CopyFrom(duration_pb2.Duration(seconds=int(provider.max_lifetime)))
    return proto
