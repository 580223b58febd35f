"""The whole translation: one GatewayIR -> every Envoy resource, by kind."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message

from xgate.ir.model import GatewayIR
from xgate.translate.cluster import translate_cluster, translate_endpoints, uses_eds
from xgate.translate.listener import translate_listener
from xgate.translate.plugins import PLUGINS
from xgate.translate.route import translate_routes


@dataclass(frozen=True)
class Resources:
    """Envoy resources by kind, each a name -> proto mapping (names from translate.names)."""

    clusters: dict[str, Message] = field(default_factory=dict)
    endpoints: dict[str, Message] = field(default_factory=dict)
    listeners: dict[str, Message] = field(default_factory=dict)
    routes: dict[str, Message] = field(default_factory=dict)

    def by_kind(self) -> dict[str, dict[str, Message]]:
        return {
            "clusters": self.clusters,
            "endpoints": self.endpoints,
            "listeners": self.listeners,
            "routes": self.routes,
        }


def translate(ir: GatewayIR) -> Resources:
    resources = Resources()
    for upstream in ir.upstreams:
        cluster = translate_cluster(upstream)
        resources.clusters[cluster.name] = cluster
        if uses_eds(upstream):
            resources.endpoints[cluster.name] = translate_endpoints(upstream)
    for listener in ir.listeners:
        proto = translate_listener(listener)
        resources.listeners[proto.name] = proto
        routes = translate_routes(listener)
        resources.routes[routes.name] = routes
        for route in listener.routes:
            for name, settings in route.plugins.items():
                for extra in PLUGINS[name].clusters(settings):
                    resources.clusters.setdefault(extra.name, extra)
    return resources
