"""`transport: http` of the policy plugin in Envoy: a second ext_authz filter, raw HTTP to `xgate authz`'s lean
server (xgate.authz.http), off by default and turned on by the routes whose Python policy it asks about.

Envoy itself fills in what the check needs beyond the request (its formatters, evaluated per request): the
policy (route metadata), the route's name, the client's address and jwt_authn's verified payload as JSON. No
request header named x-xgate-* is passed on to the service, so a client cannot pose as any of those.
"""

from __future__ import annotations

import ipaddress
import re

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import http_uri_pb2 as http_uri_v3
from envoy.config.endpoint.v3 import endpoint_components_pb2 as endpoint_components_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as ext_authz_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.type.matcher.v3 import regex_pb2 as regex_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3
from envoy.type.v3 import http_status_pb2 as http_status_v3

from xgate.plugins.jwt import JWT_FILTER, PAYLOAD_METADATA
from xgate.plugins.policy import (
    HTTP_CLAIMS_HEADER,
    HTTP_HEADER_PREFIX,
    HTTP_LENGTH_HEADER,
    HTTP_POLICY_HEADER,
    HTTP_ROUTE_HEADER,
    HTTP_SOURCE_HEADER,
    POLICY_METADATA,
    PolicySettings,
)
from xgate.translate.protos import duration, pack, socket_address

HTTP_AUTHZ_FILTER = "xgate.authz.http"  # an ext_authz filter of its own name, next to the gRPC one
HTTP_CLUSTER = "xgate-authz-http"
_FILLED_IN = {
    HTTP_POLICY_HEADER: f"%METADATA(ROUTE:{POLICY_METADATA}:name)%",
    HTTP_ROUTE_HEADER: "%ROUTE_NAME%",
    HTTP_SOURCE_HEADER: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    HTTP_CLAIMS_HEADER: f"%DYNAMIC_METADATA({JWT_FILTER}:{PAYLOAD_METADATA})%",
    HTTP_LENGTH_HEADER: "%REQ(CONTENT-LENGTH)%",
}


def http_filter(settings: PolicySettings) -> hcm_v3.HttpFilter:
    service = ext_authz_v3.HttpService(
        server_uri=http_uri_v3.HttpUri(
            uri=f"http://{settings.http_service}", cluster=HTTP_CLUSTER, timeout=duration(settings.timeout)
        ),
        authorization_request=ext_authz_v3.AuthorizationRequest(
            headers_to_add=[base_v3.HeaderValue(key=key, value=value) for key, value in _FILLED_IN.items()]
        ),
        # An Allow's headers go to the upstream request, whatever their names: every header of the answer but
        # its own framing (content-length), which must never reach the upstream request.
        authorization_response=ext_authz_v3.AuthorizationResponse(
            allowed_upstream_headers=string_v3.ListStringMatcher(patterns=_except("content-length"))
        ),
    )
    config = ext_authz_v3.ExtAuthz(
        http_service=service,
        failure_mode_allow=settings.failure_mode == "open",
        status_on_error=http_status_v3.HttpStatus(code=settings.failure_status),
        # The request's headers as the gRPC check has them, but none a client could pose as Envoy's with.
        allowed_headers=string_v3.ListStringMatcher(
            patterns=[string_v3.StringMatcher(safe_regex=regex_v3.RegexMatcher(regex=".*"))]
        ),
        disallowed_headers=string_v3.ListStringMatcher(patterns=[string_v3.StringMatcher(prefix=HTTP_HEADER_PREFIX)]),
    )
    return hcm_v3.HttpFilter(name=HTTP_AUTHZ_FILTER, typed_config=pack(config), disabled=True)


def http_cluster(address: str) -> cluster_v3.Cluster:
    """HTTP/1.1 to `xgate authz`'s `--http-listen`: a check per kept-alive connection at a time, as many
    connections as checks in flight."""
    host, _, port = address.rpartition(":")
    endpoint = endpoint_components_v3.LbEndpoint(
        endpoint=endpoint_components_v3.Endpoint(address=socket_address(host, int(port)))
    )
    return cluster_v3.Cluster(
        name=HTTP_CLUSTER,
        type=cluster_v3.Cluster.STATIC if _is_ip(host) else cluster_v3.Cluster.STRICT_DNS,
        connect_timeout=duration(0.25),
        load_assignment=endpoint_v3.ClusterLoadAssignment(
            cluster_name=HTTP_CLUSTER,
            endpoints=[endpoint_components_v3.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        ),
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def enabled() -> ext_authz_v3.ExtAuthzPerRoute:
    """A route's config that turns the filter on (it is off by default)."""
    return ext_authz_v3.ExtAuthzPerRoute(check_settings=ext_authz_v3.CheckSettings())


def _except(word: str) -> list[string_v3.StringMatcher]:
    """Matchers of every string but `word` (RE2 has no lookahead, and one regex of it all is over Envoy's size
    limit): its shorter prefixes, a string leaving it at some character, and `word` followed by more."""
    matchers = [string_v3.StringMatcher(exact=word[:index]) for index in range(1, len(word))]
    matchers += [
        string_v3.StringMatcher(safe_regex=regex_v3.RegexMatcher(regex=f"{re.escape(word[:index])}[^{word[index]}].*"))
        for index in range(len(word))
    ]
    matchers.append(string_v3.StringMatcher(safe_regex=regex_v3.RegexMatcher(regex=f"{re.escape(word)}.+")))
    return matchers
