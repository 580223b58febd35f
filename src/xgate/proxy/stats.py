"""Envoy's stats for Prometheus without its admin port: a listener of the bootstrap that forwards exactly
GET /stats/prometheus (and GET /stats, which the control plane reads filtered) to the admin interface on
loopback, and answers 404 to everything else, so nothing that changes Envoy (POST /quitquitquit, /runtime_modify,
/logging, ...) is reachable from it.

Scrape it with `metrics_path: /stats/prometheus` on `<envoy host>:<stats port>` (see the README).
"""

from __future__ import annotations

from typing import Any

ADMIN_CLUSTER = "xgate-admin"
STATS_LISTENER = "xgate-stats"
STATS_PATHS = ("/stats/prometheus", "/stats")

_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def admin_cluster(host: str, port: int) -> dict[str, Any]:
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(host, port)}}]}],
        },
    }


def stats_listener(host: str, port: int) -> dict[str, Any]:
    get = {"name": ":method", "string_match": {"exact": "GET"}}
    routes: list[dict[str, Any]] = [
        # An exact path: the query (?filter=..., ?usedonly) passes, nothing below it does.
        {"match": {"path": path, "headers": [get]}, "route": {"cluster": ADMIN_CLUSTER, "timeout": "5s"}}
        for path in STATS_PATHS
    ]
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    manager = {
        "@type": _HCM_TYPE,
        "stat_prefix": STATS_LISTENER,
        "route_config": {
            "name": STATS_LISTENER,
            "virtual_hosts": [{"name": "stats", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}}],
    }
    return {
        "name": STATS_LISTENER,
        "address": _address(host, port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}
