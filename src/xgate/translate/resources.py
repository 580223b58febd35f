"""The whole translation: one GatewayIR -> every Envoy resource, by kind."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import extension_pb2 as extension_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from google.protobuf.message import Message

from xgate.api import type_url
from xgate.config.schema import Model, Route, Upstream
from xgate.ir.model import GatewayIR, RouteIR
from xgate.translate import names
from xgate.translate.cluster import fallback_clusters, translate_cluster, translate_endpoints, uses_eds
from xgate.translate.filterconfig import merged
from xgate.translate.listener import translate_listeners
from xgate.translate.perhost import per_host_hosts, translate_route_configs, translate_scopes
from xgate.translate.plugins import TRANSLATORS
from xgate.translate.route import translate_route
from xgate.translate.tls import translate_secrets


@dataclass(frozen=True)
class Resources:
    """Envoy resources by kind, each a name -> proto mapping (names from translate.names)."""

    clusters: dict[str, Message] = field(default_factory=dict)
    endpoints: dict[str, Message] = field(default_factory=dict)
    listeners: dict[str, Message] = field(default_factory=dict)
    # A route configuration may come already serialized (the incremental compiler assembles bytes).
    routes: dict[str, Message | bytes] = field(default_factory=dict)
    # The scopes of `route_tables: per_host` listeners (translate.perhost), by name.
    scoped_routes: dict[str, Message] = field(default_factory=dict)
    # SDS secrets (certificates and keys, CA bundles, ticket keys) that listeners and clusters name.
    secrets: dict[str, Message] = field(default_factory=dict)
    # HTTP filter configs listeners name over ECDS (translate.filterconfig), one per filter for all listeners.
    filter_configs: dict[str, extension_v3.TypedExtensionConfig] = field(default_factory=dict)
    # xgate's own resources for its services (xgate.api), by type URL, then name.
    services: dict[str, dict[str, Message]] = field(default_factory=dict)

    def by_kind(self) -> dict[str, dict[str, Any]]:
        """Every resource by kind: Envoy's by name ("clusters", ...), the services' by type URL."""
        return {
            "secrets": self.secrets,
            "clusters": self.clusters,
            "endpoints": self.endpoints,
            "listeners": self.listeners,
            "routes": self.routes,
            "scoped_routes": self.scoped_routes,
            "filter_configs": self.filter_configs,
            **self.services,
        }

    def route_config(self, name: str) -> route_v3.RouteConfiguration:
        """One route configuration as a message (the incremental compiler keeps them as bytes)."""
        found = self.routes[name]
        if isinstance(found, bytes):
            return route_v3.RouteConfiguration.FromString(found)
        assert isinstance(found, route_v3.RouteConfiguration)
        return found

    def add(self, message: Message) -> None:
        """A plugin's extra resource: a cluster, a filter config (one per filter: every listener's merged into
        it), or a resource of one of the services (the first of a name wins: a name is the same object wherever
        it is defined, the IR checks that)."""
        if isinstance(message, cluster_v3.Cluster):
            self.clusters.setdefault(message.name, message)
        elif isinstance(message, extension_v3.TypedExtensionConfig):
            found = self.filter_configs.get(message.name)
            self.filter_configs[message.name] = message if found is None else merged(found, message)
        else:
            self.services.setdefault(type_url(message), {}).setdefault(cast(Any, message).name, message)


def route_service_resources(route: RouteIR) -> list[Message]:
    """What the services need for one route (e.g. its global limit), from each of its plugins."""
    return [
        extra
        for name, settings in route.plugins.items()
        for extra in TRANSLATORS[name].route_resources(settings, route.route)
    ]


def translate(ir: GatewayIR) -> Resources:
    """Translate everything from scratch."""
    return Translator(remember=False).translate(ir)


@dataclass
class _Memo:
    route: Route
    filters: tuple[str, ...]
    plugins: Mapping[str, Model]
    # The Envoy routes serialized: as messages, each with its own arena, 10,000 routes held 16 MB; as bytes,
    # about 1 MB, and parsing them back at the next full compile costs ~3 us a route.
    wires: tuple[bytes, ...]


class Translator:
    """translate() with a memory of the previous revision: a route whose config object, plugin settings
    and listener filters are unchanged is not translated again. The result equals translate(ir)."""

    def __init__(self, *, remember: bool = True) -> None:
        # remember=False: one translation only (`xgate validate`, translate()), which a memo would only slow
        # down and weigh on (the routes' bytes: 63 MB at 50,000 routes, and the heap they pinned).
        self._remember = remember
        self._previous: dict[tuple[int, tuple[str, ...]], _Memo] = {}
        self._current: dict[tuple[int, tuple[str, ...]], _Memo] = {}
        self._upstreams: dict[int, tuple[Upstream, list[Message]]] = {}

    def _route(self, ir: RouteIR, filters: tuple[str, ...]) -> list[route_components_v3.Route]:
        # Keyed by object identity: the config cache hands back the same object for unchanged input, and
        # the memo holds a reference, so an id cannot be reused by another object while it is stored.
        key = (id(ir.route), filters)
        memo = self._previous.get(key)
        if memo is not None and memo.route is ir.route and memo.plugins == ir.plugins:
            self._current[key] = memo
            return [route_components_v3.Route.FromString(wire) for wire in memo.wires]
        protos = translate_route(ir, filters)
        if not self._remember:
            return protos
        wires = tuple(proto.SerializeToString(deterministic=True) for proto in protos)
        self._current[key] = _Memo(ir.route, filters, ir.plugins, wires)
        return protos

    def _upstream(self, upstream: Upstream) -> list[Message]:
        """The cluster, and its endpoints when they travel over EDS."""
        memo = self._upstreams.get(id(upstream))
        if memo is None or memo[0] is not upstream:
            cluster = translate_cluster(upstream)
            protos: list[Message] = [cluster]
            if uses_eds(upstream):
                protos.append(translate_endpoints(upstream))
            memo = (upstream, protos)
        return memo[1]

    def translate(self, ir: GatewayIR) -> Resources:
        self._upstreams = {id(u): m for u in ir.upstreams if (m := self._upstreams.get(id(u))) and m[0] is u}
        try:
            return self._translate(ir)
        finally:
            self._previous, self._current = self._current, {}

    def _translate(self, ir: GatewayIR) -> Resources:
        resources = Resources(secrets=dict(translate_secrets(ir)))
        for upstream in ir.upstreams:
            protos = self._upstream(upstream)
            self._upstreams[id(upstream)] = (upstream, protos)
            name = names.cluster(upstream.name)
            resources.clusters[name] = protos[0]
            if len(protos) > 1:
                resources.endpoints[name] = protos[1]
        upstreams = {upstream.name: upstream for upstream in ir.upstreams}
        for listener in ir.listeners:
            for proto in translate_listeners(listener):
                resources.listeners[proto.name] = proto
            for routes in translate_route_configs(listener, self._route):
                resources.routes[routes.name] = routes
            for scope in translate_scopes(listener, per_host_hosts(listener)):
                resources.scoped_routes[scope.name] = scope
            for route in listener.routes:
                for extra in fallback_clusters(route.route, upstreams):
                    resources.clusters.setdefault(extra.name, extra)
                for extra in route_service_resources(route):
                    resources.add(extra)
            for name in listener.filters:
                for extra in TRANSLATORS[name].resources(listener.defaults.get(name)):
                    resources.add(extra)
        return resources
