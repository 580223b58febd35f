"""Which listener gets `route_tables: per_host`, and the routes it cannot serve (see translate.perhost for why)."""

from __future__ import annotations

from collections.abc import Mapping

from xgate.config.load import ConfigSet
from xgate.config.schema import Listener, Route
from xgate.errors import ConfigIssue

PER_HOST = "per_host"


def per_host_listener(
    config: ConfigSet, served_on: Mapping[str, object], fallback: Mapping[str, Route] | None
) -> tuple[str | None, list[ConfigIssue]]:
    """The listener served with a table per host, and the issues that keep the others to one table.

    Envoy sends every scoped-routes listener every scope, so one per gateway: the first by name; another is
    refused. Lenient builds (etcd: `fallback` holds what was served) change nothing that worked: while a route
    served there before names no exact host (the listener was just switched to per_host), the listener keeps one
    table and says why; a route that newly names no exact host is refused instead (see route_issues)."""
    wanted = sorted(item.name for item in config.listeners if item.route_tables == PER_HOST)
    if not wanted:
        return None, []
    first, issues = wanted[0], []
    for name in wanted[1:]:
        message = (
            f"only one listener may have route_tables: per_host, and listener {first} has it (Envoy would send each "
            "the other's hosts)"
        )
        issues.append(config.issue("listener", name, "route_tables", message))
    on = frozenset({first})
    held = [
        route.name
        for route in config.routes
        if (before := (fallback or {}).get(route.name)) is not None
        and route_issues(config, route, on, served_on)
        and route_issues(config, before, on, served_on)
    ]
    if held:
        more = f" (and {len(held) - 1} more)" if len(held) > 1 else ""
        message = (
            f"route {held[0]}{more} names no exact host, which per_host cannot serve: kept to one table until "
            "it does (name the hosts, or list other listeners in its `listeners`)"
        )
        return None, [*issues, config.issue("listener", first, "route_tables", message)]
    return first, issues


def served_listener(listener: Listener, per_host: str | None) -> Listener:
    """`listener` as served: per_host only if it is the one listener that gets it."""
    if listener.route_tables == PER_HOST and listener.name != per_host:
        return listener.model_copy(update={"route_tables": "one"})
    return listener


def route_issues(
    config: ConfigSet, route: Route, per_host: frozenset[str], served_on: Mapping[str, object]
) -> list[ConfigIssue]:
    """A per_host listener picks a host's table by the exact Host and has none for anything else: a route served
    there must name exact hosts (Envoy would answer 404 where the one table would match)."""
    on = sorted(per_host & set(route.listeners or served_on))
    loose = [host for host in route.match.hosts if "*" in host]
    if not on or not loose:
        return []
    message = (
        f"host {loose[0]!r} cannot be served on listener {', '.join(on)} (route_tables: per_host needs exact host "
        "names): name the hosts, or list other listeners in `listeners`"
    )
    return [config.issue("route", route.name, "match.hosts", message)]
