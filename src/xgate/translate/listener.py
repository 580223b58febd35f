"""ListenerIR -> Envoy Listener: one HTTP connection manager whose routes come over RDS.

The listener only changes when its address, port or set of plugin filters changes; route and plugin
settings travel in the RouteConfiguration, so a config change never drains connections.
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

from xgate.ir.model import ListenerIR
from xgate.translate import names
from xgate.translate.observability import access_logs
from xgate.translate.plugins import TRANSLATORS, pack
from xgate.translate.protos import ads_source, socket_address
from xgate.translate.resilience import apply_listener_timeouts

HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"
# The Host an HTTP/1.0 request without one is routed by (nginx would route it to its default server).
HTTP_10_DEFAULT_HOST = "localhost"


def translate_listener(ir: ListenerIR) -> listener_v3.Listener:
    manager = hcm_v3.HttpConnectionManager(
        stat_prefix=ir.name,
        codec_type=hcm_v3.HttpConnectionManager.AUTO,
        rds=hcm_v3.Rds(route_config_name=names.route_config(ir.name), config_source=ads_source()),
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
    apply_listener_timeouts(manager, ir.listener)
    for name in ir.filters:
        manager.http_filters.extend(TRANSLATORS[name].http_filters(ir.defaults.get(name), manager))
    manager.http_filters.append(hcm_v3.HttpFilter(name=ROUTER, typed_config=pack(router_v3.Router())))
    chain = listener_components_v3.FilterChain(
        filters=[listener_components_v3.Filter(name=HCM, typed_config=pack(manager))]
    )
    return listener_v3.Listener(
        name=names.listener(ir.name),
        address=socket_address(ir.listener.address, ir.listener.port),
        filter_chains=[chain],
    )
