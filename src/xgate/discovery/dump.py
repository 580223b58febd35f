"""What the control plane last sent to one consumer, decoded to plain data, with secrets redacted (config-dump)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf import json_format

from xgate.discovery import typeurls
from xgate.discovery.status import ProxyStatus, TypeStatus
from xgate.errors import XgateError

SECRET = typeurls.SECRET
# Envoy's own config_dump sections, so a dump reads like Envoy's.
SECTIONS = {
    typeurls.LISTENER: "listeners",
    typeurls.CLUSTER: "clusters",
    typeurls.ENDPOINT: "endpoints",
    typeurls.ROUTE: "routes",
    typeurls.SCOPED_ROUTE: "scoped_routes",
    typeurls.FILTER_CONFIG: "ecds_filters",
    SECRET: "secrets",
}
REDACTED = "[redacted]"
# Fields whose value is a credential wherever they appear (TLS keys, passwords, HMAC and session keys).
_SECRET_FIELDS = frozenset(
    {
        "private_key",
        "password",
        "secret",
        "client_secret",
        "hmac_secret",
        "session_ticket_keys",
        "ocsp_staple",
        "token",
        "api_key",
        "generic_secret",
    }
)
# Request headers an Envoy may be told to add that carry a credential.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


class DumpError(XgateError):
    """No consumer to dump: the node is unknown, or several Envoys are connected and none was named."""


def choose(proxies: Iterable[ProxyStatus], node: str | None) -> ProxyStatus:
    """The consumer named `node` (an Envoy or a service instance), or the only Envoy when `node` is None.

    Errors: DumpError naming the connected nodes when there is no such consumer or the choice is ambiguous."""
    connected = list(proxies)
    if node is not None:
        for proxy in connected:
            if node in (proxy.node_id, proxy.peer):
                return proxy
        known = ", ".join(sorted(p.node_id or p.peer for p in connected)) or "none"
        raise DumpError(f"no consumer with node id {node!r} is connected (connected: {known})")
    envoys = [proxy for proxy in connected if proxy.role == typeurls.ENVOY]
    if len(envoys) == 1:
        return envoys[0]
    if not envoys:
        raise DumpError("no Envoy is connected")
    raise DumpError(
        f"{len(envoys)} Envoys are connected; name one with --node: {', '.join(sorted(p.node_id for p in envoys))}"
    )


def config_dump(proxy: ProxyStatus) -> Callable[[], dict[str, Any]]:
    """Every resource `proxy` was last sent, by section (listeners, clusters, endpoints, routes, secrets, and the
    services' own types), as Envoy's JSON field names, each with the version sent and whether it was ACKed.

    What was sent is read now; the returned function decodes it, which at 10,000 routes takes ~120 ms (a 2-core
    machine, idle): run it in a worker thread, off the event loop that serves ADS (the resources are immutable,
    the proxy is not read again)."""
    captured = [(type_url, state.sent, _versions(state)) for type_url, state in sorted(proxy.types.items())]
    head = {"node": proxy.node_id, "cluster": proxy.cluster, "kind": proxy.role, "peer": proxy.peer}

    def decode() -> dict[str, Any]:
        sections: dict[str, list[dict[str, Any]]] = {}
        versions: dict[str, dict[str, Any]] = {}
        for type_url, sent, state in captured:
            section = SECTIONS.get(type_url) or typeurls.SHORT.get(type_url, type_url)
            held = [r for r in sent.values() if r is not None] if isinstance(sent, Mapping) else list(sent)
            ordered = sorted(held, key=lambda resource: resource.name)
            sections[section] = [redact(_decode(resource.packed)) for resource in ordered]
            versions[section] = state
        return {**head, "versions": versions, "resources": sections}

    return decode


def _versions(state: TypeStatus) -> dict[str, Any]:
    return {
        "sent_version": state.sent_version,
        "sent_revision": state.sent_revision,
        "acked": state.sent_version is not None and state.acked_version == state.sent_version,
        "rejection": None if state.rejection is None else state.rejection.message,
    }


def _decode(packed: Any) -> dict[str, Any]:
    data: dict[str, Any] = json_format.MessageToDict(packed, preserving_proto_field_name=True)
    return data


def redact(value: Any) -> Any:
    """`value` with every credential replaced by REDACTED: a secret field's data, a credential header's value."""
    if isinstance(value, list):
        return [redact(item) for item in value]
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("key"), str) and value["key"].lower() in _SECRET_HEADERS and "value" in value:
        return {**value, "value": REDACTED}
    return {key: _redact_field(inner) if key in _SECRET_FIELDS else redact(inner) for key, inner in value.items()}


def _redact_field(value: Any) -> Any:
    """A credential field: a file name says where the secret is, not what it is, so it stays; data goes."""
    if isinstance(value, dict):
        return {key: inner if key == "filename" else _redact_field(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_redact_field(item) for item in value]
    return REDACTED
