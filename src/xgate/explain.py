"""What a request gets from a compiled config: its route, the plugins that apply and where it goes (`xgate explain`)."""

from __future__ import annotations

import urllib.parse
from typing import Any

from envoy.config.route.v3 import route_pb2 as route_v3
from google.protobuf import json_format

from xgate.dyeing.rules import Dyer, DyeRequest
from xgate.errors import XgateError
from xgate.ir.model import ListenerIR
from xgate.pipeline import Compiled
from xgate.plugins.dyeing import STICKY_KEY, STICKY_NAMESPACE, DyeingSettings
from xgate.translate import names
from xgate.translate.matching import Request, select
from xgate.translate.perhost import per_host_hosts


class ExplainError(XgateError):
    """The request cannot be explained: a malformed URL or header, or no listener to take it."""


def parse_request(method: str, url: str, headers: list[str]) -> Request:
    """A Request from the command line's METHOD, URL and NAME:VALUE headers (a Host header wins over the URL's).

    Errors: ExplainError naming what is malformed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ExplainError(f"URL {url!r}: give a full http:// or https:// URL, like http://api.example.com/users")
    values: dict[str, list[str]] = {}
    for header in headers:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            raise ExplainError(f"header {header!r}: write it NAME:VALUE, like -H 'x-version: v2'")
        values.setdefault(name.strip().lower(), []).append(value.strip())
    authority = (values.pop("host", None) or [parts.netloc])[-1]
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Request(method=method.upper(), authority=authority, path=path, headers=values)


def choose_listener(compiled: Compiled, url: str, name: str | None) -> ListenerIR:
    """The listener named `name`; else the one on the URL's port; else the only one.

    Errors: ExplainError listing the listeners when none or several could take the request."""
    listeners = compiled.ir.listeners
    if name is not None:
        for listener in listeners:
            if listener.name == name:
                return listener
        raise ExplainError(f"no listener {name!r} (listeners: {', '.join(lis.name for lis in listeners) or 'none'})")
    port = urllib.parse.urlsplit(url).port
    on_port = [listener for listener in listeners if listener.listener.port == port]
    if len(on_port) == 1:
        return on_port[0]
    if len(listeners) == 1:
        return listeners[0]
    raise ExplainError(
        f"{len(listeners)} listeners could take it; put one's port in the URL or name it with --listener: "
        + ", ".join(f"{listener.name} (port {listener.listener.port})" for listener in listeners)
    )


def route_table(compiled: Compiled, listener: ListenerIR, authority: str) -> route_v3.RouteConfiguration | None:
    """The table Envoy routes a request for `authority` by: the listener's one table, or with `route_tables:
    per_host` the table of the host the Host names without its port, exactly (None: no such host, a 404)."""
    name = names.route_config(listener.name)
    if per_host_hosts(listener):
        name = names.host_route_config(listener.name, authority.split(":", 1)[0])
    table = compiled.resources.routes.get(name)
    if table is None or isinstance(table, route_v3.RouteConfiguration):
        return table
    return route_v3.RouteConfiguration.FromString(table)


def explain(compiled: Compiled, request: Request, listener: ListenerIR) -> dict[str, Any]:
    """What happens to `request` on `listener`, as plain data (see the README's "explain")."""
    table = route_table(compiled, listener, request.authority)
    head: dict[str, Any] = {
        "request": f"{request.method} {request.authority}{request.path}",
        "listener": f"{listener.name} (port {listener.listener.port})",
    }
    if table is None:
        host = request.authority.split(":", 1)[0]
        return {**head, "route": None, "answer": f"404: no host {host!r} here (route_tables: per_host, exact case)"}
    selection = select(table, request)
    if selection is None:
        return {**head, "route": None, "answer": "404: no route matches"}
    by_name = {route.name: route for route in listener.routes}
    stage: dict[str, Any] | None = None
    settings = by_name[selection.route.name].plugins.get("dyeing")
    if isinstance(settings, DyeingSettings) and settings.rules:
        # As in Envoy: the first match picks the dyeing settings, the stage header is set (a client's own copy
        # replaced unless trusted) and the route is chosen again with it.
        dyer, seen = Dyer(settings), _dye_request(request)
        dye = dyer.dye(seen)
        # The sticky rules' routes match on what the Lua filter sets: each sticky rule the request satisfies.
        sticky = {STICKY_KEY % index: True for index, rule in enumerate(settings.rules)
                  if rule.sticky is not None and dyer.satisfies(index, seen)}  # fmt: skip
        stage = {"stage": dye.stage, "by": "the client (trusted)" if dye.kept else
                 f"rule {dye.rule}" if dye.rule is not None else "default"}  # fmt: skip
        headers = {**request.headers, settings.header: [dye.stage]}
        request = Request(request.method, request.authority, request.path, headers, {STICKY_NAMESPACE: sticky})
        selection = select(table, request)
        if selection is None:
            return {**head, "stage": stage, "route": None, "answer": "404: no route matches"}
    proto = selection.route
    ir = by_name[proto.name]
    if stage is not None:
        head["stage"] = stage
    result: dict[str, Any] = {
        **head,
        "virtual_host": selection.virtual_host.name,
        "route": proto.name,
        "position": selection.index,
        "match": json_format.MessageToDict(proto.match, preserving_proto_field_name=True),
    }
    action = proto.WhichOneof("action")
    if action == "redirect":
        result["redirect"] = json_format.MessageToDict(proto.redirect, preserving_proto_field_name=True)
    elif action == "direct_response":
        result["direct_response"] = {"status": proto.direct_response.status, "body": ir.route.direct_response.body}  # type: ignore[union-attr]
    else:
        result["upstreams"] = _targets(compiled, proto)
    result["plugins"] = {
        name: settings.model_dump(mode="json", exclude_defaults=True) for name, settings in sorted(ir.plugins.items())
    }
    if ir.disabled:
        result["plugins_switched_off"] = sorted(ir.disabled)
    return result


def _dye_request(request: Request) -> DyeRequest:
    """What the dye rules see; claims are not known here (a rule on a claim does not match), nor the source."""
    headers = {name: ",".join(values) for name, values in request.headers.items()}
    headers[":path"] = request.path
    return DyeRequest(headers=headers)


def _targets(compiled: Compiled, proto: Any) -> list[dict[str, Any]]:
    upstreams = {upstream.name: upstream for upstream in compiled.ir.upstreams}
    action = proto.route
    if action.HasField("weighted_clusters"):
        chosen = [(entry.name, entry.weight.value) for entry in action.weighted_clusters.clusters]
    else:
        chosen = [(action.cluster, None)]
    targets = []
    for cluster, weight in chosen:
        entry: dict[str, Any] = {"cluster": cluster}
        if weight is not None:
            entry["weight"] = weight
        name, fallbacks = _upstream_of(cluster)
        upstream = upstreams.get(name)
        if upstream is not None:
            entry["upstream"] = upstream.name
            if fallbacks:
                entry["fails_over_to"] = fallbacks
            entry["endpoints"] = [
                f"{point.host}:{point.port}"
                + (f" weight {point.weight}" if point.weight != 1 else "")
                + (f" priority {point.priority}" if point.priority else "")
                for point in upstream.endpoints
            ]
        targets.append(entry)
    return targets


def _upstream_of(cluster: str) -> tuple[str, list[str]]:
    """The upstream a cluster sends to first, and those it falls back to (see translate.names)."""
    if cluster.startswith(names.FALLBACK):
        first, _, then = cluster.removeprefix(names.FALLBACK).partition("/")
        return first, then.split(",")
    return cluster.removeprefix(names.UPSTREAM), []


def explain_request(
    compiled: Compiled, method: str, url: str, headers: list[str], listener: str | None
) -> dict[str, Any]:
    """`xgate explain`'s answer for a request given as on its command line; the CLI (-f) and the admin API use it.

    Errors: ExplainError or translate.matching.MatchingError naming what is malformed."""
    request = parse_request(method, url, headers)
    return explain(compiled, request, choose_listener(compiled, url, listener))
