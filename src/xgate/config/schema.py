"""Schema v1 of the user's config objects: listeners, upstreams, routes (pydantic v2, strict, frozen)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# Model, HealthCheck and Retries live apart (config.base, config.resilience) and are re-exported from here.
from xgate.config.base import Model as Model
from xgate.config.base import exactly_one as exactly_one
from xgate.config.grpc import GrpcMatch, GrpcRoute, with_grpc_path
from xgate.config.limits import ListenerLimits
from xgate.config.resilience import CircuitBreakers, Method, OutlierDetection
from xgate.config.resilience import HealthCheck as HealthCheck
from xgate.config.resilience import Retries as Retries
from xgate.config.tls import ListenerTls, Secret, UpstreamTls
from xgate.config.types import Duration, Name, Regex

# -- upstreams ---------------------------------------------------------------------------------------------


ENDPOINT_PATTERN = r"^.+:[0-9]+$"


class Endpoint(Model):
    """One address of an upstream; `"10.0.0.1:8080"` is short for `{host: 10.0.0.1, port: 8080}`."""

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=1, le=128)
    # Failover order: traffic goes to the lowest priority with healthy endpoints (0: primaries, 1: backups...).
    priority: int = Field(default=0, ge=0, le=127)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The short form is in the JSON schema too, so editors accept `"10.0.0.1:8080"`."""
        return {"anyOf": [{"type": "string", "pattern": ENDPOINT_PATTERN}, handler(schema)]}

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"endpoint {value!r} is not host:port")
            return {"host": host.strip("[]"), "port": int(port)}
        return value

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


class Upstream(Model):
    """A set of endpoints Envoy balances over (an Envoy cluster). Resilience settings: see config.resilience."""

    name: Name
    endpoints: tuple[Endpoint, ...] = Field(min_length=1)
    protocol: Literal["http1", "http2"] = "http1"
    lb: Literal["round_robin", "least_request", "random"] = "round_robin"
    connect_timeout: Duration = 1.0
    health_check: HealthCheck | None = None
    tls: UpstreamTls | None = None
    outlier_detection: OutlierDetection | None = Field(default_factory=lambda: OutlierDetection())
    circuit_breakers: CircuitBreakers = Field(default_factory=lambda: CircuitBreakers())
    panic_threshold: int = Field(default=50, ge=0, le=100)
    idle_timeout: Duration | None = None

    @model_validator(mode="after")
    def _grpc_checks(self) -> Upstream:
        if self.health_check is not None and self.health_check.type == "grpc" and self.protocol != "http2":
            raise ValueError("health_check: grpc health checks need protocol: http2")
        return self


# -- routes --------------------------------------------------------------------------------------------------


class PathMatch(Model):
    prefix: str | None = None
    exact: str | None = None
    regex: Regex | None = None

    @model_validator(mode="after")
    def _one(self) -> PathMatch:
        exactly_one(self, ("prefix", "exact", "regex"), "path")
        for value in (self.prefix, self.exact):
            if value is not None and not value.startswith("/"):
                raise ValueError(f"path {value!r} must start with '/'")
        return self


