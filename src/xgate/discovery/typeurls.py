"""xDS type URLs, the order in which a change is pushed, and which consumer takes which types."""

from __future__ import annotations

from xgate.api import SERVICE_TYPES, SERVICES
from xgate.api import SHORT as SERVICE_SHORT

_PREFIX = "type.googleapis.com/"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

# The xDS rule for making before breaking: clusters, then their endpoints, then listeners, then routes;
# secrets before all of them, as clusters and listeners name them (Envoy asks for secrets by name).
PUSH_ORDER: tuple[str, ...] = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
ENVOY_TYPES = frozenset(PUSH_ORDER)

# Types a consumer subscribes to as a whole (wildcard); Envoy asks for endpoints, routes and secrets by name.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER}) | SERVICE_TYPES

# Translation's resource kinds -> type URLs (xgate's own resources come keyed by their type URL already).
BY_KIND = {"secrets": SECRET, "clusters": CLUSTER, "endpoints": ENDPOINT, "listeners": LISTENER, "routes": ROUTE} | {
    url: url for url in SERVICE_TYPES
}
SHORT = {SECRET: "SDS", CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS"} | SERVICE_SHORT

ENVOY = "envoy"
# A consumer's role, from its node's user_agent_name: Envoy says "envoy", xgate's services "xgate-<service>".
ROLES: dict[str, frozenset[str]] = {ENVOY: ENVOY_TYPES} | {name: frozenset(urls) for name, urls in SERVICES.items()}


def role_of(user_agent_name: str) -> str:
    """ "envoy", "authz", "dyeing" or "ratelimit" (an unknown agent is taken for an Envoy: it asks like one)."""
    name = user_agent_name.removeprefix("xgate-")
    return name if name in SERVICES else ENVOY
