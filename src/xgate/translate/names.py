"""Every Envoy resource name xgate produces, and the way back from a name to the config object."""

from __future__ import annotations

LISTENER = "listener/"
ROUTES = "routes/"
UPSTREAM = "upstream/"
FALLBACK = "fallback/"


def listener(name: str) -> str:
    return LISTENER + name


def route_config(listener_name: str) -> str:
    return ROUTES + listener_name


def cluster(upstream_name: str) -> str:
    return UPSTREAM + upstream_name


def fallback_cluster(first: str, *then: str) -> str:
    """The aggregate cluster that sends to upstream `first` while it has healthy endpoints, else to the first
    of `then` that has (a canary and its stable upstream; a split target and the split's other targets)."""
    return f"{FALLBACK}{first}/{','.join(then)}"


def virtual_host(listener_name: str, hosts: tuple[str, ...]) -> str:
    return f"{listener_name}/{','.join(hosts)}"


def origin(resource_name: str) -> str:
    """Name the config object behind an Envoy resource, for NACK reports ("upstream users")."""
    if resource_name.startswith(FALLBACK):
        first, _, then = resource_name.removeprefix(FALLBACK).partition("/")
        return f"fallback from upstream {first} to {', '.join(f'upstream {name}' for name in then.split(','))}"
    for prefix, kind in ((LISTENER, "listener"), (UPSTREAM, "upstream")):
        if resource_name.startswith(prefix):
            return f"{kind} {resource_name.removeprefix(prefix)}"
    if resource_name.startswith(ROUTES):
        return f"routes of listener {resource_name.removeprefix(ROUTES)}"
    return resource_name
