"""ListenerIR -> Envoy RouteConfiguration: virtual hosts by host name, routes in config order."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.type.matcher.v3 import regex_pb2 as regex_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3
from google.protobuf import wrappers_pb2

from xgate.config.schema import HeaderMatch, HeaderOps, Match, QueryMatch, Route
from xgate.ir.model import ListenerIR, RouteIR
from xgate.translate import names
from xgate.translate.failover import split_target
from xgate.translate.grpc import grpc_action, grpc_retries
from xgate.translate.plugins import TRANSLATORS
from xgate.translate.resilience import route_timeouts
from xgate.translate.retries import virtual_host_retry_policy, with_retries

_REDIRECT_CODES = {
    301: route_components_v3.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_v3.RedirectAction.FOUND,
    303: route_components_v3.RedirectAction.SEE_OTHER,
    307: route_components_v3.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_v3.RedirectAction.PERMANENT_REDIRECT,
}
_SET = base_v3.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_ADD = base_v3.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


RouteBuilder = Callable[[RouteIR, tuple[str, ...]], list[route_components_v3.Route]]


def translate_routes(ir: ListenerIR, build: RouteBuilder | None = None) -> route_v3.RouteConfiguration:
    """One virtual host per host name; routes without a host apply under every host, in config order.

    `build` translates one route (default: translate_route); a memoizing one makes a big table cheap to
    rebuild when one route changed.
    """
    build = build or translate_route
    # Hosts are known before any route is built: each route's Envoy routes then go straight into the virtual
    # hosts they belong to (a "*" route into all) and are let go, so every route exists once, in the
    # configuration (a list of them all built first was 200 MB at the peak for 50,000 routes).
    # Hosts in routes never carry a port; the Host header is matched without its port but kept intact,
    # so redirects and upstreams still see it.
    config = route_v3.RouteConfiguration(name=names.route_config(ir.name), ignore_port_in_host_matching=True)
    hosts = sorted({host for route in ir.routes for host in route.route.match.hosts if host != "*"})
    by_host = {
        host: config.virtual_hosts.add(
            name=names.virtual_host(ir.name, (host,)), domains=[host], retry_policy=virtual_host_retry_policy()
        ).routes
        for host in [*hosts, "*"]
    }
    everywhere = list(by_host.values())
    for route in ir.routes:
        protos = build(route, ir.filters)
        route_hosts = route.route.match.hosts
        if "*" in route_hosts:
            for routes in everywhere:
                routes.extend(protos)
        else:
            for host in dict.fromkeys(route_hosts):  # a host listed twice gets the route once
                by_host[host].extend(protos)
    return config


def translate_route(ir: RouteIR, listener_filters: tuple[str, ...]) -> list[route_components_v3.Route]:
    """The Envoy routes of one config route: one, unless a plugin expands it (dyeing: one per rule). They
    all carry the config route's name."""
    route = ir.route
    proto = route_components_v3.Route(name=route.name, match=_match(route.match))
    if route.redirect is not None:
        proto.redirect.CopyFrom(_redirect(route))
    elif route.direct_response is not None:
        proto.direct_response.status = route.direct_response.status
        if route.direct_response.body:
            proto.direct_response.body.inline_string = route.direct_response.body
    else:
        proto.route.CopyFrom(_action(route))
    _headers(route.headers.request, proto.request_headers_to_add, proto.request_headers_to_remove)
    _headers(route.headers.response, proto.response_headers_to_add, proto.response_headers_to_remove)
    protos = with_retries(route, proto, method_matcher) if proto.HasField("route") else [proto]
    grpc_retries(route, protos)
    for name in listener_filters:
        translator, settings = TRANSLATORS[name], ir.plugins.get(name)
        protos = [entry for each in protos for entry in translator.route(settings, route, each)]
    return protos


def _string(exact: str | None = None, prefix: str | None = None, regex: str | None = None) -> string_v3.StringMatcher:
    if regex is not None:
        return string_v3.StringMatcher(safe_regex=regex_v3.RegexMatcher(regex=regex))
    if prefix is not None:
        return string_v3.StringMatcher(prefix=prefix)
    return string_v3.StringMatcher(exact=exact or "")


def _match(match: Match) -> route_components_v3.RouteMatch:
    proto = route_components_v3.RouteMatch()
    if match.path.exact is not None:
        proto.path = match.path.exact
    elif match.path.regex is not None:
        proto.safe_regex.regex = match.path.regex
    else:
        proto.prefix = match.path.prefix or "/"
    if match.methods:
        proto.headers.append(method_matcher(match.methods))
    proto.headers.extend(_header(header) for header in match.headers)
    proto.query_parameters.extend(_query(query) for query in match.query)
    return proto


def method_matcher(methods: Iterable[str]) -> route_components_v3.HeaderMatcher:
    ordered = sorted(set(methods))
    matcher = _string(exact=ordered[0]) if len(ordered) == 1 else _string(regex=f"^({'|'.join(ordered)})$")
    return route_components_v3.HeaderMatcher(name=":method", string_match=matcher)


def _header(header: HeaderMatch) -> route_components_v3.HeaderMatcher:
    proto = route_components_v3.HeaderMatcher(name=header.name.lower(), invert_match=header.invert)
    if header.present is not None:
        proto.present_match = header.present
    else:
        proto.string_match.CopyFrom(_string(header.exact, header.prefix, header.regex))
    return proto


def _query(query: QueryMatch) -> route_components_v3.QueryParameterMatcher:
    proto = route_components_v3.QueryParameterMatcher(name=query.name)
    if query.present is not None:
        # Envoy can only ask "present"; "absent" is the inverse, which it cannot express for query params.
        proto.present_match = query.present
    else:
        proto.string_match.CopyFrom(_string(query.exact, None, query.regex))
    return proto


def _action(route: Route) -> route_components_v3.RouteAction:
    action = route_components_v3.RouteAction()
    if route.upstream is not None:
        action.cluster = names.cluster(route.upstream)
    else:
        action.weighted_clusters.clusters.extend(
            route_components_v3.WeightedCluster.ClusterWeight(
                name=split_target(route, target.upstream), weight=wrappers_pb2.UInt32Value(value=target.weight)
            )
            for target in route.split or ()
        )
    route_timeouts(action, route)
    if route.websocket:
        action.upgrade_configs.append(
            route_components_v3.RouteAction.UpgradeConfig(
                upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=True)
            )
        )
    grpc_action(route, action)
    return action


def _redirect(route: Route) -> route_components_v3.RedirectAction:
    redirect = route.redirect
    assert redirect is not None
    proto = route_components_v3.RedirectAction(
        response_code=_REDIRECT_CODES[redirect.code], strip_query=redirect.strip_query
    )
    if redirect.scheme is not None:
        proto.scheme_redirect = redirect.scheme
    if redirect.host is not None:
        proto.host_redirect = redirect.host
    if redirect.port is not None:
        proto.port_redirect = redirect.port
    if redirect.path is not None:
        proto.path_redirect = redirect.path
    return proto


def _headers(ops: HeaderOps, to_add: list[base_v3.HeaderValueOption], to_remove: list[str]) -> None:
    for action, pairs in ((_SET, ops.set), (_ADD, ops.add)):
        to_add.extend(
            base_v3.HeaderValueOption(header=base_v3.HeaderValue(key=key, value=value), append_action=action)
            for key, value in pairs.items()
        )
    to_remove.extend(ops.remove)