class HeaderMatch(Model):
    name: str = Field(min_length=1, pattern=r"^:?[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    exact: str | None = None
    prefix: str | None = None
    regex: Regex | None = None
    present: bool | None = None
    invert: bool = False

    @model_validator(mode="after")
    def _one(self) -> HeaderMatch:
        exactly_one(self, ("exact", "prefix", "regex", "present"), f"header {self.name}")
        return self


class QueryMatch(Model):
    name: str = Field(min_length=1)
    exact: str | None = None
    regex: Regex | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> QueryMatch:
        exactly_one(self, ("exact", "regex", "present"), f"query parameter {self.name}")
        return self


# Methods are read in any case (`get` is GET): the JSON schema offers the usual spelling and accepts any case.
_ANY_CASE = "|".join("".join(f"[{c.upper()}{c.lower()}]" for c in method) for method in get_args(Method))
AnyCaseMethod = Annotated[
    str,
    WithJsonSchema({"anyOf": [{"enum": list(get_args(Method))}, {"type": "string", "pattern": f"^({_ANY_CASE})$"}]}),
]


class Match(Model):
    hosts: tuple[str, ...] = ("*",)
    path: PathMatch = Field(default_factory=lambda: PathMatch(prefix="/"))
    methods: tuple[Method, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()
    grpc: GrpcMatch | None = None

    _grpc_path = model_validator(mode="after")(with_grpc_path)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        if not hosts:
            raise ValueError("hosts must not be empty (leave it out to match any host)")
        for host in hosts:
            if host != "*" and ("*" in host[1:-1] or not host.strip("*.").strip()):
                raise ValueError(f"host {host!r}: a wildcard may only lead ('*.example.com') or trail")
        return tuple(host.lower() for host in hosts)

    @field_validator("methods", mode="before", json_schema_input_type=tuple[AnyCaseMethod, ...])
    @classmethod
    def _upper(cls, methods: Any) -> Any:
        if isinstance(methods, list | tuple):
            return tuple(m.upper() if isinstance(m, str) else m for m in methods)
        return methods


class WeightedTarget(Model):
    upstream: Name
    weight: int = Field(ge=0, le=10000)


class Redirect(Model):
    scheme: Literal["http", "https"] | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str | None = None
    code: Literal[301, 302, 303, 307, 308] = 302
    strip_query: bool = False


class DirectResponse(Model):
    status: int = Field(ge=200, le=599)
    body: str = Field(default="", max_length=4096)


MAX_HEADER_VALUE = 8192
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
# Envoy refuses to add, set or remove these; checked here so such a config never reaches it.
_PROTECTED_HEADERS = frozenset({"host"})


def _check_header_name(name: str) -> str:
    if name.startswith(":"):
        raise ValueError(f"header {name!r}: pseudo-headers cannot be changed")
    if not _HEADER_NAME.match(name):
        raise ValueError(f"header name {name!r} is not a valid HTTP header name")
    if name.lower() in _PROTECTED_HEADERS:
        raise ValueError(f"header {name!r} cannot be changed by header rules")
    return name


class HeaderOps(Model):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()

    @field_validator("set", "add")
    @classmethod
    def _pairs(cls, pairs: dict[str, str]) -> dict[str, str]:
        for name, value in pairs.items():
            _check_header_name(name)
            if any(char in value for char in "\r\n\0"):
                raise ValueError(f"header {name!r}: the value contains CR, LF or NUL")
            if len(value) > MAX_HEADER_VALUE:
                raise ValueError(f"header {name!r}: the value is longer than {MAX_HEADER_VALUE} characters")
        return pairs

    @field_validator("remove")
    @classmethod
    def _names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_header_name(name) for name in names)


class HeaderRules(Model):
    request: HeaderOps = Field(default_factory=lambda: HeaderOps())
    response: HeaderOps = Field(default_factory=lambda: HeaderOps())


ACTIONS = ("upstream", "split", "redirect", "direct_response")
STAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
Stage = Annotated[str, StringConstraints(pattern=STAGE_PATTERN)]


class Canary(Model):
    """Requests dyed with `stage` go to `upstream`. With `fallback` (the default) they go to the route's stable
    upstream while the canary upstream has no healthy endpoint; that needs `health_check` on it."""

    stage: Stage
    upstream: Name
    fallback: bool = True


class Route(Model):
    """A match and what to do with the requests it matches."""

    name: Name
    listeners: tuple[Name, ...] = ()
    priority: int = Field(default=0, ge=-1000, le=1000)
    match: Match = Field(default_factory=lambda: Match())
    upstream: Name | None = None
    split: tuple[WeightedTarget, ...] | None = None
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    timeout: Duration | None = None
    retries: Retries | None = Field(default_factory=lambda: Retries())
    idle_timeout: Duration | None = None
    max_stream_duration: Duration | None = None
    headers: HeaderRules = Field(default_factory=lambda: HeaderRules())
    websocket: bool = False
    canary: tuple[Canary, ...] = ()
    grpc: GrpcRoute | None = None
    plugins: dict[str, Any] = Field(default_factory=dict)

    @field_validator("canary", mode="before", json_schema_input_type=Canary | tuple[Canary, ...])
    @classmethod
    def _one_canary(cls, value: Any) -> Any:
        # A tuple, not a list: after a before-validator pydantic checks strictly (see load.validate_model).
        return (value,) if isinstance(value, dict) else tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _action(self) -> Route:
        exactly_one(self, ACTIONS, "action")
        if self.grpc is not None and self.grpc.retry_on and (self.retries is None or self.retries.attempts == 0):
            raise ValueError("grpc.retry_on: retries are switched off on this route (retries: attempts above 0)")
        if self.split is not None:
            if not self.split:
                raise ValueError("split: list at least one upstream")
            if sum(target.weight for target in self.split) == 0:
                raise ValueError("split: the weights add up to 0")
        if self.canary:
            if self.upstream is None and self.split is None:
                raise ValueError(
                    "canary: needs an upstream or a split to fall back to (not a redirect or direct_response)"
                )
            stages = [canary.stage for canary in self.canary]
            if len(stages) != len(set(stages)):
                raise ValueError("canary: each stage may appear once")
        return self

    @property
    def stable_upstream(self) -> str | None:
        """Where requests of no canary stage go when there is one place: `upstream`, else the split's heaviest
        target (the first of equals); canary fallbacks go there."""
        if self.upstream is not None:
            return self.upstream
        if self.split:
            return max(self.split, key=lambda target: target.weight).upstream
        return None

    @property
    def upstream_refs(self) -> tuple[str, ...]:
        canaries = tuple(canary.upstream for canary in self.canary)
        if self.upstream is not None:
            return (self.upstream, *canaries)
        return tuple(target.upstream for target in self.split or ()) + canaries


# -- listeners ---------------------------------------------------------------------------------------------


ACCESS_LOG_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_ACCESS_LOG_OPERATOR = re.compile(
    r"^%((REQ|RESP|TRAILER)\([A-Za-z0-9:_.-]+(\?[A-Za-z0-9:_.-]+)?\)(:\d+)?"
    r"|(DYNAMIC_METADATA|FILTER_STATE|CLUSTER_METADATA|UPSTREAM_METADATA|ENVIRONMENT)\([^()%\s]+\)(:\d+)?"
    r"|(?P<bare>[A-Z][A-Z0-9_]*))%$"
)
# The operators without arguments xgate lets through (a subset of Envoy's; an unknown one is a config error).
# fmt: off
_ACCESS_LOG_BARE = frozenset((
    "START_TIME", "REQUEST_DURATION", "REQUEST_TX_DURATION", "RESPONSE_DURATION", "RESPONSE_TX_DURATION",
    "DURATION", "BYTES_RECEIVED", "BYTES_SENT", "PROTOCOL", "UPSTREAM_PROTOCOL", "RESPONSE_CODE",
    "RESPONSE_CODE_DETAILS", "RESPONSE_FLAGS", "RESPONSE_FLAGS_LONG", "CONNECTION_TERMINATION_DETAILS",
    "ROUTE_NAME", "VIRTUAL_CLUSTER_NAME", "UPSTREAM_HOST", "UPSTREAM_CLUSTER", "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_TRANSPORT_FAILURE_REASON", "UPSTREAM_REQUEST_ATTEMPT_COUNT", "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS", "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_TLS_VERSION", "DOWNSTREAM_PEER_SUBJECT", "REQUESTED_SERVER_NAME", "HOSTNAME", "TRACE_ID",
    "STREAM_ID", "CONNECTION_ID", "UPSTREAM_CONNECTION_ID",
))
# fmt: on


def _check_access_log_format(name: str, value: str) -> None:
    if not value or any(char in value for char in "\r\n\0"):
        raise ValueError(f"field {name!r}: the format is empty or contains CR, LF or NUL")
    # Envoy refuses the whole listener for an operator it does not know: checked here instead.
    for operator in re.findall(r"%[^%]*%?", value):
        found = _ACCESS_LOG_OPERATOR.match(operator)
        if found is None or (found.group("bare") is not None and found.group("bare") not in _ACCESS_LOG_BARE):
            raise ValueError(
                f"field {name!r}: {operator!r} is not an Envoy command operator xgate accepts (e.g. %REQ(name)%, "
                "%RESP(name)%, %DYNAMIC_METADATA(namespace:key)%, %FILTER_STATE(key)%, %ROUTE_NAME%)"
            )


class AccessLog(Model):
    """Envoy's access log of one listener: a JSON line per request (see translate/observability.py for the
    fields) to `path` (stdout, stderr, or an absolute file path), for `sampling` percent of requests; `fields`
    adds fields of your own, each an Envoy format string such as "%REQ(x-tenant)%"."""

    path: str = Field(default="stdout", min_length=1, max_length=4096)
    sampling: float = Field(default=100.0, ge=0, le=100)
    fields: dict[str, str] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        if path not in ("stdout", "stderr") and not path.startswith("/"):
            raise ValueError(f"path {path!r}: use stdout, stderr or an absolute file path")
        return path

    @field_validator("fields")
    @classmethod
    def _fields(cls, fields: dict[str, str]) -> dict[str, str]:
        for name, value in fields.items():
            if not ACCESS_LOG_FIELD.match(name):
                raise ValueError(f"field name {name!r}: use letters, digits, _ . and - (at most 64)")
            _check_access_log_format(name, value)
        return fields


class Listener(Model):
    """A port Envoy serves HTTP on; routes attach to it."""

    name: Name
    address: str = "0.0.0.0"
    port: int = Field(ge=0, le=65535)
    tls: ListenerTls | None = None
    limits: ListenerLimits | None = None
    plugins: dict[str, Any] = Field(default_factory=dict)
    access_log: AccessLog | None = None  # observability: Envoy's JSON access log of this listener
    # Downstream connections without a request for this long are closed; streams (requests) that send
    # nothing either way for stream_idle_timeout are reset. None: Envoy's defaults (1 h, 5 min).
    idle_timeout: Duration | None = None
    stream_idle_timeout: Duration | None = None
    # per_host: one RouteConfiguration per host (Envoy's scoped routes), so a route change makes Envoy re-read
    # that host's table only; every route served here must then name exact hosts (see the README).
    route_tables: Literal["one", "per_host"] = "one"

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"address {address!r} is not an IP address") from None
        return address


KINDS: dict[str, type[Model]] = {"listener": Listener, "upstream": Upstream, "route": Route, "secret": Secret}


class Document(Model):
    """A whole config file; used to export the JSON schema for editors (files are read object by object)."""

    xgate: Literal["v1"] = "v1"
    plugins: dict[str, Any] = Field(default_factory=dict)
    listeners: tuple[Listener, ...] = ()
    upstreams: tuple[Upstream, ...] = ()
    routes: tuple[Route, ...] = ()
    secrets: tuple[Secret, ...] = ()
