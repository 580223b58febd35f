"""A route's gRPC options -> Envoy: the client's grpc-timeout honoured (capped), retries on gRPC status codes."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as route_components_v3

from xgate.config.grpc import GrpcRoute
from xgate.config.schema import Route
from xgate.translate.protos import duration


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
    if options.retry_on:
        policy = action.retry_policy
        policy.retry_on = ",".join([*filter(None, policy.retry_on.split(",")), *options.retry_on])
        if route.retries is None:
            policy.num_retries.value = 1
