"""A route's gRPC options -> Envoy: the client's grpc-timeout honoured (capped), retries on gRPC status codes."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as route_components_v3

from xgate.config.grpc import GrpcRoute
from xgate.config.schema import Route
from xgate.translate.protos import duration
from xgate.translate.retries import virtual_host_retry_policy


def grpc_options(route: Route) -> GrpcRoute | None:
    """A route's gRPC options: its own, or the defaults when it matches a gRPC service; None for others."""
    if route.grpc is not None:
        return route.grpc
    return GrpcRoute() if route.match.grpc is not None else None


def grpc_action(route: Route, action: route_components_v3.RouteAction) -> None:
    """Make `action` forward gRPC calls as their deadlines say. Envoy ignores grpc-timeout unless
    grpc_timeout_header_max is set (0: no cap); a route timeout would cut a server stream after it (Envoy's
    default is 15 s), so a gRPC route without `timeout` has none, and the call's deadline bounds it."""
    options = grpc_options(route)
    if options is None:
        return
    action.max_stream_duration.grpc_timeout_header_max.CopyFrom(duration(options.max_timeout or 0.0))
    if route.timeout is None:
        action.timeout.CopyFrom(duration(0.0))


def grpc_retries(route: Route, protos: list[route_components_v3.Route]) -> None:
    """Add the route's gRPC status codes to the retry conditions of each of its Envoy routes (after the
    retries were split by method: gRPC calls are POSTs, and asking for a status code means retrying them).
    A route with the default retries has no policy of its own (it inherits the virtual host's): it gets a copy
    of that one, since a route's policy replaces the virtual host's as a whole."""
    options = grpc_options(route)
    if options is None or not options.retry_on:
        return
    for proto in protos:
        if not proto.HasField("route"):
            continue
        if not proto.route.HasField("retry_policy"):
            proto.route.retry_policy.CopyFrom(virtual_host_retry_policy())
        policy = proto.route.retry_policy
        conditions = [*filter(None, policy.retry_on.split(",")), *options.retry_on]
        policy.retry_on = ",".join(dict.fromkeys(conditions))
