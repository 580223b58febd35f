"""ListenerIR -> Envoy Listener: one HTTP connection manager whose routes come over RDS; with TLS, one filter
chain per SNI certificate (see translate.tls) and, when asked, a plain-HTTP listener redirecting to it.

The listener only changes when its address, port, TLS settings (not the certificates: they travel over SDS) or
set of plugin filters changes; route and plugin settings travel in the RouteConfiguration (with `route_tables:
per_host`, one per host, see translate.perhost), so a config change never drains connections.

Protocols: HTTP/1.0, HTTP/1.1 and h2c (prior knowledge) on every listener, the codec chosen from the first
bytes; over TLS, h2 or http/1.1 by ALPN. An HTTP/1.1 `Upgrade: h2c` is answered over HTTP/1.1 (RFC 9113
deprecated that upgrade; clients then stay on HTTP/1.1).
"""

from __future__ import annotations

from envoy.config.core.v3 import protocol_pb2 as protocol_v3
from envoy.config.listener.v3 import listener_components_pb2 as listener_components_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.extensions.filters.http.router.v3 import router_pb2 as router_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from google.protobuf import wrappers_pb2

from xgate.config.limits import ListenerLimits
from xgate.ir.model import ListenerIR
from xgate.translate import names
from xgate.translate.observability import access_logs
from xgate.translate.perhost import per_host_hosts, scoped_routes
from xgate.translate.plugins import TRANSLATORS, pack
from xgate.translate.protos import ads_source, socket_address
from xgate.translate.resilience import apply_listener_timeouts
from xgate.translate.tls import HCM as HCM  # re-exported: tests name the filter by it
from xgate.translate.tls import redirect_listener, tls_filter_chains, tls_inspector

ROUTER = "envoy.filters.http.router"
# The Host an HTTP/1.0 request without one is routed by (nginx would route it to its default server).
HTTP_10_DEFAULT_HOST = "localhost"


def _manager(ir: ListenerIR) -> hcm_v3.HttpConnectionManager:
    manager = hcm_v3.HttpConnectionManager(
        stat_prefix=ir.name,
        codec_type=hcm_v3.HttpConnectionManager.AUTO,
        # Routes opt in to WebSocket one by one (route.websocket); the connection manager must know the type.
        upgrade_configs=[
            hcm_v3.HttpConnectionManager.UpgradeConfig(
                upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=False)
            )
        ],
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        # HTTP/1.0 clients (health checkers, scripts, old load balancers) are served as nginx serves them;
        # Envoy's default answers them 426 Upgrade Required.
        http_protocol_options=protocol_v3.Http1ProtocolOptions(
            accept_http_10=True, default_host_for_http_10=HTTP_10_DEFAULT_HOST
        ),
        access_log=access_logs(ir.listener),
    )
    if per_host_hosts(ir):  # route_tables: per_host
        manager.scoped_routes.CopyFrom(scoped_routes(ir))
    else:
        manager.rds.CopyFrom(hcm_v3.Rds(route_config_name=names.route_config(ir.name), config_source=ads_source()))
    apply_listener_timeouts(manager, ir.listener)
    if ir.listener.limits is not None:
        _limits(ir.listener.limits, manager)
    for name in ir.filters:
        manager.http_filters.extend(TRANSLATORS[name].http_filters(ir.defaults.get(name), manager))
    manager.http_filters.append(hcm_v3.HttpFilter(name=ROUTER, typed_config=pack(router_v3.Router())))
    return manager


def _limits(limits: ListenerLimits, manager: hcm_v3.HttpConnectionManager) -> None:
    """Only what the config sets: the rest stays at Envoy's defaults (config.limits.ENVOY_DEFAULTS)."""
    http2 = manager.http2_protocol_options
    for field in ("max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size"):
        value = getattr(limits, field)
        if value is not None:
            getattr(http2, field).value = value
    if limits.max_request_headers_kb is not None:
        manager.max_request_headers_kb.value = limits.max_request_headers_kb
    if limits.max_headers_count is not None:
        manager.common_http_protocol_options.max_headers_count.value = limits.max_headers_count


def translate_listener(ir: ListenerIR) -> listener_v3.Listener:
    manager = _manager(ir)
    listener = listener_v3.Listener(
        name=names.listener(ir.name), address=socket_address(ir.listener.address, ir.listener.port)
    )
    if ir.listener.tls is None:
        listener.filter_chains.append(
            listener_components_v3.FilterChain(
                filters=[listener_components_v3.Filter(name=HCM, typed_config=pack(manager))]
            )
        )
    else:
        listener.listener_filters.append(tls_inspector())
        listener.filter_chains.extend(tls_filter_chains(ir.listener.tls, manager))
    return listener


def translate_listeners(ir: ListenerIR) -> list[listener_v3.Listener]:
    """The listener, and its plain-HTTP redirect listener when it has one."""
    found = [translate_listener(ir)]
    if (redirect := redirect_listener(ir.listener)) is not None:
        found.append(redirect)
    return found
