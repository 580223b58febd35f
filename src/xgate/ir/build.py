"""Config objects -> IR: reference checks, port clashes, plugin inheritance; every issue collected."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from xgate.config.load import ConfigSet
from xgate.config.messages import explain
from xgate.config.schema import Listener, Model, Route
from xgate.errors import ConfigError, ConfigIssue
from xgate.ir import perhost
from xgate.ir.model import GatewayIR, ListenerIR, RouteIR
from xgate.ir.policies import PolicyResolver, resolve_plugins
from xgate.ir.tls import listener_ports, listener_tls_issues, upstream_tls_issues, used_secrets
from xgate.plugins import FILTER_ORDER, PLUGINS


def build_ir(
    config: ConfigSet,
    revision: str = "",
    *,
    lenient: bool = False,
    fallback: Mapping[str, Route] | None = None,
    policies: PolicyResolver | None = None,
) -> GatewayIR:
    """Check what single objects cannot check alone and resolve defaults.

    Strict (a file): any issue raises ConfigError with every issue. Lenient (etcd, where each key is its own
    change): an object with issues is left out, or replaced by its `fallback` version (the one served
    before) when that one is still valid, and the issues travel in `GatewayIR.issues`.
    `policies` imports the policy modules the plugin defaults name (ir/policies.py; default: a new one).
    """
    return build_ir_and_context(config, revision, lenient=lenient, fallback=fallback, policies=policies)[0]


@dataclass
class RouteContext:
    """What checking and resolving one route needs: the objects it may refer to and each listener's
    inherited plugin settings. Kept by the incremental compiler to handle a route change alone."""

    config: ConfigSet
    upstreams: set[str]
    listeners: set[str]
    listener_plugins: dict[str, dict[str, Model | None]]
    lenient: bool
    # Per listener, the plugins whose defaults (document or listener) failed validation: reported already; a
    # route's issue with such a plugin says so (else "provider 'a' is not defined" hides that 'a' had a typo).
    invalid_defaults: dict[str, set[str]] = field(default_factory=dict)
    memo: PluginMemo = field(default_factory=lambda: PluginMemo())
    per_host: frozenset[str] = frozenset()  # listeners with `route_tables: per_host`

    def check(
        self, route: Route, fallback: Route | None
    ) -> tuple[Route | None, dict[str, Model | None], list[ConfigIssue]]:
        """(the version to serve or None, its plugin settings, issues); lenient builds fall back to `fallback`."""
        problems: list[ConfigIssue] = []
        own = _route_checks(self.config, route, self.upstreams, self.listeners, problems, self.memo)
        problems += self._plugin_checks(route, own)
        if self.per_host:
            problems += perhost.route_issues(self.config, route, self.per_host, self.listener_plugins)
        if not problems:
            return route, own, []
        previous = fallback if self.lenient else None
        again: list[ConfigIssue] = []
        if previous is not None and previous is not route:
            own = _route_checks(self.config, previous, self.upstreams, self.listeners, again, self.memo)
        if previous is None or previous is route or again:
            return None, {}, problems
        note = " (serving its last good version)"
        return previous, own, [replace(issue, message=issue.message + note) for issue in problems]

    def _plugin_checks(self, route: Route, own: Mapping[str, Model | None]) -> list[ConfigIssue]:
        """Each plugin's own checks of the route's settings against every listener it is served on."""
        found: list[ConfigIssue] = []
        for listener_name in route.listeners or sorted(self.listener_plugins):
            inherited = self.listener_plugins.get(listener_name, {})
            for name in sorted(set(inherited) | set(own)):
                settings = own[name] if name in own else inherited[name]
                if settings is None:
                    continue
                messages = PLUGINS[name].check(settings, inherited.get(name), name not in own, route)
                if name in self.invalid_defaults.get(listener_name, ()):
                    messages = [f"{text}; the {name} plugin's defaults are invalid (see them)" for text in messages]
                for message in messages:
                    issue = self.config.issue(
                        "route", route.name, f"plugins.{name}", f"{message} (listener {listener_name})"
                    )
                    if issue not in found:
                        found.append(issue)
            dyeing = own["dyeing"] if "dyeing" in own else inherited.get("dyeing")
            if route.canary and dyeing is None:
                message = f"no request carries a stage: the dyeing plugin is off on listener {listener_name}"
                found.append(self.config.issue("route", route.name, "canary", message))
        return found

    def attach(self, route: Route, own: Mapping[str, Model | None]) -> dict[str, RouteIR]:
        """The route as served on each listener it applies to."""
        return {
            name: _route_ir(route, self.listener_plugins[name], own, self.memo)
            for name in (route.listeners or sorted(self.listener_plugins))
            if name in self.listener_plugins
        }


def build_ir_and_context(
    config: ConfigSet,
    revision: str = "",
    *,
    lenient: bool = False,
    fallback: Mapping[str, Route] | None = None,
    policies: PolicyResolver | None = None,
) -> tuple[GatewayIR, RouteContext]:
    """build_ir, plus the RouteContext it used."""
    issues: list[ConfigIssue] = list(config.issues)
    upstream_names = {upstream.name for upstream in config.upstreams}
    # An object that failed its own validation is reported already; do not call it missing too.
    known_upstreams = upstream_names | {name for kind, name in config.broken if kind == "upstream"}
    clashes = _port_clashes(config)
    issues += clashes.values()
    secrets = {secret.name: secret for secret in config.secrets}
    for upstream in config.upstreams:
        issues += upstream_tls_issues(config, upstream, secrets)

    resolver = policies or PolicyResolver()
    resolver.start()
    defaults = _validated_plugins(config, "document", "plugins", config.plugins, "plugins", issues)
    resolve_plugins(resolver, config, "document", "plugins", defaults, issues)
    invalid_everywhere = {name for name in config.plugins if name in PLUGINS and name not in defaults}
    listener_plugins: dict[str, dict[str, Model | None]] = {}
    invalid_defaults: dict[str, set[str]] = {}
    global_names = _GlobalNames(config)
    global_names.define("the document's plugins", "document", "plugins", defaults, issues)
    for listener in config.listeners:
        problems: list[ConfigIssue] = []
        own = _validated_plugins(config, "listener", listener.name, listener.plugins, "plugins", problems)
        resolve_plugins(resolver, config, "listener", listener.name, own, problems)
        global_names.define(f"listener {listener.name}", "listener", listener.name, own, problems)
        problems += listener_tls_issues(config, listener, secrets)
        issues += problems
        invalid = {name for name in listener.plugins if name in PLUGINS and name not in own}
        invalid_defaults[listener.name] = invalid | (invalid_everywhere - set(own))
        if not (lenient and (problems or listener.name in clashes)):
            listener_plugins[listener.name] = {**defaults, **own}
    known_listeners = set(listener_plugins) | {name for kind, name in config.broken if kind == "listener"}
    if lenient:
        known_listeners |= {listener.name for listener in config.listeners}  # dropped ones are reported already
    context = RouteContext(config, known_upstreams, known_listeners, listener_plugins, lenient, invalid_defaults)
    # A refused per_host is not a reason to leave a listener out: it is served with one table.
    per_host, refused = perhost.per_host_listener(config, listener_plugins, fallback if lenient else None)
    issues += refused
    context.per_host = frozenset([per_host] if per_host else [])
    attached: dict[str, list[RouteIR]] = {name: [] for name in listener_plugins}
    checked: list[tuple[Route, dict[str, Model | None]]] = []
    for route in config.routes:
        served, own_plugins, problems = context.check(route, (fallback or {}).get(route.name))
        issues += problems
        if served is not None:  # else left out (strict: the whole config is refused)
            checked.append((served, own_plugins))
    # Ordered by the version actually served (a held-back route keeps its old place).
    # Ties broken by name, so the same objects route the same from a file or from etcd, in any order.
    for served, own_plugins in sorted(checked, key=lambda item: (*precedence(item[0]), item[0].name)):
        for listener_name, route_ir in context.attach(served, own_plugins).items():
            attached[listener_name].append(route_ir)
    if issues and not lenient:
        raise ConfigError(issues)
    listeners = tuple(
        _listener_ir(
            perhost.served_listener(listener, per_host), tuple(attached[listener.name]), listener_plugins[listener.name]
        )
        for listener in sorted(config.listeners, key=lambda item: item.name)
        if listener.name in attached
    )
    upstreams = tuple(sorted(config.upstreams, key=lambda item: item.name))
    named = used_secrets([item.listener for item in listeners], upstreams, config)
    ir = GatewayIR(listeners=listeners, upstreams=upstreams, revision=revision, issues=tuple(issues), secrets=named)
    return ir, context


def precedence(route: Route) -> tuple[int, int, int, int, int, int]:
    """Sort key of routes, the way Gateway API orders them: higher `priority` first, then exact paths,
    regexes, then prefixes (longest first), then more method, header and query matches (then the name)."""
    path = route.match.path
    kind, length = (
        (0, len(path.exact))
        if path.exact is not None
        else (1, 0)
        if path.regex is not None
        else (
            2,
            len(path.prefix or ""),
        )
    )
    match = route.match
    return (-route.priority, kind, -length, -bool(match.methods), -len(match.headers), -len(match.query))


def _route_checks(
    config: ConfigSet,
    route: Route,
    upstreams: set[str],
    listeners: set[str],
    issues: list[ConfigIssue],
    memo: PluginMemo | None = None,
) -> dict[str, Model | None]:
    """Append the route's reference and plugin issues to `issues`; return its validated plugin settings."""
    for field_name, ref in _upstream_refs(route):
        if ref not in upstreams:
            issues.append(config.issue("route", route.name, field_name, f"upstream {ref!r} does not exist"))
    for index, ref in enumerate(route.listeners):
        if ref not in listeners:
            issues.append(config.issue("route", route.name, f"listeners.{index}", f"listener {ref!r} does not exist"))
    if route.canary:
        _canary_checks(config, route, issues)
    if not route.plugins:
        return {}
    return _validated_plugins(config, "route", route.name, route.plugins, "plugins", issues, memo)


