"""A route's retries -> Envoy routes: idempotent methods get every retry condition, the others only those
where the request never reached the upstream.

Envoy has no per-method retry switch (retriable_request_headers can only turn every retry off for a request),
so a route whose methods need different policies becomes two Envoy routes, next to each other: the first
matches the methods that retry fully (`retries.methods`, by default the idempotent ones) and carries the full
policy; the second is the route as written, for every other method, with the safe conditions only
(connect-failure, refused-stream, reset-before-request), or no retries when none of those was asked for. A
route whose methods all get the same policy, as with the default conditions, stays one Envoy route.

The default retries (`Retries()`) sit once on each virtual host, which every route without a policy of its own
inherits: written on each route they would make a plain route 9 times bigger (399 bytes instead of 43), and a
10,000-route table several MB. A route without retries carries an empty policy (no retries) to override it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from envoy.config.route.v3 import route_components_pb2 as route_components_v3

from xgate.config.resilience import Retries
from xgate.config.schema import Route
from xgate.translate.resilience import retry_policy

MethodMatcher = Callable[[Iterable[str]], route_components_v3.HeaderMatcher]
DEFAULT = Retries()


def virtual_host_retry_policy() -> route_components_v3.RetryPolicy:
    """The default retries, inherited by every route of a virtual host that has no policy of its own."""
    return retry_policy(DEFAULT, DEFAULT.conditions)


def with_retries(
    route: Route, proto: route_components_v3.Route, method_matcher: MethodMatcher
) -> list[route_components_v3.Route]:
    """`proto` (a forwarding route) with its retry policy, split by method where the policies differ."""
    retries = route.retries
    if retries == DEFAULT:
        return [proto]  # the virtual host's policy
    if retries is None or retries.attempts == 0:
        proto.route.retry_policy.num_retries.value = 0  # overrides the virtual host's: no retries
        return [proto]
    full, safe = retries.conditions, retries.safe_conditions
    asked = set(route.match.methods)  # empty: any method, also ones no list names (PROPFIND...)
    retrying = (asked or set(retries.methods)) & set(retries.methods)
    others = bool(asked - set(retries.methods)) if asked else True
    if not others or set(full) == set(safe):
        proto.route.retry_policy.CopyFrom(retry_policy(retries, full))
        return [proto]
    rest = route_components_v3.Route()
    rest.CopyFrom(proto)
    if safe:
        rest.route.retry_policy.CopyFrom(retry_policy(retries, safe))
    if not retrying:
        return [rest]
    first = proto
    headers = [header for header in first.match.headers if header.name != ":method"]
    del first.match.headers[:]
    first.match.headers.extend([method_matcher(retrying), *headers])
    first.route.retry_policy.CopyFrom(retry_policy(retries, full))
    return [first, rest]
