"""Every Envoy resource name xgate produces, and the way back from a name to the config object."""

from __future__ import annotations

LISTENER = "listener/"
ROUTES = "routes/"
UPSTREAM = "upstream/"
FALLBACK = "fallback/"
SECRET = "secret/"
# What an SDS secret made from a config secret holds: its certificate and key, its CA bundle, its ticket keys.
CA_SUFFIX = "/ca"
TICKETS_SUFFIX = "/tickets"


def listener(name: str) -> str:
    return LISTENER + name


def route_config(listener_name: str) -> str:
    return ROUTES + listener_name


def host_route_config(listener_name: str, host: str) -> str:
    """The RouteConfiguration of one host of a `route_tables: per_host` listener (listener names have no "/")."""
    return f"{ROUTES}{listener_name}/{host}"


def route_config_listener(resource_name: str) -> str:
    """The listener a RouteConfiguration belongs to, whether its one table or one of its hosts'."""
    return resource_name.removeprefix(ROUTES).partition("/")[0]


def redirect_listener(name: str) -> str:
    """The plain-HTTP listener that redirects to TLS listener `name`."""
    return f"{LISTENER}{name}/http"


def secret(name: str) -> str:
    """The SDS secret with the certificate and key of config secret `name`."""
    return SECRET + name


def ca_secret(name: str) -> str:
    """The SDS secret with the CA bundle (a validation context) of config secret `name`."""
    return SECRET + name + CA_SUFFIX


def tickets_secret(name: str) -> str:
    """The SDS secret with the session ticket keys of config secret `name`."""
    return SECRET + name + TICKETS_SUFFIX


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
    if resource_name.startswith(SECRET):
        return f"secret {resource_name.removeprefix(SECRET).split('/')[0]}"
    if resource_name.startswith(LISTENER) and resource_name.endswith("/http"):
        return f"listener {resource_name.removeprefix(LISTENER).removesuffix('/http')} (its HTTP redirect)"
    for prefix, kind in ((LISTENER, "listener"), (UPSTREAM, "upstream")):
        if resource_name.startswith(prefix):
            return f"{kind} {resource_name.removeprefix(prefix)}"
    if resource_name.startswith(ROUTES):
        listener_name, _, host = resource_name.removeprefix(ROUTES).partition("/")
        return f"routes of listener {listener_name}" + (f" for host {host}" if host else "")
    return resource_name