def _upstream_refs(route: Route) -> list[tuple[str, str]]:
    canaries = [(f"canary.{index}.upstream", canary.upstream) for index, canary in enumerate(route.canary)]
    if route.upstream is not None:
        return [("upstream", route.upstream), *canaries]
    return [(f"split.{index}.upstream", target.upstream) for index, target in enumerate(route.split or ())] + canaries


def _canary_checks(config: ConfigSet, route: Route, issues: list[ConfigIssue]) -> None:
    """A canary that falls back needs health checks on its upstream: without them its endpoints never count
    as unhealthy, so the fallback could never happen."""
    upstreams = config.upstream_named
    for index, canary in enumerate(route.canary):
        upstream = upstreams.get(canary.upstream)
        if canary.fallback and upstream is not None and upstream.health_check is None:
            message = (
                f"upstream {canary.upstream!r} has no health_check, so the fallback to "
                f"{route.stable_upstream!r} would never happen: add one, or set fallback: false"
            )
            issues.append(config.issue("route", route.name, f"canary.{index}.fallback", message))


_NO_PLUGINS: Mapping[str, Model] = {}


def _route_ir(
    route: Route, inherited: Mapping[str, Model | None], own: Mapping[str, Model | None], memo: PluginMemo
) -> RouteIR:
    if not inherited and not own:
        return RouteIR(route=route, plugins=_NO_PLUGINS)
    merged = {**inherited, **own}
    enabled = {
        name: memo.resolve(name, settings, inherited.get(name)) if name in own else settings
        for name, settings in merged.items()
        if settings is not None
    }
    disabled = _shared(frozenset(name for name, settings in merged.items() if settings is None))
    needs = _shared(frozenset(need for name, settings in enabled.items() for need in PLUGINS[name].needs(settings)))
    return RouteIR(route=route, plugins=enabled, disabled=disabled, needs=needs)


