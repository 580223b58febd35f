"""Upstream -> Envoy Cluster and its ClusterLoadAssignment (resilience settings: translate.resilience; the
aggregate clusters of failover: translate.failover)."""

from __future__ import annotations

from itertools import groupby

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.endpoint.v3 import endpoint_components_pb2 as endpoint_components_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_v3
from google.protobuf import wrappers_pb2

from xgate.config.schema import Endpoint, Upstream
from xgate.translate import names
from xgate.translate.failover import AGGREGATE as AGGREGATE
from xgate.translate.failover import fallback_clusters as fallback_clusters
from xgate.translate.protos import ads_source, duration, pack, socket_address
from xgate.translate.resilience import apply_cluster_resilience, upstream_http_options
from xgate.translate.tls import upstream_transport_socket

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
    apply_cluster_resilience(cluster, upstream)
    _protocol_options(cluster, upstream)
    socket = upstream_transport_socket(upstream)
    if socket is not None:
        cluster.transport_socket.CopyFrom(socket)
    return cluster


def _protocol_options(cluster: cluster_v3.Cluster, upstream: Upstream) -> None:
    common = upstream_http_options(upstream)
    alpn = upstream.tls is not None and upstream.tls.alpn
    if upstream.protocol == "http1" and common is None and not alpn:
        return  # Envoy's defaults: HTTP/1.1, connections idle for up to an hour
    options = http_options_v3.HttpProtocolOptions(common_http_protocol_options=common)
    explicit = options.explicit_http_config
    if alpn:  # TLS with ALPN: Envoy offers h2 and http/1.1 and speaks what the server picks
        options.auto_config.http_protocol_options.SetInParent()
        options.auto_config.http2_protocol_options.SetInParent()
    elif upstream.protocol == "http2":
        explicit.http2_protocol_options.SetInParent()
    else:
        explicit.http_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))


def translate_endpoints(upstream: Upstream) -> endpoint_v3.ClusterLoadAssignment:
    """The endpoints by priority (Envoy wants priorities 0, 1, 2... without gaps: the config's are ranked)."""
    ranked = sorted(upstream.endpoints, key=lambda endpoint: endpoint.priority)
    groups = [list(group) for _, group in groupby(ranked, key=lambda endpoint: endpoint.priority)]
    return endpoint_v3.ClusterLoadAssignment(
        cluster_name=names.cluster(upstream.name),
        endpoints=[
            endpoint_components_v3.LocalityLbEndpoints(
                lb_endpoints=[_lb_endpoint(upstream, endpoint) for endpoint in group], priority=priority
            )
            for priority, group in enumerate(groups)
        ],
    )


def _lb_endpoint(upstream: Upstream, endpoint: Endpoint) -> endpoint_components_v3.LbEndpoint:
    # Without a host of its own, each endpoint's HTTP and gRPC health checks carry its own host:port (see
    # HealthCheck): Envoy's default, the cluster name, is not a valid Host and real servers answer it with 400.
    check = upstream.health_check
    own_host = check is not None and check.type != "tcp" and check.host is None
    return endpoint_components_v3.LbEndpoint(
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


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
