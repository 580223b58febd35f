"""Upstream -> Envoy Cluster and its ClusterLoadAssignment."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import health_check_pb2 as health_check_v3
from envoy.config.core.v3 import protocol_pb2 as protocol_v3
from envoy.config.endpoint.v3 import endpoint_components_pb2 as endpoint_components_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_v3
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_v3
from envoy.type.v3 import range_pb2 as range_v3
from google.protobuf import wrappers_pb2

from xgate.config.schema import HealthCheck, Route, Upstream
from xgate.translate import names
from xgate.translate.protos import ads_source, duration, pack, socket_address
from xgate.translate.tls import apply_upstream_tls

_LB = {
    "round_robin": cluster_v3.Cluster.ROUND_ROBIN,
    "least_request": cluster_v3.Cluster.LEAST_REQUEST,
    "random": cluster_v3.Cluster.RANDOM,
}
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def uses_eds(upstream: Upstream) -> bool:
    """IP endpoints travel over EDS (an endpoint change never rebuilds the cluster); names need DNS."""
    return all(endpoint.is_ip for endpoint in upstream.endpoints)


def translate_cluster(upstream: Upstream) -> cluster_v3.Cluster:
    cluster = cluster_v3.Cluster(
        name=names.cluster(upstream.name),
        connect_timeout=duration(upstream.connect_timeout),
        lb_policy=_LB[upstream.lb],
    )
    if uses_eds(upstream):
        cluster.type = cluster_v3.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
    else:
        cluster.type = cluster_v3.Cluster.STRICT_DNS
        cluster.dns_lookup_family = cluster_v3.Cluster.V4_PREFERRED
        cluster.load_assignment.CopyFrom(translate_endpoints(upstream))
    if upstream.health_check is not None:
        cluster.health_checks.append(_health_check(upstream.health_check))
    if upstream.protocol == "http2":
        options = http_options_v3.HttpProtocolOptions(
            explicit_http_config=http_options_v3.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_v3.Http2ProtocolOptions()
            )
        )
        cluster.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))
    apply_upstream_tls(upstream, cluster)
    return cluster


def translate_endpoints(upstream: Upstream) -> endpoint_v3.ClusterLoadAssignment:
    # Without a host of its own, each endpoint's health checks carry its own host:port (see HealthCheck):
    # Envoy's default, the cluster name, is not a valid Host and real servers answer it with 400.
    own_host = upstream.health_check is not None and upstream.health_check.host is None
    lb_endpoints = [
        endpoint_components_v3.LbEndpoint(
            endpoint=endpoint_components_v3.Endpoint(
                address=socket_address(endpoint.host, endpoint.port),
                health_check_config=endpoint_components_v3.Endpoint.HealthCheckConfig(
                    hostname=_host_header(endpoint.host, endpoint.port)
                )
                if own_host
                else None,
            ),
            load_balancing_weight=wrappers_pb2.UInt32Value(value=endpoint.weight),
        )
        for endpoint in upstream.endpoints
    ]
    return endpoint_v3.ClusterLoadAssignment(
        cluster_name=names.cluster(upstream.name),
        endpoints=[endpoint_components_v3.LocalityLbEndpoints(lb_endpoints=lb_endpoints)],
    )


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _health_check(check: HealthCheck) -> health_check_v3.HealthCheck:
    # Envoy checks a cluster that has had no traffic only once a minute by default (no_traffic_interval); a
    # canary may get none for a while, and its fallback must still know at once when it goes down.
    return health_check_v3.HealthCheck(
        timeout=duration(check.timeout),
        interval=duration(check.interval),
        no_traffic_interval=duration(check.interval),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=check.unhealthy_threshold),
        healthy_threshold=wrappers_pb2.UInt32Value(value=check.healthy_threshold),
        http_health_check=health_check_v3.HealthCheck.HttpHealthCheck(
            path=check.path,
            host=check.host or "",
            # Envoy's ranges are half-open: [start, end).
            expected_statuses=[range_v3.Int64Range(start=first, end=last + 1) for first, last in check.status_ranges],
        ),
    )


AGGREGATE = "envoy.clusters.aggregate"


def fallback_clusters(route: Route) -> list[cluster_v3.Cluster]:
    """The aggregate clusters of a route's canaries that fall back: the canary upstream first, the stable one
    second, so Envoy sends to the stable one only while the canary has no healthy endpoint."""
    stable = route.stable_upstream
    clusters = []
    for canary in route.canary:
        if not canary.fallback or stable is None:
            continue
        config = aggregate_v3.ClusterConfig(clusters=[names.cluster(canary.upstream), names.cluster(stable)])
        clusters.append(
            cluster_v3.Cluster(
                name=names.fallback_cluster(canary.upstream, stable),
                connect_timeout=duration(1.0),
                lb_policy=cluster_v3.Cluster.CLUSTER_PROVIDED,
                cluster_type=cluster_v3.Cluster.CustomClusterType(name=AGGREGATE, typed_config=pack(config)),
            )
        )
    return clusters
