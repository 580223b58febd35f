"""The jwt plugin's settings and contract: providers, where a verified payload goes, the ext_authz keys.

Tokens are verified by Envoy's own jwt_authn (`verify: native`, the default) or by `xgate authz` (`verify:
python`). Providers (issuer, audiences, keys, where the token is) are defined once, in the global or listener
defaults; a route names the provider it requires. What the native path cannot express is refused with a
pointer to `verify: python`, never silently weakened: `required_claims` (jwt_authn has no such check), and
`algorithms` with keys Envoy loads itself (`jwks_file`, `jwks_uri`; inline keys are stamped with their allowed
`alg`, see plugins/jwks.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from envoy.config.core.v3 import base_pb2 as core_v3
from google.protobuf import struct_pb2 as struct_v3
from pydantic import Field, PrivateAttr, field_validator, model_validator

from xgate.api import authz_pb2, duration, seconds
from xgate.config.schema import Model, Route
from xgate.config.types import Duration, Name
from xgate.plugins.base import PluginSpec
from xgate.plugins.jwks import Algorithm, stamped_jwks

JWT_FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD_METADATA = "jwt_payload"
AUTHZ_FILTER = "envoy.filters.http.ext_authz"  # the policy plugin's filter, which the Python path goes through
# Where a verified payload sits in Envoy's dynamic metadata, as {PAYLOAD_METADATA: payload}: jwt_authn's
# namespace on the native path, ext_authz's for a token `xgate authz` verified (it returns it with its answer).
PAYLOAD_NAMESPACES = (JWT_FILTER, AUTHZ_FILTER)
PROVIDER_KEY = "xgate_jwt"  # ext_authz context extension: the provider the authz service verifies with
OPTIONAL_KEY = "xgate_jwt_optional"  # ext_authz context extension: "true" lets a request without a token pass
ROUTE_KEY = "xgate_route"  # ext_authz context extension: the config route's name
_KEY_TYPES = {"RSA", "EC", "OKP", "oct"}
_MAX_EXACT_FLOAT = 2**53


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
    _resolved: Provider | None = PrivateAttr(default=None)  # set by JwtSpec.resolve; not config, not dumped

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


def providers_of(defaults: JwtSettings | None, verify: Literal["native", "python"]) -> tuple[Provider, ...]:
    """The providers of some global/listener defaults that verify one way."""
    providers = defaults.providers if defaults is not None else ()
    return tuple(provider for provider in providers if provider.verify == verify)


class JwtSpec(PluginSpec[JwtSettings]):
    name: ClassVar[str] = "jwt"
    settings = JwtSettings

    def check(self, settings: JwtSettings, defaults: JwtSettings | None, inherited: bool, route: Route) -> list[str]:
        defined = {p.name for p in defaults.providers} if defaults is not None else set()
        if settings.providers and not inherited:
            return ["define providers in the global or listener plugin defaults; a route names one with provider"]
        if settings.provider is None and len(defined) != 1:
            return [f"name the provider this route requires (defined: {', '.join(sorted(defined)) or 'none'})"]
        if settings.provider is not None and settings.provider not in defined:
            return [f"provider {settings.provider!r} is not defined (defined: {', '.join(sorted(defined)) or 'none'})"]
        return []

    def resolve(self, settings: JwtSettings, defaults: JwtSettings | None) -> JwtSettings:
        """The route's settings knowing the provider they name, so route translation knows how it verifies."""
        if settings.providers or defaults is None:
            return settings
        resolved = settings.model_copy()
        resolved._resolved = defaults.model_copy(update={"provider": settings.provider}).required()
        return resolved

    def needs(self, settings: JwtSettings) -> tuple[str, ...]:
        provider = settings.required()
        return ("policy",) if provider is not None and provider.verify == "python" else ()


def provider_resource(provider: Provider) -> authz_pb2.JwtProvider:
    """A `verify: python` provider as `xgate authz` gets it."""
    resource = authz_pb2.JwtProvider(
        name=provider.name,
        audiences=provider.audiences,
        jwks_ca_file=provider.jwks_ca_file or "",
        jwks_refresh=duration(provider.jwks_refresh),
        jwks_min_refetch=duration(provider.jwks_min_refetch),
        algorithms=provider.algorithms or (),
        required_claims=provider.required_claims,
        headers=[authz_pb2.TokenHeader(name=header.name, prefix=header.prefix) for header in provider.headers],
        cookies=provider.cookies,
        query=provider.query,
        forward_claims=provider.forward_claims,
        clock_skew=duration(provider.clock_skew),
        require_exp=provider.require_exp,
    )
    if provider.issuer is not None:
        resource.issuer = provider.issuer
    if provider.jwks is not None:
        resource.jwks_json = json.dumps(provider.jwks, sort_keys=True)
    elif provider.jwks_file is not None:
        resource.jwks_file = provider.jwks_file
    elif provider.jwks_uri is not None:
        resource.jwks_uri = provider.jwks_uri
    if provider.max_lifetime is not None:
        resource.max_lifetime.CopyFrom(duration(provider.max_lifetime))
    return resource


def provider_from_resource(resource: authz_pb2.JwtProvider) -> Provider:
    """The provider back from its resource; raises ValueError (a pydantic ValidationError among them) when it
    does not make a valid one here, e.g. its jwks_file does not exist on this machine."""
    keys = resource.WhichOneof("keys")
    data: dict[str, Any] = {
        "name": resource.name,
        "verify": "python",
        "issuer": resource.issuer if resource.HasField("issuer") else None,
        "audiences": tuple(resource.audiences),
        "jwks_ca_file": resource.jwks_ca_file or None,
        "jwks_refresh": seconds(resource.jwks_refresh),
        "jwks_min_refetch": seconds(resource.jwks_min_refetch),
        "algorithms": tuple(resource.algorithms) or None,
        "required_claims": tuple(resource.required_claims),
        "headers": [{"name": header.name, "prefix": header.prefix} for header in resource.headers],
        "cookies": tuple(resource.cookies),
        "query": tuple(resource.query),
        "forward_claims": dict(resource.forward_claims),
        "clock_skew": seconds(resource.clock_skew),
        "require_exp": resource.require_exp,
        "max_lifetime": seconds(resource.max_lifetime) if resource.HasField("max_lifetime") else None,
    }
    if keys == "jwks_json":
        data["jwks"] = json.loads(resource.jwks_json)
    elif keys is not None:
        data[keys] = getattr(resource, keys)
    return Provider.model_validate(data)


def jwt_claims(metadata: core_v3.Metadata) -> dict[str, Any]:
    """The verified payload as a dict (integral numbers as int): jwt_authn's, else the one this service put in
    ext_authz's namespace for a token it verified; {} when there is none."""
    for filter_name in PAYLOAD_NAMESPACES:
        namespace = metadata.filter_metadata.get(filter_name)
        if namespace is None or PAYLOAD_METADATA not in namespace.fields:
            continue
        payload = namespace.fields[PAYLOAD_METADATA]
        if payload.WhichOneof("kind") == "struct_value":
            return {key: _plain(value) for key, value in payload.struct_value.fields.items()}
    return {}


def _plain(value: struct_v3.Value) -> Any:
    """A Struct value as Python; json_format.MessageToDict gives the same (bar the ints) at 1.5x the cost."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        # Struct keeps every number as a double; JWT's numeric dates and counters are integers.
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) <= _MAX_EXACT_FLOAT else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {key: _plain(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    return None
