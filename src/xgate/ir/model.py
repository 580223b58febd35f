"""IR types: what translation needs, nothing it must look up or default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xgate.config.schema import Listener, Model, Route, Upstream
from xgate.config.tls import Secret
from xgate.errors import ConfigIssue


@dataclass(frozen=True)
class RouteIR:
    """A route as served on one listener; `plugins` holds the settings of each plugin it has on."""

    route: Route
    plugins: Mapping[str, Model]
    disabled: frozenset[str] = frozenset()
    needs: frozenset[str] = frozenset()  # filters of other plugins the route's plugins need (Plugin.needs)

    @property
    def filters(self) -> frozenset[str]:
        """The plugins whose listener filters this route needs."""
        return frozenset(self.plugins) | self.needs

    @property
    def name(self) -> str:
        return self.route.name


@dataclass(frozen=True)
class ListenerIR:
    """A listener with its routes in match order and the plugins whose filters it needs, in filter order."""

    listener: Listener
    routes: tuple[RouteIR, ...]
    filters: tuple[str, ...]
    defaults: Mapping[str, Model] = field(default_factory=dict)  # plugin settings from the global/listener level

    @property
    def name(self) -> str:
        return self.listener.name


@dataclass(frozen=True)
class GatewayIR:
    """One consistent revision of the whole gateway."""

    listeners: tuple[ListenerIR, ...]
    upstreams: tuple[Upstream, ...]
    revision: str = ""
    issues: tuple[ConfigIssue, ...] = ()  # lenient builds only: what was left out or held back, and why
    secrets: Mapping[str, Secret] = field(default_factory=dict)  # those the listeners and upstreams name
