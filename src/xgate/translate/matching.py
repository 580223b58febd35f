"""Envoy's route selection, applied offline to a translated RouteConfiguration: which route a request gets.

Held to a real Envoy by tests/integration/test_explain_differential.py (random tables x random requests).
The rules (Envoy 1.40, router/config_impl.cc and http/header_utility.cc):
- virtual host: the Host (:authority) lowercased, its port dropped (the tables set ignore_port_in_host_matching);
  an exact domain first, then the longest suffix wildcard (`*.example.com`, which needs at least one character
  before the suffix), then the longest prefix wildcard (`api.*`), then `*`;
- within it, the first route (in table order) whose path, headers and query parameters all match;
- path: on the path without its query string, case-sensitive: `prefix`, `path` (exact), `safe_regex` (full);
- a string matcher never matches a missing header, inverted or not (seen in the differential test); values of
  a repeated header are joined with ","; a present_match is `present == wanted`, then inverted;
- query parameters: the first value of the name (percent-decoded); present_match asks only for the name.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3

from xgate.errors import XgateError


class MatchingError(XgateError):
    """The table uses a matcher this module does not model: the answer would be a guess."""


@dataclass(frozen=True)
class Request:
    """What route selection looks at. `headers`: lowercased names, each with its values in order."""

    method: str
    authority: str
    path: str  # with the query string, as on the request line
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # The dynamic metadata earlier filters set ({filter: {key: value}}), e.g. which sticky dye rules matched.
    metadata: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """The value Envoy matches a header matcher on: pseudo-headers from the request line, repeated headers
        joined with ","; None when absent."""
        if name == ":method":
            return self.method
        if name in (":authority", "host"):
            return self.authority
        if name == ":path":
            return self.path
        values = self.headers.get(name)
        return ",".join(values) if values else None


@dataclass(frozen=True)
class Selection:
    virtual_host: route_components_v3.VirtualHost
    route: route_components_v3.Route
    index: int  # the route's position in its virtual host


def select(table: route_v3.RouteConfiguration, request: Request) -> Selection | None:
    """The route Envoy would choose for `request`, or None (Envoy answers 404)."""
    host = choose_virtual_host(table, request.authority)
    if host is None:
        return None
    path, _, query = request.path.partition("?")
    path = path.partition("#")[0]
    parameters = urllib.parse.parse_qs(query, keep_blank_values=True)
    for index, route in enumerate(host.routes):
        if route_matches(route.match, request, path, parameters):
            return Selection(host, route, index)
    return None


def choose_virtual_host(table: route_v3.RouteConfiguration, authority: str) -> route_components_v3.VirtualHost | None:
    host = authority.lower()
    if table.ignore_port_in_host_matching:
        host = _without_port(host)
    exact: dict[str, route_components_v3.VirtualHost] = {}
    suffixes: list[tuple[str, route_components_v3.VirtualHost]] = []
    prefixes: list[tuple[str, route_components_v3.VirtualHost]] = []
    default = None
    for virtual_host in table.virtual_hosts:
        for domain in virtual_host.domains:
            domain = domain.lower()
            if domain == "*":
                default = default or virtual_host
            elif domain.startswith("*"):
                suffixes.append((domain[1:], virtual_host))
            elif domain.endswith("*"):
                prefixes.append((domain[:-1], virtual_host))
            else:
                exact.setdefault(domain, virtual_host)
    if host in exact:
        return exact[host]
    # Longest first; among equal lengths the first in the table (Envoy keeps the first it reads).
    for suffix, virtual_host in sorted(suffixes, key=lambda item: -len(item[0])):
        if len(host) > len(suffix) and host.endswith(suffix):
            return virtual_host
    for prefix, virtual_host in sorted(prefixes, key=lambda item: -len(item[0])):
        if len(host) > len(prefix) and host.startswith(prefix):
            return virtual_host
    return default


def _without_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() else host


def route_matches(
    match: route_components_v3.RouteMatch, request: Request, path: str, parameters: Mapping[str, list[str]]
) -> bool:
    if match.HasField("case_sensitive") and not match.case_sensitive.value:
        raise MatchingError("a case-insensitive path match is not modelled")
    if match.HasField("runtime_fraction") or match.HasField("grpc") or match.HasField("tls_context"):
        raise MatchingError("runtime_fraction, grpc and tls_context route matches are not modelled")
    kind = match.WhichOneof("path_specifier")
    if kind == "prefix":
        if not path.startswith(match.prefix):
            return False
    elif kind == "path":
        if path != match.path:
            return False
    elif kind == "safe_regex":
        if _regex(match.safe_regex.regex).fullmatch(path) is None:
            return False
    else:
        raise MatchingError(f"the path matcher {kind} is not modelled")
    if not all(header_matches(matcher, request.header(matcher.name)) for matcher in match.headers):
        return False
    if not all(metadata_matches(matcher, request.metadata) for matcher in match.dynamic_metadata):
        return False
    return all(query_matches(matcher, parameters) for matcher in match.query_parameters)


def metadata_matches(matcher: Any, metadata: Mapping[str, Mapping[str, object]]) -> bool:
    """A dynamic-metadata matcher of one key and a bool value, as the sticky dye rules' routes use."""
    value = matcher.value
    if len(matcher.path) != 1 or value.WhichOneof("match_pattern") != "bool_match":
        raise MatchingError("a dynamic metadata matcher other than one key's bool is not modelled")
    held = metadata.get(matcher.filter, {}).get(matcher.path[0].key)
    return (held is value.bool_match) != bool(matcher.invert)


def header_matches(matcher: route_components_v3.HeaderMatcher, value: str | None) -> bool:
    kind = matcher.WhichOneof("header_match_specifier")
    if kind == "present_match":
        return ((value is not None) == bool(matcher.present_match)) != bool(matcher.invert_match)
    if value is None:
        if not matcher.treat_missing_header_as_empty:
            return False  # even when inverted: `invert` of "x-b is 2" does not match a request without x-b
        value = ""
    if kind != "string_match":
        raise MatchingError(f"the header matcher {kind} is not modelled")
    return string_matches(matcher.string_match, value) != bool(matcher.invert_match)


def query_matches(matcher: route_components_v3.QueryParameterMatcher, parameters: Mapping[str, list[str]]) -> bool:
    values = parameters.get(matcher.name)
    kind = matcher.WhichOneof("query_parameter_match_specifier")
    if kind == "present_match":
        return bool(values) == bool(matcher.present_match)
    if not values:
        return False
    if kind != "string_match":
        raise MatchingError(f"the query parameter matcher {kind} is not modelled")
    return string_matches(matcher.string_match, values[0])


def string_matches(matcher: string_v3.StringMatcher, value: str) -> bool:
    if matcher.ignore_case:
        raise MatchingError("an ignore_case string match is not modelled")
    kind = matcher.WhichOneof("match_pattern")
    if kind == "exact":
        return value == str(matcher.exact)
    if kind == "prefix":
        return value.startswith(matcher.prefix)
    if kind == "suffix":
        return value.endswith(matcher.suffix)
    if kind == "contains":
        return matcher.contains in value
    if kind == "safe_regex":
        return _regex(matcher.safe_regex.regex).fullmatch(value) is not None
    raise MatchingError(f"the string matcher {kind} is not modelled")


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    # RE2 (Envoy's engine) accepts a subset of Python's syntax; the config validator refuses the rest.
    return re.compile(pattern)
