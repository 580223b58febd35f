"""Is a snapshot whole? Every name one resource gives another must be served: the route config and the filter
configs (ECDS) a listener reads, the cluster a route sends to, an EDS cluster's endpoints, an aggregate cluster's
members, the service resources a route's per-filter config names (a dyeing settings key, a policy, a JWT
provider, a global limit).

Envoy accepts a route naming a cluster it does not have and answers 503; a dyeing key the service does not
hold passes requests undyed. The golden and incremental tests run this on every snapshot they build, the way
go-control-plane's tests call Snapshot.Consistent. It parses every resource: not for the request path.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import TypeVar

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.config.route.v3 import scoped_route_pb2 as scoped_route_v3
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_v3
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as ext_authz_v3
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2 as ext_proc_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)

from xgate.api import DYEING_SETTINGS, JWT_PROVIDER, POLICY, RATE_LIMIT
from xgate.discovery import typeurls
from xgate.discovery.snapshot import Resource, Snapshot
from xgate.plugins.dyeing import EXT_PROC_FILTER, SETTINGS_METADATA
from xgate.plugins.jwt import AUTHZ_FILTER, PROVIDER_KEY
from xgate.plugins.policy import POLICY_KEY
from xgate.plugins.rate_limit import ROUTE_KEY

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def problems(snapshot: Snapshot) -> list[str]:
    """What the snapshot names but does not serve, one line each (empty: consistent)."""
    served = {url: set(found) for url, found in snapshot.resources.items()}
    clusters = {
        name: _parse(cluster_v3.Cluster, resource)
        for name, resource in snapshot.resources.get(typeurls.CLUSTER, {}).items()
    }
    found: list[str] = []
    for name, cluster in clusters.items():
        if cluster.type == cluster_v3.Cluster.EDS and name not in served.get(typeurls.ENDPOINT, set()):
            found.append(f"cluster {name} takes its endpoints over EDS, and none are served")
        for member in _aggregate_members(cluster):
            if member not in clusters:
                found.append(f"aggregate cluster {name} names cluster {member}, which is not served")
    for name, resource in snapshot.resources.get(typeurls.LISTENER, {}).items():
        listener = _parse(listener_v3.Listener, resource)
        for route_config in route_configs(listener):
            if route_config not in served.get(typeurls.ROUTE, set()):
                found.append(f"listener {name} reads route config {route_config}, which is not served")
        for filter_config in filter_configs(listener):
            if filter_config not in served.get(typeurls.FILTER_CONFIG, set()):
                found.append(f"listener {name} reads filter config {filter_config}, which is not served")
    for name, resource in snapshot.resources.get(typeurls.SCOPED_ROUTE, {}).items():
        scope = _parse(scoped_route_v3.ScopedRouteConfiguration, resource)
        if scope.route_configuration_name not in served.get(typeurls.ROUTE, set()):
            found.append(f"scope {name} names route config {scope.route_configuration_name}, which is not served")
    for name, resource in snapshot.resources.get(typeurls.ROUTE, {}).items():
        config = _parse(route_v3.RouteConfiguration, resource)
        for host in config.virtual_hosts:
            for route in host.routes:
                where = f"route {route.name} of {name} ({host.name})"
                found += [f"{where} {problem}" for problem in _route_problems(route, clusters.keys(), served)]
    return sorted(set(found))


def _route_problems(
    route: route_components_v3.Route, clusters: Collection[str], served: Mapping[str, set[str]]
) -> Iterator[str]:
    if route.HasField("route"):
        action = route.route
        targets = [action.cluster] if action.cluster else [w.name for w in action.weighted_clusters.clusters]
        for target in targets:
            if target not in clusters:
                yield f"sends to cluster {target}, which is not served"
        for limit in action.rate_limits:
            for descriptor in limit.actions:
                key = descriptor.generic_key
                if key.descriptor_key == ROUTE_KEY and key.descriptor_value not in served.get(RATE_LIMIT, set()):
                    yield f"is counted under the global limit {key.descriptor_value}, which the service is not sent"
    configs = route.typed_per_filter_config
    if EXT_PROC_FILTER in configs:
        ext_proc = ext_proc_v3.ExtProcPerRoute()
        configs[EXT_PROC_FILTER].Unpack(ext_proc)
        for header in ext_proc.overrides.grpc_initial_metadata:
            if header.key == SETTINGS_METADATA and header.value not in served.get(DYEING_SETTINGS, set()):
                yield f"names dyeing settings {header.value}, which the dyeing service is not sent"
    if AUTHZ_FILTER in configs:
        authz = ext_authz_v3.ExtAuthzPerRoute()
        configs[AUTHZ_FILTER].Unpack(authz)
        extensions = authz.check_settings.context_extensions
        if (policy := extensions.get(POLICY_KEY)) and policy not in served.get(POLICY, set()):
            yield f"runs policy {policy}, which authz is not sent"
        if (provider := extensions.get(PROVIDER_KEY)) and provider not in served.get(JWT_PROVIDER, set()):
            yield f"verifies with jwt provider {provider}, which authz is not sent"


def route_configs(listener: listener_v3.Listener) -> Iterator[str]:
    for manager in _managers(listener):
        if manager.HasField("rds"):
            yield manager.rds.route_config_name


def filter_configs(listener: listener_v3.Listener) -> Iterator[str]:
    """The HTTP filter configs `listener` takes over ECDS."""
    for manager in _managers(listener):
        yield from (
            http_filter.name for http_filter in manager.http_filters if http_filter.HasField("config_discovery")
        )


def _managers(listener: listener_v3.Listener) -> Iterator[hcm_v3.HttpConnectionManager]:
    chains = [*listener.filter_chains]
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.type_url == _HCM:
                manager = hcm_v3.HttpConnectionManager()
                network_filter.typed_config.Unpack(manager)
                yield manager


def _aggregate_members(cluster: cluster_v3.Cluster) -> list[str]:
    if not cluster.HasField("cluster_type") or not cluster.cluster_type.typed_config.type_url.endswith(
        "aggregate.v3.ClusterConfig"
    ):
        return []
    config = aggregate_v3.ClusterConfig()
    cluster.cluster_type.typed_config.Unpack(config)
    return list(config.clusters)


M = TypeVar(
    "M",
    cluster_v3.Cluster,
    listener_v3.Listener,
    route_v3.RouteConfiguration,
    scoped_route_v3.ScopedRouteConfiguration,
)


def _parse(kind: type[M], resource: Resource) -> M:
    return kind.FromString(resource.data)
