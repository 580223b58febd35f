"""The cluster of a gRPC service a plugin calls (rate-limit service, authz service)."""

from __future__ import annotations

import ipaddress

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import protocol_pb2 as protocol_v3
from envoy.config.endpoint.v3 import endpoint_components_pb2 as endpoint_components_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_v3
from google.protobuf import wrappers_pb2

from xgate.translate.plugins.base import pack
from xgate.translate.protos import duration, socket_address

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def service_cluster(name: str, address: str, *, max_streams: int) -> cluster_v3.Cluster:
    """HTTP/2 to `address` ("host:port"), at most `max_streams` per connection: Envoy keeps one connection per
    worker to a gRPC service, so without a cap several service processes behind one address (SO_REUSEPORT)
    would see all traffic on one of them."""
    host, _, port = address.rpartition(":")
    options = http_options_v3.HttpProtocolOptions(
        explicit_http_config=http_options_v3.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_v3.Http2ProtocolOptions(
                max_concurrent_streams=wrappers_pb2.UInt32Value(value=max_streams)
            )
        )
    )
    endpoint = endpoint_components_v3.LbEndpoint(
        endpoint=endpoint_components_v3.Endpoint(address=socket_address(host, int(port)))
    )
    cluster = cluster_v3.Cluster(
        name=name,
        type=cluster_v3.Cluster.STATIC if _is_ip(host) else cluster_v3.Cluster.STRICT_DNS,
        connect_timeout=duration(0.25),
        load_assignment=endpoint_v3.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint_components_v3.LocalityLbEndpoints(lb_endpoints=[endpoint])]
        ),
    )
    cluster.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
