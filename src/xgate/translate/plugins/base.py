"""What a plugin is: settings, an HTTP filter per listener, config per route, extra resources."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xgate.config.schema import Model, Route


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class Plugin(ABC):
    """One plugin. Subclasses set `name`, `filter_name` and `settings` and build protos from validated settings.

    Translation calls `http_filters` once per listener that has at least one route using the plugin, in the
    order of `FILTER_ORDER` (see plugins/__init__.py); `route_configs` and `patch_route` once per route that
    enables it; `disabled_route_configs` for a route on such a listener that switched the plugin off;
    `clusters` for resources the plugin needs beyond the routes (e.g. the cluster of an external service);
    `expand_route` when one config route becomes several Envoy routes; `patch_connection_manager` for what
    must happen before routing.
    A plugin with one filter implements the singular methods; the plural ones default to them.
    """

    name: ClassVar[str]
    filter_name: ClassVar[str]
    settings: ClassVar[type[Model]]

    @abstractmethod
    def http_filter(self) -> hcm_v3.HttpFilter:
        """The listener-level filter; per-route config does the route-specific work."""

    @abstractmethod
    def route_config(self, settings: Model) -> Message:
        """The typed_per_filter_config of a route that has the plugin on."""

    def disabled_route_config(self) -> Message:
        """The typed_per_filter_config of a route that switched the plugin off."""
        return route_components_v3.FilterConfig(disabled=True)

    def http_filters(self, defaults: Model | None) -> list[hcm_v3.HttpFilter]:
        """The listener's filters; `defaults` are the plugin's global/listener settings, if any."""
        del defaults
        return [self.http_filter()]

    def route_configs(self, settings: Model) -> dict[str, Message]:
        """typed_per_filter_config entries by filter name."""
        return {self.filter_name: self.route_config(settings)}

    def disabled_route_configs(self) -> dict[str, Message]:
        return {self.filter_name: self.disabled_route_config()}

    def check(self, settings: Model, defaults: Model | None, inherited: bool) -> list[str]:
        """Problems of a route's settings against its listener's defaults (`inherited`: the route did not
        set the plugin itself); none by default."""
        del settings, defaults, inherited
        return []

    def check_route(self, settings: Model, route: Route) -> list[str]:
        """Problems of the plugin's settings with this particular route (its match or action); none by default."""
        del settings, route
        return []

    def resolve(self, settings: Model, defaults: Model | None) -> Model:
        """A route's own settings completed from its listener's defaults where route translation needs them
        (e.g. the jwt provider the route names); unchanged by default."""
        del defaults
        return settings

    def needs(self, settings: Model) -> tuple[str, ...]:
        """Other plugins whose listener filter a route with these (resolved) settings needs, e.g. the
        ext_authz filter of `policy` for a token verified in Python; none by default."""
        del settings
        return ()

    def patch_route(self, settings: Model, route: route_components_v3.Route) -> None:
        """Change the route itself where per-filter config cannot (e.g. rate limit actions); none by default."""
        del settings, route

    def expand_route(
        self, settings: Model, route: Route, proto: route_components_v3.Route
    ) -> list[route_components_v3.Route]:
        """The Envoy routes that serve one translated route, in match order (e.g. one per dye rule); the
        route itself by default."""
        del settings, route
        return [proto]

    def patch_connection_manager(self, defaults: Model | None, manager: hcm_v3.HttpConnectionManager) -> None:
        """Change the listener's connection manager beyond its filters (given the global/listener settings);
        nothing by default."""
        del defaults, manager

    def clusters(self, defaults: Model | None) -> list[cluster_v3.Cluster]:
        """Extra clusters a listener using the plugin needs (given its global/listener settings); none by
        default."""
        del defaults
        return []
