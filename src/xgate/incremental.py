"""Route changes applied to the last full compile, without rebuilding the rest.

This is the fast path for etcd (which says which routes changed) and for files (compared with the previous
revision by object identity): a change to one route of 10,000 re-checks and re-serializes that route and
joins the table's bytes again, where a full compile walks every object. It only takes route changes made
while listeners, upstreams and plugin defaults stayed the same objects, and only when no listener needs
its filter chain changed, no canary fallback cluster appears or goes and, on a `route_tables: per_host`
listener, no host appears or goes (there it re-assembles only the touched hosts' tables); anything else returns
None and the caller compiles in full (and resets this).
Its output equals a full compile's (tests compare the bytes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import compress, count
from operator import is_not
from typing import Any, cast

from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from google.protobuf.message import Message

from xgate.api import type_url
from xgate.config.load import ConfigSet
from xgate.config.schema import Model, Route
from xgate.errors import ConfigIssue
from xgate.ir.build import RouteContext
from xgate.ir.model import GatewayIR
from xgate.translate import Resources, names
from xgate.translate.failover import route_aggregates
from xgate.translate.perhost import PER_HOST
from xgate.translate.resources import route_service_resources
from xgate.translate.routetable import RouteTable


@dataclass
class _Base:
    config: ConfigSet
    context: RouteContext
    tables: dict[str, RouteTable]
    assembled: dict[str, bytes]
    resources: Resources
    served: dict[str, Route]
    route_issues: dict[str, list[ConfigIssue]]
    other_issues: list[ConfigIssue]
    plugin_use: dict[str, Counter[str]] = field(default_factory=dict)
    services: dict[str, dict[str, Message]] = field(default_factory=dict)  # the services' resources, by type
    route_services: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # route -> (type, name) it made
    # A listener asks for per_host but is kept to one table until its routes allow it: each change may be the
    # one that does, which only a full compile sees.
    per_host_held: bool = False


class IncrementalCompiler:
    def __init__(self) -> None:
        self._base: _Base | None = None

    def reset(self, config: ConfigSet, ir: GatewayIR, context: RouteContext, resources: Resources) -> None:
        """Take the state of a full compile (its routes' protos are reused, not translated again; its route
        configurations are kept as the bytes the tables assemble, not as messages: 6 MB at 10,000 routes)."""
        tables: dict[str, RouteTable] = {}
        plugin_use: dict[str, Counter[str]] = {}
        configs: dict[str, list[Message | bytes]] = {}  # a listener's route configurations (per_host: several)
        for name, route_config in resources.routes.items():
            configs.setdefault(names.route_config_listener(name), []).append(route_config)
        for listener in ir.listeners:
            per_host = listener.listener.route_tables == PER_HOST
            table = tables[listener.name] = RouteTable(listener.name, listener.filters, per_host=per_host)
            protos = _route_protos(configs.get(listener.name, []))
            for route in listener.routes:
                table.put(route, protos.get(route.name))
            table.take_touched()
            plugin_use[listener.name] = Counter(name for route in listener.routes for name in route.filters)
        route_issues: dict[str, list[ConfigIssue]] = {}
        other: list[ConfigIssue] = []
        for issue in ir.issues:
            kind, _, name = issue.obj.partition(" ")
            (route_issues.setdefault(name, []) if kind == "route" else other).append(issue)
        served = {route.route.name: route.route for listener in ir.listeners for route in listener.routes}
        assembled = {name: config for table in tables.values() for name, config in table.configs().items()}
        resources = replace(resources, routes={**resources.routes, **assembled})
        self._base = _Base(config, context, tables, assembled, resources, served, route_issues, other, plugin_use)
        self._base.services = {url: dict(found) for url, found in resources.services.items()}
        wanted = sorted(item.name for item in config.listeners if item.route_tables == PER_HOST)
        self._base.per_host_held = bool(wanted) and wanted[0] in tables and not tables[wanted[0]].per_host
        for listener in ir.listeners:
            for route in listener.routes:
                if route.name not in self._base.route_services:
                    self._base.route_services[route.name] = _keys(route_service_resources(route))

    def clear(self) -> None:
        self._base = None

    @property
    def served(self) -> dict[str, Route]:
        return self._base.served if self._base else {}

    def apply(
        self, config: ConfigSet, changes: Mapping[str, Route | None]
    ) -> tuple[Resources, list[ConfigIssue]] | None:
        """The resources after `changes` (route name -> new valid version, or None when deleted or never
        valid), or None when this change needs a full compile."""
        base = self._base
        if base is None or base.per_host_held or not _same_surroundings(base.config, config):
            return None
        # Check first, change after: a strict build (a file) refuses the whole revision on any issue, and then
        # nothing here may have moved.
        checked: list[tuple[str, Route | None, dict[str, Model | None], list[ConfigIssue]]] = []
        for name, route in changes.items():
            previous = base.served.get(name)
            served: Route | None = None
            own: dict[str, Model | None] = {}
            problems: list[ConfigIssue] = []
            if route is not None:
                served, own, problems = base.context.check(route, previous)
                if problems and not base.context.lenient:
                    return None
            if _fallbacks(served) != _fallbacks(previous):
                return None  # aggregates are clusters of their own: a full compile adds or drops them
            checked.append((name, served, own, problems))
        touched: set[str] = set()
        # per_host: a host that appears or goes adds or drops a scope (and a table): left to a full compile.
        hosts = {listener: table.hosts() for listener, table in base.tables.items() if table.per_host}
        for name, served, own, problems in checked:
            for listener, table in base.tables.items():
                if (old := table.get(name)) is not None:
                    base.plugin_use[listener].subtract(list(old.filters))
                    table.remove(name)
                    touched.add(listener)
            base.route_issues.pop(name, None)
            if problems:
                base.route_issues[name] = problems
            for url, key in base.route_services.pop(name, ()):
                base.services.get(url, {}).pop(key, None)
            if served is None:
                base.served.pop(name, None)
                continue
            base.served[name] = served
            for listener, route_ir in base.context.attach(served, own).items():
                if name not in base.route_services:
                    made = route_service_resources(route_ir)
                    base.route_services[name] = _keys(made)
                    for message in made:
                        base.services.setdefault(type_url(message), {})[cast(Any, message).name] = message
                table = base.tables[listener]
                if not route_ir.filters <= set(table.filters):
                    self.clear()
                    return None  # the listener needs another filter: a full compile changes the listener
                table.put(route_ir)
                base.plugin_use[listener].update(list(route_ir.filters))
                touched.add(listener)
        for listener in touched:
            use = base.plugin_use[listener]
            if any(use[plugin] <= 0 for plugin in base.tables[listener].filters):
                self.clear()
                return None  # the last route using a filter is gone: a full compile drops the filter
            table = base.tables[listener]
            if not table.per_host:
                base.assembled[names.route_config(listener)] = table.assemble()
            elif table.hosts() != hosts[listener]:
                self.clear()
                return None
            else:  # only the hosts whose routes changed: Envoy re-reads those tables alone
                for host in table.take_touched():
                    base.assembled[names.host_route_config(listener, host)] = table.assemble_host(host)
        base.config = config
        routes: dict[str, Message | bytes] = dict(base.assembled)
        resources = Resources(
            clusters=base.resources.clusters,
            endpoints=base.resources.endpoints,
            listeners=base.resources.listeners,
            routes=routes,
            scoped_routes=base.resources.scoped_routes,
            filter_configs=base.resources.filter_configs,
            secrets=base.resources.secrets,
            services={url: dict(found) for url, found in base.services.items() if found},
        )
        issues = base.other_issues + [issue for name in sorted(base.route_issues) for issue in base.route_issues[name]]
        return resources, issues


def _keys(messages: list[Message]) -> list[tuple[str, str]]:
    return [(type_url(message), cast(Any, message).name) for message in messages]


def route_changes(before: ConfigSet, after: ConfigSet) -> dict[str, Route | None] | None:
    """The routes that differ between two revisions of one source (by object identity: the source's cache
    hands back the same object for an unchanged route), or None when anything else differs."""
    if not _same_surroundings(before, after):
        return None
    old_routes, new_routes = before.routes, after.routes
    if isinstance(old_routes, tuple) and isinstance(new_routes, tuple):
        # Names are unique in each, so the same objects at the same places at both ends are no change: compare
        # only the middle (at C speed to find it: a save of one route of 10,000 took ~2 ms in the loop below).
        first = next(compress(count(), map(is_not, old_routes, new_routes)), min(len(old_routes), len(new_routes)))
        ends = map(is_not, reversed(old_routes[first:]), reversed(new_routes[first:]))
        last = next(compress(count(), ends), min(len(old_routes), len(new_routes)) - first)
        old_routes = old_routes[first : len(old_routes) - last]
        new_routes = new_routes[first : len(new_routes) - last]
    old = {route.name: route for route in old_routes}
    changes: dict[str, Route | None] = {}
    for route in new_routes:
        if old.pop(route.name, None) is not route:
            changes[route.name] = route
    changes.update(dict.fromkeys(old))
    return changes


def _fallbacks(route: Route | None) -> frozenset[str]:
    """The names of a route's aggregate clusters, canary fallbacks and split targets (a cluster is fully named
    by its upstreams)."""
    if route is None or not (route.canary or route.split):
        return frozenset()
    return frozenset(name for name, _ in route_aggregates(route))


def _same_surroundings(before: ConfigSet, after: ConfigSet) -> bool:
    """True when only routes may differ: the same listener, upstream and secret objects and plugin defaults."""
    return (
        _same_objects(before.listeners, after.listeners)
        and _same_objects(before.upstreams, after.upstreams)
        and _same_objects(before.secrets, after.secrets)
        and before.plugins == after.plugins
    )


def _same_objects(before: tuple[Any, ...], after: tuple[Any, ...]) -> bool:
    return len(before) == len(after) and all(a is b for a, b in zip(before, after, strict=True))


def _route_protos(configs: list[Message | bytes]) -> dict[str, list[route_components_v3.Route]]:
    """Each config route's Envoy routes, by name, from a listener's translated RouteConfigurations (taken from
    the first virtual host that has the route: they are the same in every one)."""
    found: dict[str, list[route_components_v3.Route]] = {}
    virtual_hosts = [host for config in configs if isinstance(config, route_v3.RouteConfiguration)
                     for host in config.virtual_hosts]  # fmt: skip
    for virtual_host in virtual_hosts:
        here: dict[str, list[route_components_v3.Route]] = {}
        for route in virtual_host.routes:
            if route.name not in found:
                here.setdefault(route.name, []).append(route)
        found.update(here)
    return found
