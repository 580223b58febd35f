"""The dyeing plugin's settings and contract: rules, trust, where the stage goes, and what Envoy's config and
the ext_proc service share (the settings key, the cookie pattern, the sticky scale).

Rules live in the global or listener defaults, first match wins, the `default` stage when none matches. Rules on
headers, cookies and query parameters compile to route matches, and sticky rules to a small Lua filter that
computes the same bucket as the service (BLAKE2b, in LuaJIT): native, no Python per request. The others (source
ranges, claims, trust by source) run in `xgate dyeing`, Envoy's ext_proc service. Both give the same answers
(tests hold them to that).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

import re2
from google.protobuf import struct_pb2
from pydantic import BeforeValidator, Field, StringConstraints, field_validator, model_validator

from xgate.api import dyeing_pb2
from xgate.config.schema import HeaderMatch, Model, Route, Stage, exactly_one
from xgate.config.types import Duration, Regex
from xgate.plugins.base import PluginSpec

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
DEFAULT_SERVICE = "127.0.0.1:18002"
SOURCE_ATTRIBUTE = "source.address"
SETTINGS_METADATA = "x-xgate-dyeing"
_HEADER_NAME = r"^[a-z0-9!#$%&'*+.^_`|~-]+$"
_COOKIE_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
SCALE = 10_000  # sticky buckets: percentages to 0.01
# The native path's Lua filter marks each sticky rule a request satisfies in this dynamic metadata namespace
# (key STICKY_KEY % rule index, value true); the rule's route entries match on it. Clients cannot set it.
STICKY_NAMESPACE = "xgate.dyeing"
STICKY_KEY = "sticky_%d"


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

    @property
    def in_envoy(self) -> bool:
        """Envoy evaluates it without the service: a route match, or a sticky rule (its Lua filter)."""
        return self.native or self.sticky is not None


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
                if not rule.in_envoy:
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
        return isinstance(self.trust, tuple) or not all(rule.in_envoy for rule in self.rules)


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


class DyeingSpec(PluginSpec[DyeingSettings]):
    name: ClassVar[str] = "dyeing"
    settings = DyeingSettings

    def check(
        self, settings: DyeingSettings, defaults: DyeingSettings | None, inherited: bool, route: Route
    ) -> list[str]:
        if not inherited:
            return ["dyeing is set up in the global or listener plugin defaults; a route can only switch it off"]
        return native_problems(settings, route)


def stage_matches(settings: DyeingSettings, route: Route) -> list[HeaderMatch]:
    """The route's own matches on the stage header."""
    return [match for match in route.match.headers if match.name.lower() == settings.header]


def native_problems(settings: DyeingSettings, route: Route) -> list[str]:
    """Why the native path cannot serve a route that matches on the stage header (empty: it can)."""
    wanted = stage_matches(settings, route)
    if not wanted or settings.uses_service:
        return []
    stages = [rule.stage for rule in settings.rules] + [settings.default]
    kept = [all(satisfies(match, stage) for match in wanted) for stage in stages]
    problems = []
    for index, rule in enumerate(settings.rules):
        if kept[index] or not any(kept[index + 1 :]):
            continue  # kept, or dropped with nothing after it that must rule it out
        if rule.query is not None or (rule.header is not None and _matches_empty(rule)):
            what = "a query rule" if rule.query is not None else "a header rule that matches an empty value"
            problems.append(
                f"matching on {settings.header} natively needs dye rule {index} ({what}) inverted, which Envoy "
                "cannot do: use the dyeing plugin's mode: ext_proc on this listener"
            )
    return problems


def satisfies(match: HeaderMatch, stage: str) -> bool:
    """Does a stage header with this value satisfy the route's match on it (decided here, not in Envoy)?"""
    if match.present is not None:
        result = match.present
    elif match.exact is not None:
        result = stage == match.exact
    elif match.prefix is not None:
        result = stage.startswith(match.prefix)
    else:
        result = re2.fullmatch(match.regex or "", stage) is not None
    return result != match.invert


def _matches_empty(rule: Rule) -> bool:
    assert rule.header is not None
    if rule.header.present:
        return False
    if rule.header.regex is not None:
        return re2.fullmatch(rule.header.regex, "") is not None
    return rule.header.exact == ""


