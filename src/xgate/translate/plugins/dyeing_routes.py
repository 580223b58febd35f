"""Native dyeing: one config route -> the Envoy routes that give each request its stage and route it by it.

Each rule becomes one Envoy route (the route's match plus the rule's condition), in rule order, then one for
the default stage; Envoy takes the first route that matches, which is first-match-wins of the rules. The
entry writes the stage header and baggage, and sends canary stages to their upstream. A sticky rule's
condition is the dynamic metadata its Lua filter sets (dyeing_sticky).

A route may also match on the stage header itself (`match.headers: [{name: x-xgate-stage, exact: beta}]`).
On the native path that header does not exist yet when Envoy routes, so the stage is decided here instead:
only the entries whose stage satisfies the match are kept, and each one that follows a dropped entry also
requires that the dropped rule's condition does not hold (Envoy inverts header matches), so a request still
gets the stage the first matching rule gives it. A dropped rule that Envoy cannot invert (a query rule, a
header rule that also matches an empty value) is a config error with the way out: `mode: ext_proc`.

On the ext_proc path the service writes the header and clears the route cache; entries then only pick the
canary upstream by stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.type.matcher.v3 import metadata_pb2 as metadata_matcher_v3
from envoy.type.matcher.v3 import regex_pb2 as regex_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3
from envoy.type.matcher.v3 import value_pb2 as value_v3

from xgate.config.schema import Canary, Route
from xgate.plugins.dyeing import (
    STICKY_KEY,
    STICKY_NAMESPACE,
    DyeingSettings,
    Rule,
    cookie_regex,
    satisfies,
    stage_matches,
)
from xgate.translate import names

_SET = base_v3.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_ADD = base_v3.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD

Condition: TypeAlias = (
    route_components_v3.HeaderMatcher | route_components_v3.QueryParameterMatcher | metadata_matcher_v3.MetadataMatcher
)


def expand(settings: DyeingSettings, route: Route, proto: route_components_v3.Route) -> list[route_components_v3.Route]:
    """The Envoy routes of one dyed route, in match order."""
    if not proto.HasField("route"):
        return [proto]  # a redirect or direct response: no upstream sees a stage, no stage changes the answer
    canaries = {canary.stage: canary for canary in route.canary}
    entries: list[route_components_v3.Route] = []
    if settings.uses_service or settings.trust == "all":
        # The stage header is already there (the service wrote it, or a trusted hop sent it).
        for stage in sorted(canaries):
            entries.append(_entry(proto, route, canaries[stage], [_stage_is(settings, stage)], None, settings))
        if settings.uses_service:
            entries.append(proto)
            return entries
        present = route_components_v3.HeaderMatcher(name=settings.header, present_match=True)
        entries.append(_entry(proto, route, None, [present], None, settings))
    wanted = stage_matches(settings, route)
    base = _without_stage_matches(proto, settings) if wanted else proto
    dropped: list[tuple[int, Rule]] = []
    for index, rule in enumerate(settings.rules):
        if all(satisfies(match, rule.stage) for match in wanted):
            conditions = [*_negations(dropped), *_conditions(index, rule)]
            entries.append(_entry(base, route, canaries.get(rule.stage), conditions, rule.stage, settings))
        else:
            dropped.append((index, rule))
    if all(satisfies(match, settings.default) for match in wanted):
        conditions = _negations(dropped)
        entries.append(_entry(base, route, canaries.get(settings.default), conditions, settings.default, settings))
    return entries


def _without_stage_matches(proto: route_components_v3.Route, settings: DyeingSettings) -> route_components_v3.Route:
    base = route_components_v3.Route()
    base.CopyFrom(proto)
    kept = [header for header in base.match.headers if header.name != settings.header]
    del base.match.headers[:]
    base.match.headers.extend(kept)
    return base


def _entry(
    proto: route_components_v3.Route,
    route: Route,
    canary: Canary | None,
    conditions: Sequence[Condition],
    stage: str | None,
    settings: DyeingSettings,
) -> route_components_v3.Route:
    entry = route_components_v3.Route()
    entry.CopyFrom(proto)
    for condition in conditions:
        if isinstance(condition, route_components_v3.QueryParameterMatcher):
            entry.match.query_parameters.append(condition)
        elif isinstance(condition, metadata_matcher_v3.MetadataMatcher):
            entry.match.dynamic_metadata.append(condition)
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


def _stage_is(settings: DyeingSettings, stage: str) -> route_components_v3.HeaderMatcher:
    return route_components_v3.HeaderMatcher(name=settings.header, string_match=string_v3.StringMatcher(exact=stage))


def _conditions(index: int, rule: Rule) -> list[Condition]:
    if rule.sticky is not None:
        return [
            metadata_matcher_v3.MetadataMatcher(
                filter=STICKY_NAMESPACE,
                path=[metadata_matcher_v3.MetadataMatcher.PathSegment(key=STICKY_KEY % index)],
                value=value_v3.ValueMatcher(bool_match=True),
            )
        ]
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


def _negations(rules: list[tuple[int, Rule]]) -> list[Condition]:
    """The rules' conditions, each inverted: a missing header counts as empty, so "no such header" passes
    (native_problems refuses rules that match an empty value, and query rules, which Envoy cannot invert); a
    sticky rule's metadata inverted matches when the filter did not set it."""
    inverted: list[Condition] = []
    for index, rule in rules:
        (condition,) = _conditions(index, rule)
        if isinstance(condition, metadata_matcher_v3.MetadataMatcher):
            condition.invert = True
            inverted.append(condition)
            continue
        assert isinstance(condition, route_components_v3.HeaderMatcher), "query rules cannot be inverted"
        if condition.HasField("present_match"):
            inverted.append(route_components_v3.HeaderMatcher(name=condition.name, present_match=False))
            continue
        condition.invert_match = True
        condition.treat_missing_header_as_empty = True
        inverted.append(condition)
    return inverted
