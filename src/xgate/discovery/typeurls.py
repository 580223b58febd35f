"""xDS type URLs, the order in which a change is pushed, and which consumer takes which types."""

from __future__ import annotations

from xgate.api import SERVICE_TYPES, SERVICES
from xgate.api import SHORT as SERVICE_SHORT

_PREFIX = "type.googleapis.com/"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
# The scopes of a `route_tables: per_host` listener: host -> that host's RouteConfiguration (translate.perhost).
SCOPED_ROUTE = _PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
# HTTP filter configs a listener names instead of holding (ECDS): a change of them does not rebuild the listener,
# so it drains no connection (translate.filterconfig).
FILTER_CONFIG = _PREFIX + "envoy.config.core.v3.TypedExtensionConfig"

# The xDS rule for making before breaking: clusters, then their endpoints, then listeners, then routes (scopes
# before the tables they name); secrets before all of them, as clusters and listeners name them; filter configs
# after the clusters they fetch keys through and before the listeners and routes that use them.
PUSH_ORDER: tuple[str, ...] = (SECRET, CLUSTER, ENDPOINT, FILTER_CONFIG, LISTENER, SCOPED_ROUTE, ROUTE)
ENVOY_TYPES = frozenset(PUSH_ORDER)
ROUTING = (LISTENER, SCOPED_ROUTE, ROUTE)  # the types that say which clusters requests go to

# Types a consumer subscribes to as a whole (wildcard); Envoy asks for endpoints, routes and secrets by name.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER, SCOPED_ROUTE}) | SERVICE_TYPES

# Translation's resource kinds -> type URLs (xgate's own resources come keyed by their type URL already).
BY_KIND = (
    {"secrets": SECRET, "clusters": CLUSTER, "endpoints": ENDPOINT, "listeners": LISTENER, "routes": ROUTE}
    | {"scoped_routes": SCOPED_ROUTE, "filter_configs": FILTER_CONFIG}
    | {url: url for url in SERVICE_TYPES}
)
SHORT = {
    SECRET: "SDS",
    CLUSTER: "CDS",
    ENDPOINT: "EDS",
    LISTENER: "LDS",
    ROUTE: "RDS",
    SCOPED_ROUTE: "SRDS",
    FILTER_CONFIG: "ECDS",
} | SERVICE_SHORT

ENVOY = "envoy"
# A consumer's role, from its node's user_agent_name: Envoy says "envoy", xgate's services "xgate-<service>".
ROLES: dict[str, frozenset[str]] = {ENVOY: ENVOY_TYPES} | {name: frozenset(urls) for name, urls in SERVICES.items()}


def role_of(user_agent_name: str) -> str:
    """ "envoy", "authz", "dyeing" or "ratelimit" (an unknown agent is taken for an Envoy: it asks like one)."""
    name = user_agent_name.removeprefix("xgate-")
    return name if name in SERVICES else ENVOY
