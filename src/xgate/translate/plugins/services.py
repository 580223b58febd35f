"""Clusters of services a plugin calls: gRPC services (rate-limit, authz) and HTTPS servers Envoy fetches from."""

from __future__ import annotations

import ipaddress

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import protocol_pb2 as protocol_v3
from envoy.config.endpoint.v3 import endpoint_components_pb2 as endpoint_components_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as common_v3
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3
from google.protobuf import wrappers_pb2

from xgate.translate.protos import duration, pack, socket_address

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Debian's (and Ubuntu's) CA bundle. Envoy's system_root_certs does not count as a trusted CA for SAN checks
# on Linux ("SAN-based verification ... without trusted CA is insecure"), so the bundle is named.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


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


def https_cluster(name: str, host: str, port: int, ca_file: str | None) -> cluster_v3.Cluster:
    """TLS to `host:port` for a fetch Envoy makes itself (a remote JWKS): the server's certificate must chain to
    `ca_file` (default: the system's bundle) AND name `host` (DNS or IP SAN); SNI is `host` unless it is an IP."""
    san = common_v3.SubjectAltNameMatcher.IP_ADDRESS if _is_ip(host) else common_v3.SubjectAltNameMatcher.DNS
    validation = common_v3.CertificateValidationContext(
        match_typed_subject_alt_names=[
            common_v3.SubjectAltNameMatcher(san_type=san, matcher=string_v3.StringMatcher(exact=host))
        ]
    )
    validation.trusted_ca.filename = ca_file or SYSTEM_CA_BUNDLE
    tls = tls_v3.UpstreamTlsContext(
        sni="" if _is_ip(host) else host,
        common_tls_context=tls_v3.CommonTlsContext(validation_context=validation),
    )
    endpoint = endpoint_components_v3.LbEndpoint(
        endpoint=endpoint_components_v3.Endpoint(address=socket_address(host, port))
    )
    return cluster_v3.Cluster(
        name=name,
        type=cluster_v3.Cluster.STATIC if _is_ip(host) else cluster_v3.Cluster.STRICT_DNS,
        connect_timeout=duration(2.0),
        load_assignment=endpoint_v3.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint_components_v3.LocalityLbEndpoints(lb_endpoints=[endpoint])]
        ),
        transport_socket=base_v3.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(tls)),
    )