# Sets of plugin or need names: few distinct ones (bounded by the plugins there are), so every route shares the
# one copy of its sets instead of holding two of its own (20 MB at 50,000 routes).
_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared(names: frozenset[str]) -> frozenset[str]:
    return _SETS.setdefault(names, names)


def _listener_ir(listener: Listener, routes: tuple[RouteIR, ...], plugins: Mapping[str, Model | None]) -> ListenerIR:
    used = {name for route in routes for name in route.filters}
    defaults = {name: settings for name, settings in plugins.items() if settings is not None}
    return ListenerIR(
        listener=listener, routes=routes, filters=tuple(n for n in FILTER_ORDER if n in used), defaults=defaults
    )


class PluginMemo:
    """Plugin settings validated, and resolved against a listener's defaults, once per distinct value: 10,000
    routes saying `jwt: {provider: main}` share one settings object and one resolved copy of the provider, where
    each had its own (validation per route, and the jwt plugin copies its provider into each route's settings).
    Kept with the RouteContext, so for one full compile and the incremental changes after it; never more than
    LIMIT entries (it is emptied then: only speed is lost)."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self._validated: dict[tuple[str, str], Model] = {}
        self._resolved: dict[tuple[str, int, int], tuple[Model, Model | None, Model]] = {}

    def validate(self, plugin_name: str, settings: Any) -> Model:
        """PLUGINS[plugin_name].validate(settings), or the same object for settings validated before (errors:
        pydantic's ValidationError, as validate's)."""
        key = (plugin_name, repr(settings))  # plain YAML data: equal reprs are equal data (1 and "1" differ)
        found = self._validated.get(key)
        if found is None:
            found = PLUGINS[plugin_name].validate(settings)
            self._keep(self._validated)[key] = found
        return found

    def resolve(self, plugin_name: str, settings: Model, defaults: Model | None) -> Model:
        """PLUGINS[plugin_name].resolve(settings, defaults), once per pair of objects."""
        key = (plugin_name, id(settings), id(defaults))
        found = self._resolved.get(key)
        # The entry holds the objects its ids name, so the ids cannot be reused by other objects meanwhile.
        if found is None or found[0] is not settings or found[1] is not defaults:
            found = (settings, defaults, PLUGINS[plugin_name].resolve(settings, defaults))
            self._keep(self._resolved)[key] = found
        return found[2]

    def _keep(self, memo: dict[Any, Any]) -> dict[Any, Any]:
        if len(memo) >= self.LIMIT:
            memo.clear()
        return memo


class _GlobalNames:
    """Names plugin defaults define that must mean one thing on every listener (PluginSpec.global_names): the
    first definition of a name stands, another one differing from it is refused where it is written."""

    def __init__(self, config: ConfigSet) -> None:
        self._config = config
        self._first: dict[tuple[str, str], tuple[str, Model]] = {}

    def define(
        self, where: str, kind: str, name: str, plugins: Mapping[str, Model | None], issues: list[ConfigIssue]
    ) -> None:
        for plugin_name, settings in plugins.items():
            if settings is None:
                continue
            for field_name, defined, value in PLUGINS[plugin_name].global_names(settings):
                first = self._first.setdefault((plugin_name, defined), (where, value))
                if first[1] != value:
                    message = f"{defined} is defined differently in {first[0]}: one name, one meaning on every listener"
                    issues.append(self._config.issue(kind, name, f"plugins.{plugin_name}.{field_name}", message))


def _validated_plugins(
    config: ConfigSet,
    kind: str,
    name: str,
    raw: Mapping[str, Any],
    field_name: str,
    issues: list[ConfigIssue],
    memo: PluginMemo | None = None,
) -> dict[str, Model | None]:
    """Validate each plugin's settings; `false`/`null` means "off here" and is kept as None."""
    result: dict[str, Model | None] = {}
    for plugin_name, settings in raw.items():
        plugin = PLUGINS.get(plugin_name)
        where = f"{field_name}.{plugin_name}"
        if plugin is None:
            known = ", ".join(sorted(PLUGINS))
            issues.append(config.issue(kind, name, where, f"unknown plugin (known: {known})"))
            continue
        if settings is None or settings is False:
            result[plugin_name] = None
            continue
        try:
            result[plugin_name] = (
                memo.validate(plugin_name, settings) if memo is not None else plugin.validate(settings)
            )
        except ValidationError as exc:
            for loc, message in explain(exc.errors()):
                issues.append(config.issue(kind, name, ".".join(str(part) for part in (where, *loc)), message))
    return result


def _port_clashes(config: ConfigSet) -> dict[str, ConfigIssue]:
    """Listeners that ask for a port an earlier listener has (its own, or a TLS listener's redirect port)."""
    issues: dict[str, ConfigIssue] = {}
    taken: dict[int, list[Listener]] = {}
    for listener in config.listeners:
        for port, field_name in listener_ports(listener):
            if port == 0:
                continue
            for other in taken.get(port, []):
                if other is not listener and _overlap(listener.address, other.address):
                    message = f"port {port} is already used by listener {other.name}"
                    issues[listener.name] = config.issue("listener", listener.name, field_name, message)
            taken.setdefault(port, []).append(listener)
    return issues


def _overlap(first: str, second: str) -> bool:
    a, b = ipaddress.ip_address(first), ipaddress.ip_address(second)
    return a == b or a.is_unspecified or b.is_unspecified
