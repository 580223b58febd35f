"""The jwt plugin's settings and contract: providers, where a verified payload goes, the ext_authz keys.

Tokens are verified by Envoy's own jwt_authn (`verify: native`, the default) or by `xgate authz` (`verify:
python`). Providers (issuer, audiences, keys, where the token is) are defined once, in the global or listener
defaults; a route names the provider it requires. What the native path cannot express is refused with a
pointer to `verify: python`, never silently weakened: `required_claims` (jwt_authn has no such check), and
`algorithms` with `jwks_uri` (Envoy fetches those keys itself; keys in `jwks` or `jwks_file` are stamped with
their allowed `alg`, see plugins/jwks.py).

A `jwks_file` is read here, when the config is validated (on the control plane's machine), and its keys travel
inline to Envoy and to `xgate authz`, so both paths verify with the same keys; the control plane watches the
file and sends a changed one again (xgate.sources.watched).
"""

from __future__ import annotations

import hashlib
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
MAX_JWKS_FILE_BYTES = 1 << 20
# A token above this size is refused on both paths (401): a real one is 1-4 KiB, and many proxies cap one
# header at 8 KiB. Envoy's own limit is the whole header block (60 KiB).
DEFAULT_MAX_TOKEN_BYTES = 8192


class TokenHeader(Model):
    name: str = Field(min_length=1)
    prefix: str = ""


class Provider(Model):
    """Who issues tokens and with which keys: exactly one of `jwks` (a JWKS object), `jwks_file` (a path to
    one) or `jwks_uri` (HTTPS, optionally trusting `jwks_ca_file`; refreshed every `jwks_refresh`, and on a token
    with an unknown `kid` at most once per `jwks_min_refetch`). `algorithms` limits the signature algorithms
    (default: each key's own `alg`, else every algorithm its type can verify); HS256 needs an `oct` key listed
    in `jwks` or `jwks_file`: an RSA or EC key is never used as an HMAC secret, and a secret never comes over
    the network. `required_claims` must be present in the token (Python path only). `verify`: who checks.
    `max_token_bytes`: longer tokens are refused (both paths). `max_lifetime`: exp at most this far from now."""

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
    max_token_bytes: int = Field(default=DEFAULT_MAX_TOKEN_BYTES, ge=256, le=60 * 1024)
    _file_keys: dict[str, Any] | None = PrivateAttr(default=None)  # jwks_file's keys, read when validated
    _file_digest: str = PrivateAttr(default="")  # of the bytes read: the control plane notices a change

    @property
    def key_set(self) -> dict[str, Any] | None:
        """The provider's own keys, from `jwks` or `jwks_file` (None: they come from `jwks_uri`)."""
        return self.jwks if self.jwks is not None else self._file_keys

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, jwks: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if jwks is None else _checked_jwks(jwks, "jwks")

    @field_validator("clock_skew")
    @classmethod
    def _skew(cls, skew: float) -> float:
        if skew < 1:
            raise ValueError("clock_skew must be at least 1s (Envoy's jwt_authn reads 0 as its default, 60s)")
        return skew

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
        if self.jwks_ca_file is not None and not Path(self.jwks_ca_file).is_file():
            raise ValueError(f"jwks_ca_file {self.jwks_ca_file!r} does not exist")
        if self.jwks_file is not None:
            self._file_keys, self._file_digest = read_jwks_file(self.jwks_file)
        if self.jwks_ca_file is not None and self.jwks_uri is None:
            raise ValueError("jwks_ca_file only goes with jwks_uri")
        keys = self.key_set
        hmac = self.algorithms is not None and "HS256" in self.algorithms
        if hmac and (keys is None or not _has_oct(keys)):
            raise ValueError("HS256 needs an explicit oct key in jwks or jwks_file (never from jwks_uri)")
        if keys is not None and not stamped_jwks(keys, self.algorithms)["keys"]:
            where = "jwks" if self.jwks is not None else f"jwks_file {self.jwks_file!r}"
            raise ValueError(f"no key in {where} may verify any of the allowed algorithms")
        if self.verify == "native":
            if self.required_claims:
                raise ValueError("required_claims: Envoy's jwt_authn cannot require claims; set verify: python")
            if self.algorithms is not None and keys is None:
                raise ValueError(
                    "algorithms: Envoy fetches jwks_uri keys itself and cannot be limited to them; "
                    "list the keys in jwks or jwks_file, or set verify: python"
                )
        return self


def _has_oct(jwks: dict[str, Any]) -> bool:
    return any(key.get("kty") == "oct" for key in jwks["keys"])


def _checked_jwks(jwks: Any, where: str) -> dict[str, Any]:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError(f"{where} must be a JWKS object with a non-empty 'keys' list")
    for index, key in enumerate(keys):
        if not isinstance(key, dict) or key.get("kty") not in _KEY_TYPES:
            raise ValueError(f"{where} key {index}: kty must be one of {sorted(_KEY_TYPES)}")
    return dict(jwks)


def read_jwks_file(path: str) -> tuple[dict[str, Any], str]:
    """A jwks_file's keys and a digest of its bytes (raises ValueError saying what is wrong with the file)."""
    where = f"jwks_file {path!r}"
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_JWKS_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{where} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_JWKS_FILE_BYTES:
        raise ValueError(f"{where} is larger than {MAX_JWKS_FILE_BYTES} bytes")
    try:
        jwks = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{where} is not JSON: {exc}") from None
    return _checked_jwks(jwks, where), file_digest(data)


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def header_locations(provider: Provider) -> tuple[tuple[str, str], ...]:
    """The provider's token headers as (lower-case name, prefix), each once, in the order jwt_authn reads
    them (sorted by name + prefix): both paths look in this order (see xgate.authz.extract)."""
    pairs = {(header.name.lower(), header.prefix) for header in provider.headers}
    return tuple(sorted(pairs, key=lambda pair: pair[0] + pair[1]))


def jwks_files(defaults: JwtSettings | None) -> dict[str, str]:
    """The jwks_file paths some defaults read, each with the digest of what was read (the control plane
    watches them, see xgate.sources.watched)."""
    providers = defaults.providers if defaults is not None else ()
    return {provider.jwks_file: provider._file_digest for provider in providers if provider.jwks_file is not None}


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

    def global_names(self, settings: JwtSettings) -> list[tuple[str, str, Model]]:
        return [(f"providers.{i}", f"jwt provider {p.name!r}", p) for i, p in enumerate(settings.providers)]

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
        max_token_bytes=provider.max_token_bytes,
    )
    if provider.issuer is not None:
        resource.issuer = provider.issuer
    if (keys := provider.key_set) is not None:
        # A jwks_file's keys too: read once, by the control plane, so both paths verify with the same keys.
        resource.jwks_json = json.dumps(keys, sort_keys=True)
    elif provider.jwks_uri is not None:
        resource.jwks_uri = provider.jwks_uri
    if provider.max_lifetime is not None:
        resource.max_lifetime.CopyFrom(duration(provider.max_lifetime))
    return resource


def provider_from_resource(resource: authz_pb2.JwtProvider) -> Provider:
    """The provider back from its resource; raises ValueError (a pydantic ValidationError among them) when it
    does not make a valid one here, e.g. its jwks_ca_file does not exist on this machine."""
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
        "clock_skew": seconds(resource.clock_skew) or 60.0,  # unset: jwt_authn's default, as Envoy reads 0
        "require_exp": resource.require_exp,
        "max_lifetime": seconds(resource.max_lifetime) if resource.HasField("max_lifetime") else None,
        "max_token_bytes": resource.max_token_bytes or DEFAULT_MAX_TOKEN_BYTES,
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
