"""`route_tables: per_host`: a listener's routes as one RouteConfiguration per host, chosen by Envoy's scoped routes.

Envoy rebuilds a whole RouteConfiguration whenever it receives one (37 ms at 10,000 routes); split by host, a
route change makes it rebuild that host's table only (2.4 ms over 100 hosts, bench/route_split.py). The scopes
(host -> table) travel over SRDS, each keyed by the Host header without its port, and each table over RDS.

Scopes listed in the listener itself cannot name a table over RDS (Envoy: "Fetching routes via RDS
(route_configuration_name) is not supported with inline scoped routes"). Over SRDS, Envoy subscribes to every
scope (a wildcard), so every such listener would get every such listener's scopes: a host on two clashes
("scope key conflict", a NACK) and a host on one is served by all (bench/scoped_routes_probe.py shows both).
Hence one per_host listener per gateway (the IR refuses a second).

Envoy has no fallback scope and matches scope keys exactly, so such a listener only serves routes that name
exact hosts (the IR refuses the others) and a Host that differs from the route's in case gets 404. A listener
without routes keeps the one-table form; either way no request then matches.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.config.route.v3 import scoped_route_pb2 as scoped_route_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)

from xgate.ir.model import ListenerIR
from xgate.translate import names
from xgate.translate.protos import ads_source
from xgate.translate.retries import virtual_host_retry_policy
from xgate.translate.route import RouteBuilder, translate_route, translate_routes

PER_HOST = "per_host"
# The scope key: the Host (HTTP/2 :authority) up to its first ":", i.e. without its port, as the one table's
# ignore_port_in_host_matching matches it.
_KEY = hcm_v3.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor(
    name=":authority", element_separator=":", index=0
)


def per_host_hosts(ir: ListenerIR) -> list[str]:
    """The hosts that get a table of their own, sorted: none unless the listener is per_host and has routes."""
    if ir.listener.route_tables != PER_HOST:
        return []
    return sorted({host for route in ir.routes for host in route.route.match.hosts})


def scoped_routes(ir: ListenerIR) -> hcm_v3.ScopedRoutes:
    """The connection manager's scopes, over ADS; each names its host's table, also over ADS."""
    return hcm_v3.ScopedRoutes(
        name=names.route_config(ir.name),
        scope_key_builder=hcm_v3.ScopedRoutes.ScopeKeyBuilder(
            fragments=[hcm_v3.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder(header_value_extractor=_KEY)]
        ),
        rds_config_source=ads_source(),
        scoped_rds=hcm_v3.ScopedRds(scoped_rds_config_source=ads_source()),
    )


def translate_scopes(ir: ListenerIR, hosts: list[str]) -> list[scoped_route_v3.ScopedRouteConfiguration]:
    """One scope per host: the key is the host, the table its own."""
    Key = scoped_route_v3.ScopedRouteConfiguration.Key
    return [
        scoped_route_v3.ScopedRouteConfiguration(
            name=names.host_route_config(ir.name, host),
            route_configuration_name=names.host_route_config(ir.name, host),
            key=Key(fragments=[Key.Fragment(string_key=host)]),
        )
        for host in hosts
    ]


def translate_route_configs(ir: ListenerIR, build: RouteBuilder | None = None) -> list[route_v3.RouteConfiguration]:
    """The listener's RouteConfigurations: its one table (translate_routes), or one per host when per_host.
    A host's table has one virtual host, the one the one-table form gives that host."""
    hosts = per_host_hosts(ir)
    if not hosts:
        return [translate_routes(ir, build)]
    build = build or translate_route
    configs = {
        host: route_v3.RouteConfiguration(
            name=names.host_route_config(ir.name, host), ignore_port_in_host_matching=True
        )
        for host in hosts
    }
    by_host = {
        host: config.virtual_hosts.add(
            name=names.virtual_host(ir.name, (host,)), domains=[host], retry_policy=virtual_host_retry_policy()
        ).routes
        for host, config in configs.items()
    }
    for route in ir.routes:
        protos = build(route, ir.filters)
        for host in dict.fromkeys(route.route.match.hosts):
            by_host[host].extend(protos)
    return list(configs.values())