def settings_resource(settings: DyeingSettings) -> dyeing_pb2.DyeingSettings:
    """The settings as the dyeing service gets them (named by their key); what only Envoy needs (mode,
    service, timeout, on_error) stays out."""
    resource = dyeing_pb2.DyeingSettings(
        name=settings_key(settings), header=settings.header, default_stage=settings.default
    )
    if settings.baggage is not None:
        resource.baggage = settings.baggage
    if isinstance(settings.trust, tuple):
        resource.trust.ranges.cidrs.extend(str(network) for network in settings.trust)
    elif settings.trust == "all":
        resource.trust.all = True
    else:
        resource.trust.none = True
    resource.rules.extend(_rule_resource(rule) for rule in settings.rules)
    return resource


def _rule_resource(rule: Rule) -> dyeing_pb2.DyeRule:
    resource = dyeing_pb2.DyeRule(stage=rule.stage)
    if rule.header is not None:
        resource.header.name = rule.header.name
        _match(resource.header, exact=rule.header.exact, regex=rule.header.regex, present=rule.header.present)
    elif rule.cookie is not None:
        resource.cookie.name = rule.cookie.name
        _match(resource.cookie, exact=rule.cookie.exact, present=rule.cookie.present)
    elif rule.query is not None:
        resource.query.name = rule.query.name
        _match(resource.query, exact=rule.query.exact, present=rule.query.present)
    elif rule.source is not None:
        resource.source.cidrs.extend(str(network) for network in rule.source)
    elif rule.claim is not None:
        resource.claim.name = rule.claim.name
        if rule.claim.contains is not None:
            resource.claim.contains = rule.claim.contains
        elif isinstance(rule.claim.equals, bool):
            resource.claim.equals.bool_value = rule.claim.equals
        elif isinstance(rule.claim.equals, int):
            resource.claim.equals.number_value = rule.claim.equals
        else:
            resource.claim.equals.string_value = rule.claim.equals or ""
    elif rule.sticky is not None:
        resource.sticky.percent = rule.sticky.percent
        resource.sticky.seed = rule.sticky.seed
        key = rule.sticky.key
        if key.claim is not None:
            resource.sticky.claim = key.claim
        elif key.header is not None:
            resource.sticky.header = key.header
        elif key.cookie is not None:
            resource.sticky.cookie = key.cookie
    return resource


def _match(resource: Any, **values: Any) -> None:
    for field_name, value in values.items():
        if value is not None:
            setattr(resource, field_name, value)


def settings_from_resource(resource: dyeing_pb2.DyeingSettings) -> DyeingSettings:
    """The settings back from their resource (raises ValueError when the resource does not make valid settings),
    checked to carry the key they are named by."""
    trust: Any = "none"
    kind = resource.trust.WhichOneof("kind")
    if kind == "all":
        trust = "all"
    elif kind == "ranges":
        trust = list(resource.trust.ranges.cidrs)
    data: dict[str, Any] = {
        "header": resource.header,
        "baggage": resource.baggage if resource.HasField("baggage") else None,
        "default": resource.default_stage,
        "trust": trust,
        "rules": [_rule_data(rule) for rule in resource.rules],
        "mode": "ext_proc",
    }
    return DyeingSettings.model_validate(data)


def _rule_data(rule: dyeing_pb2.DyeRule) -> dict[str, Any]:
    condition = rule.WhichOneof("condition")
    data: dict[str, Any] = {"stage": rule.stage}
    if condition in ("header", "cookie", "query"):
        part = getattr(rule, condition)
        which = part.WhichOneof("match")
        data[condition] = {"name": part.name, which: getattr(part, which)} if which else {"name": part.name}
    elif condition == "source":
        data["source"] = list(rule.source.cidrs)
    elif condition == "claim":
        which = rule.claim.WhichOneof("match")
        value = _plain(rule.claim.equals) if which == "equals" else rule.claim.contains
        data["claim"] = {"name": rule.claim.name, which or "equals": value}
    elif condition == "sticky":
        sticky = rule.sticky
        key = sticky.WhichOneof("key")
        data["sticky"] = {"percent": sticky.percent, "seed": sticky.seed, "key": {key: getattr(sticky, key)}}
    return data


def _plain(value: struct_pb2.Value) -> str | int | bool:
    kind = value.WhichOneof("kind")
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        return int(value.number_value)  # claim rules compare integers (a JSON number without a fraction)
    return value.string_value
