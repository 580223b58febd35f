"""What a plugin is to the translator: Envoy filters for a listener, config for a route, extra resources.

Three hooks, as Envoy Gateway's HTTP filters have: `http_filters` (the listener's filters, once per listener
that has a route using the plugin, in FILTER_ORDER; it may also set up the connection manager), `route` (what
one route needs: per-filter config, actions, or several Envoy routes in its place) and `resources` (what the
listener's use of the plugin needs beyond routes: the cluster of a service, and the xgate resources that
service is configured with). A plugin whose service needs something per route also has `route_resources`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Generic

from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from google.protobuf.message import Message

from xgate.config.schema import Route
from xgate.plugins.base import PluginSpec, S


class PluginTranslator(Generic[S]):
    """The Envoy side of one plugin; `spec` is its config side (name, settings type, checks)."""

    spec: ClassVar[PluginSpec[Any]]

    @property
    def name(self) -> str:
        return self.spec.name

    def http_filters(self, defaults: S | None, manager: hcm_v3.HttpConnectionManager) -> list[hcm_v3.HttpFilter]:
        """The listener's filters, given the plugin's global/listener settings (`defaults`, None when unset);
        `manager` may be changed for what must happen before routing. Per-route config does the rest."""
        raise NotImplementedError

    def route(
        self, settings: S | None, route: Route, proto: route_components_v3.Route
    ) -> Sequence[route_components_v3.Route]:
        """Make `proto` serve `route` with the plugin on (`settings`) or switched off (None) on a listener that
        has its filter; return the Envoy routes that serve it, in match order (usually just `proto`)."""
        raise NotImplementedError

    def resources(self, defaults: S | None) -> list[Message]:
        """Resources a listener using the plugin needs, given its global/listener settings: clusters, and
        xgate resources for the plugin's service; none by default."""
        del defaults
        return []

    def route_resources(self, settings: S, route: Route) -> list[Message]:
        """xgate resources the plugin's service needs for one route that has it on; none by default."""
        del settings, route
        return []
