"""Failover between upstreams: the Envoy aggregate clusters that send to an upstream while it has healthy
endpoints and to the next one in order when it has none, for canary fallbacks and weighted splits.

Envoy's weighted_clusters pick a cluster by weight alone, healthy or not: a split target with no healthy
endpoint would still get its share, answered 503. So each target of a split is an aggregate cluster: the target
first, then the split's other targets, heaviest first. While every target is healthy each gets exactly its
weight; a target with no healthy endpoint hands its share to the next one, and takes it back when its endpoints
recover (health checks or outlier detection decide). The aggregates hold no endpoints and no health state, so
a route change that adds or drops one leaves the upstreams' clusters, and their health, as they were.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_v3
from envoy.type.v3 import percent_pb2 as percent_v3

from xgate.config.schema import Route, Upstream
from xgate.translate import names
from xgate.translate.protos import duration, pack
from xgate.translate.resilience import circuit_breakers

AGGREGATE = "envoy.clusters.aggregate"


def split_order(route: Route) -> list[str]:
    """The split's distinct targets that get traffic, heaviest first (the first of equals first)."""
    weights: dict[str, int] = {}
    for target in route.split or ():
        weights[target.upstream] = weights.get(target.upstream, 0) + target.weight
    ranked = sorted(weights.items(), key=lambda item: -item[1])  # stable: equal weights keep split order
    return [name for name, weight in ranked if weight > 0]


def split_target(route: Route, upstream: str) -> str:
    """The cluster a split sends `upstream`'s share to: the aggregate that falls back to the other targets, or
    the upstream's own cluster when there is nothing to fall back to."""
    order = split_order(route)
    if upstream not in order or len(order) < 2:
        return names.cluster(upstream)
    return names.fallback_cluster(upstream, *(other for other in order if other != upstream))


def route_aggregates(route: Route) -> list[tuple[str, tuple[str, ...]]]:
    """(cluster name, upstreams in fallback order) of each aggregate cluster the route sends to."""
    found: dict[str, tuple[str, ...]] = {}
    stable = route.stable_upstream
    for canary in route.canary:
        if canary.fallback and stable is not None:
            found[names.fallback_cluster(canary.upstream, stable)] = (canary.upstream, stable)
    order = split_order(route)
    if len(order) >= 2:
        for upstream in order:
            members = (upstream, *(other for other in order if other != upstream))
            found[names.fallback_cluster(*members)] = members
    return sorted(found.items())


def aggregate_cluster(
    name: str, members: tuple[str, ...], upstreams: Mapping[str, Upstream] | None = None
) -> cluster_v3.Cluster:
    """An aggregate cluster over `members`' clusters, in order. It carries the first member's circuit breakers
    and panic threshold: Envoy counts the retries of a request sent to an aggregate on the aggregate."""
    config = aggregate_v3.ClusterConfig(clusters=[names.cluster(member) for member in members])
    cluster = cluster_v3.Cluster(
        name=name,
        connect_timeout=duration(1.0),
        lb_policy=cluster_v3.Cluster.CLUSTER_PROVIDED,
        cluster_type=cluster_v3.Cluster.CustomClusterType(name=AGGREGATE, typed_config=pack(config)),
    )
    first = (upstreams or {}).get(members[0])
    if first is not None:
        cluster.circuit_breakers.CopyFrom(circuit_breakers(first.circuit_breakers))
        if first.panic_threshold != 50:
            threshold = percent_v3.Percent(value=float(first.panic_threshold))
            cluster.common_lb_config.healthy_panic_threshold.CopyFrom(threshold)
    return cluster


def fallback_clusters(route: Route, upstreams: Mapping[str, Upstream] | None = None) -> list[cluster_v3.Cluster]:
    """The aggregate clusters of a route: its canaries' fallbacks (the canary upstream first, the stable one
    second) and its split targets' (see the module's docstring)."""
    return [aggregate_cluster(name, members, upstreams) for name, members in route_aggregates(route)]
