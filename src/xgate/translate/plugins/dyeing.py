"""The dyeing plugin: give each request a release stage (canary, beta, stable...) and route by it.

Rules live in the global or listener defaults, first match wins, the `default` stage when none matches. The
stage goes to the upstream in a header (`x-xgate-stage`) and as a W3C `baggage` member, and a route's
`canary` entries send a stage to another upstream.

Two ways to run the rules, with the same answers (tests hold both to that):
- native: rules on headers, cookies and query parameters become route matches. Each route is expanded into
  one Envoy route per rule, in rule order, plus one for the default; Envoy takes the first route that
  matches, which is first-match-wins. The route entry itself writes the stage header: no filter, no
  Python per request.
- ext_proc: rules Envoy cannot express (source ranges, JWT claims, sticky percentages, trust by source)
  run in `xgate dyeing`, Envoy's ext_proc service. It sees only the request headers, sets the stage
  and clears the route cache, and the route's entries match on the stage header.

A stage sent by the client is removed before routing unless the client is trusted (`trust`).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2 as mutation_rules_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import extension_pb2 as extension_v3
from envoy.config.core.v3 import grpc_service_pb2 as grpc_service_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2 as ext_proc_v3
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as processing_mode_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early_mutation_v3,
)
from envoy.type.matcher.v3 import regex_pb2 as regex_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message
from pydantic import BeforeValidator, Field, StringConstraints, field_validator, model_validator

from xgate.config.schema import Canary, Model, Route, Stage, exactly_one
from xgate.config.types import Duration, Regex
from xgate.translate import names
from xgate.translate.plugins.base import Plugin, pack
from xgate.translate.plugins.services import service_cluster
from xgate.translate.protos import duration

SERVICE_CLUSTER = "xgate-dyeing"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
DEFAULT_SERVICE = "127.0.0.1:18002"
JWT_METADATA = "envoy.filters.http.jwt_authn"
SOURCE_ATTRIBUTE = "source.address"
SETTINGS_METADATA = "x-xgate-dyeing"
_HEADER_NAME = r"^[a-z0-9!#$%&'*+.^_`|~-]+$"
_COOKIE_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
_SET = base_v3.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_ADD = base_v3.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
SCALE = 10_000  # sticky buckets: percentages to 0.01


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


LowerHeaderName = Annotated[str, BeforeValidator(_lower), StringConstraints(pattern=_HEADER_NAME)]


class HeaderRule(Model):
    """The request header `name` equals `exact`, fully matches `regex`, or is `present`."""

    name: LowerHeaderName
    exact: str | None = None
    regex: Regex | None = None
    present: Literal[True] | None = None

    @model_validator(mode="after")
    def _one(self) -> HeaderRule:
        exactly_one(self, ("exact", "regex", "present"), f"header {self.name}")
        return self


class CookieRule(Model):
    """The cookie `name` has the value `exact`, or is `present`."""

    name: str = Field(pattern=_COOKIE_NAME)
    exact: str | None = Field(default=None, pattern=r"^[^;,\s]*$")
    present: Literal[True] | None = None

    @model_validator(mode="after")
    def _one(self) -> CookieRule:
        exactly_one(self, ("exact", "present"), f"cookie {self.name}")
        return self


class QueryRule(Model):
    """The first query parameter `name` (as sent, not decoded) equals `exact`, or is `present`."""

    name: str = Field(min_length=1, pattern=r"^[^&=#\s]+$")
    exact: str | None = Field(default=None, pattern=r"^[^&#\s]*$")
    present: Literal[True] | None = None

    @model_validator(mode="after")
    def _one(self) -> QueryRule:
        exactly_one(self, ("exact", "present"), f"query parameter {self.name}")
        return self


class ClaimRule(Model):
    """A verified JWT claim `equals` a value, or `contains` one (a list claim holding it, or a space-separated
    string claim such as `scope` listing it)."""

    name: str = Field(min_length=1)
    equals: str | int | bool | None = None
    contains: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ClaimRule:
        exactly_one(self, ("equals", "contains"), f"claim {self.name}")
        return self


class StickyKey(Model):
    """Who a request belongs to: a verified JWT claim, a header or a cookie."""

    claim: str | None = None
    header: LowerHeaderName | None = None
    cookie: str | None = Field(default=None, pattern=_COOKIE_NAME)

    @model_validator(mode="after")
    def _one(self) -> StickyKey:
        exactly_one(self, ("claim", "header", "cookie"), "key")
        return self


class StickyRule(Model):
    """`percent` of the keys, always the same ones: a key's bucket is a hash of `seed` and the key, so a user
    keeps their stage, and raising the percentage only adds users. A request without the key does not match."""

    percent: float = Field(ge=0, le=100)
    key: StickyKey
    seed: str = ""


class Rule(Model):
    """One condition and the stage it gives."""

    stage: Stage
    header: HeaderRule | None = None
    cookie: CookieRule | None = None
    query: QueryRule | None = None
    source: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    claim: ClaimRule | None = None
    sticky: StickyRule | None = None

    @model_validator(mode="after")
    def _one(self) -> Rule:
        exactly_one(self, CONDITIONS, f"rule for stage {self.stage}")
        return self

    @property
    def native(self) -> bool:
        """Envoy can evaluate it as a route match."""
        return self.header is not None or self.cookie is not None or self.query is not None


CONDITIONS = ("header", "cookie", "query", "source", "claim", "sticky")


class DyeingSettings(Model):
    """Defaults (global or listener): the rules and where the stage goes. A route can only switch dyeing
    off (`dyeing: false`). `mode`: auto (native when every rule allows it), native, or ext_proc.
    `trust`: whose stage header is kept (none, all, or source ranges). `on_error`: what the ext_proc path
    does when the service fails or is late: `pass` (undyed: the default stage's route, no stage header) or
    `deny` (Envoy answers 500)."""

    header: LowerHeaderName = "x-xgate-stage"
    baggage: str | None = Field(default="xgate-stage", pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    default: Stage = "stable"
    trust: Literal["none", "all"] | tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = "none"
    rules: tuple[Rule, ...] = ()
    mode: Literal["auto", "native", "ext_proc"] = "auto"
    service: str = Field(default=DEFAULT_SERVICE, pattern=r"^[^:\s]+:\d{1,5}$")
    timeout: Duration = 0.2
    on_error: Literal["pass", "deny"] = "pass"

    @field_validator("trust", mode="before")
    @classmethod
    def _ranges(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _native(self) -> DyeingSettings:
        if self.mode == "native":
            for index, rule in enumerate(self.rules):
                if not rule.native:
                    kind = next(name for name in CONDITIONS if getattr(rule, name) is not None)
                    raise ValueError(f"rules.{index}: a {kind} rule needs mode ext_proc (or auto)")
            if isinstance(self.trust, tuple):
                raise ValueError("trust by source range needs mode ext_proc (or auto)")
        return self

    @property
    def uses_service(self) -> bool:
        """The rules run in the ext_proc service (else they compile to route matches)."""
        if self.mode != "auto":
            return self.mode == "ext_proc"
        return isinstance(self.trust, tuple) or not all(rule.native for rule in self.rules)


@functools.lru_cache(maxsize=256)
def settings_key(settings: DyeingSettings) -> str:
    """Names one version of the dyeing settings: Envoy sends it to the service with each request (gRPC
    metadata `x-xgate-dyeing`), and the service keeps the rules of every version the config holds by it."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


def cookie_regex(rule: CookieRule) -> str:
    """The RE2 pattern, matched against the whole Cookie header, of a cookie rule (shared with the service,
    so both paths read cookies alike)."""
    value = re.escape(rule.exact) if rule.exact is not None else "[^;]*"
    return rf"(?:.*;\s*)?{re.escape(rule.name)}={value}(?:;.*)?"


_BUILT_IN = DyeingSettings()


class DyeingPlugin(Plugin):
    name: ClassVar[str] = "dyeing"
    filter_name: ClassVar[str] = EXT_PROC_FILTER
    settings: ClassVar[type[Model]] = DyeingSettings

    def http_filter(self) -> hcm_v3.HttpFilter:
        raise NotImplementedError("dyeing's filter depends on its settings: see http_filters")

    def http_filters(self, defaults: Model | None) -> list[hcm_v3.HttpFilter]:
        settings = defaults if isinstance(defaults, DyeingSettings) else _BUILT_IN
        if not settings.uses_service:
            return []
        config = ext_proc_v3.ExternalProcessor(
            grpc_service=grpc_service_v3.GrpcService(
                envoy_grpc=grpc_service_v3.GrpcService.EnvoyGrpc(cluster_name=SERVICE_CLUSTER),
                timeout=duration(settings.timeout),
            ),
            failure_mode_allow=settings.on_error == "pass",
            processing_mode=processing_mode_v3.ProcessingMode(
                request_header_mode=processing_mode_v3.ProcessingMode.SEND,
                response_header_mode=processing_mode_v3.ProcessingMode.SKIP,
                request_body_mode=processing_mode_v3.ProcessingMode.NONE,
                response_body_mode=processing_mode_v3.ProcessingMode.NONE,
                request_trailer_mode=processing_mode_v3.ProcessingMode.SKIP,
                response_trailer_mode=processing_mode_v3.ProcessingMode.SKIP,
            ),
            message_timeout=duration(settings.timeout),
            request_attributes=[SOURCE_ATTRIBUTE],
            metadata_options=ext_proc_v3.MetadataOptions(
                forwarding_namespaces=ext_proc_v3.MetadataOptions.MetadataNamespaces(untyped=[JWT_METADATA])
            ),
            # The service may only touch the stage and baggage headers.
            mutation_rules=mutation_rules_v3.HeaderMutationRules(
                allow_expression=regex_v3.RegexMatcher(regex=f"^({re.escape(settings.header)}|baggage)$"),
                disallow_is_error=wrappers_pb2.BoolValue(value=True),
            ),
            route_cache_action=ext_proc_v3.ExternalProcessor.CLEAR,
        )
        return [hcm_v3.HttpFilter(name=self.filter_name, typed_config=pack(config))]

    def patch_connection_manager(self, defaults: Model | None, manager: hcm_v3.HttpConnectionManager) -> None:
        """Remove the stage header a client sent before anything routes on it, unless every client is trusted
        (trusted source ranges are decided by the service, which sees the address)."""
        settings = defaults if isinstance(defaults, DyeingSettings) else _BUILT_IN
        if settings.trust != "none":
            return
        mutation = early_mutation_v3.HeaderMutation(
            mutations=[mutation_rules_v3.HeaderMutation(remove=settings.header)]
        )
        manager.early_header_mutation_extensions.append(
            extension_v3.TypedExtensionConfig(name="xgate.dyeing.untrusted-stage", typed_config=pack(mutation))
        )

    def route_config(self, settings: Model) -> Message:
        raise NotImplementedError("dyeing has no per-route config when on: see route_configs")

    def route_configs(self, settings: Model) -> dict[str, Message]:
        assert isinstance(settings, DyeingSettings)
        if not settings.uses_service:
            return {}
        # The rules travel by key with each route (RDS), so changing a rule never changes the listener.
        key = base_v3.HeaderValue(key=SETTINGS_METADATA, value=settings_key(settings))
        return {
            self.filter_name: ext_proc_v3.ExtProcPerRoute(
                overrides=ext_proc_v3.ExtProcOverrides(grpc_initial_metadata=[key])
            )
        }

    def disabled_route_configs(self) -> dict[str, Message]:
        return {self.filter_name: ext_proc_v3.ExtProcPerRoute(disabled=True)}

    def check(self, settings: Model, defaults: Model | None, inherited: bool) -> list[str]:
        if not inherited:
            return ["dyeing is set up in the global or listener plugin defaults; a route can only switch it off"]
        return []

    def expand_route(
        self, settings: Model, route: Route, proto: route_components_v3.Route
    ) -> list[route_components_v3.Route]:
        assert isinstance(settings, DyeingSettings)
        return expand(settings, route, proto)

    def clusters(self, defaults: Model | None) -> list[cluster_v3.Cluster]:
        settings = defaults if isinstance(defaults, DyeingSettings) else _BUILT_IN
        if not settings.uses_service:
            return []
        return [service_cluster(SERVICE_CLUSTER, settings.service, max_streams=100)]


def expand(settings: DyeingSettings, route: Route, proto: route_components_v3.Route) -> list[route_components_v3.Route]:
    """The Envoy routes of one dyed route, in match order (see the module docstring)."""
    if not proto.HasField("route"):
        return [proto]  # a redirect or direct response: no upstream sees a stage, no stage changes the answer
    canaries = {canary.stage: canary for canary in route.canary}
    entries: list[route_components_v3.Route] = []
    if settings.uses_service or settings.trust == "all":
        # The stage header is already there (the service wrote it, or a trusted hop sent it).
        for stage in sorted(canaries):
            entries.append(_entry(proto, route, canaries.get(stage), [_stage_matcher(settings, stage)], None, settings))
        if settings.uses_service:
            entries.append(proto)
            return entries
        present = route_components_v3.HeaderMatcher(name=settings.header, present_match=True)
        entries.append(_entry(proto, route, None, [present], None, settings))
    for rule in settings.rules:
        entries.append(_entry(proto, route, canaries.get(rule.stage), _conditions(rule), rule.stage, settings))
    entries.append(_entry(proto, route, canaries.get(settings.default), [], settings.default, settings))
    return entries


def _entry(
    proto: route_components_v3.Route,
    route: Route,
    canary: Canary | None,
    conditions: list[route_components_v3.HeaderMatcher | route_components_v3.QueryParameterMatcher],
    stage: str | None,
    settings: DyeingSettings,
) -> route_components_v3.Route:
    entry = route_components_v3.Route()
    entry.CopyFrom(proto)
    for condition in conditions:
        if isinstance(condition, route_components_v3.QueryParameterMatcher):
            entry.match.query_parameters.append(condition)
        else:
            entry.match.headers.append(condition)
    if canary is not None:
        entry.route.ClearField("weighted_clusters")
        entry.route.cluster = (
            names.fallback_cluster(canary.upstream, route.stable_upstream or canary.upstream)
            if canary.fallback
            else names.cluster(canary.upstream)
        )
    if stage is not None:
        entry.request_headers_to_add.append(_header(settings.header, stage, _SET))
        if settings.baggage:
            entry.request_headers_to_add.append(_header("baggage", f"{settings.baggage}={stage}", _ADD))
    return entry


def _header(key: str, value: str, action: Any) -> base_v3.HeaderValueOption:
    return base_v3.HeaderValueOption(header=base_v3.HeaderValue(key=key, value=value), append_action=action)


def _stage_matcher(settings: DyeingSettings, stage: str) -> route_components_v3.HeaderMatcher:
    return route_components_v3.HeaderMatcher(name=settings.header, string_match=string_v3.StringMatcher(exact=stage))


def _conditions(rule: Rule) -> list[route_components_v3.HeaderMatcher | route_components_v3.QueryParameterMatcher]:
    if rule.header is not None:
        header = route_components_v3.HeaderMatcher(name=rule.header.name)
        if rule.header.present:
            header.present_match = True
        elif rule.header.regex is not None:
            header.string_match.safe_regex.regex = rule.header.regex
        else:
            header.string_match.exact = rule.header.exact or ""
        return [header]
    if rule.cookie is not None:
        matcher = string_v3.StringMatcher(safe_regex=regex_v3.RegexMatcher(regex=cookie_regex(rule.cookie)))
        return [route_components_v3.HeaderMatcher(name="cookie", string_match=matcher)]
    assert rule.query is not None, "only native rules become route matches"
    query = route_components_v3.QueryParameterMatcher(name=rule.query.name)
    if rule.query.present:
        query.present_match = True
    else:
        query.string_match.exact = rule.query.exact or ""
    return [query]
