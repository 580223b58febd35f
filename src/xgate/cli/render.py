"""Turn IR and Envoy resources into plain data for `xgate translate` and the golden tests, secrets redacted."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import yaml
from cryptography import x509
from google.protobuf import json_format
from pydantic import BaseModel

from xgate.api import KINDS
from xgate.config.tls import REDACTED
from xgate.config.types import format_duration
from xgate.ir import GatewayIR
from xgate.translate import Resources


def ir_to_data(ir: GatewayIR) -> dict[str, Any]:
    """The IR as data, default values left out so a reader sees only what the config says."""

    def plain(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json", exclude_defaults=True)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in sorted(value.items())}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, frozenset | set):
            return sorted(plain(v) for v in value)
        return value

    data: dict[str, Any] = redact(plain(ir))
    if not data.get("secrets"):
        data.pop("secrets", None)  # configs without TLS read as before
    return data


def resources_to_data(resources: Resources) -> dict[str, dict[str, Any]]:
    """Each kind (Envoy's, then the services': "rate_limits", ...) as name -> the proto as data with the field
    names of the API's docs (snake_case), defaults left out, sorted."""
    return {
        KINDS.get(kind, kind): {
            name: redact(json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True)))
            for name, message in sorted(protos.items())
        }
        for kind, protos in resources.by_kind().items()
        if protos or kind not in ("secrets", "scoped_routes", "filter_configs")  # read as before where unused
    }


# Members of a JWK that are secret: an `oct` key's shared secret, the private parts of RSA, EC and OKP keys.
_PRIVATE_JWK = frozenset({"k", "d", "p", "q", "dp", "dq", "qi", "oth"})
# Envoy fields whose whole value is key material.
_SECRET_FIELDS = frozenset({"private_key", "session_ticket_keys"})


def redact(value: Any) -> Any:
    """`value` (plain data of a config or of Envoy resources) with every private key, ticket key and secret
    JWK member replaced by "[redacted]", also inside JWKS held as JSON text."""
    if isinstance(value, list):
        return [redact(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "kty" in value:
        return {key: REDACTED if key in _PRIVATE_JWK else redact(item) for key, item in value.items()}
    shown: dict[str, Any] = {}
    for key, item in value.items():
        if key in _SECRET_FIELDS:
            shown[key] = REDACTED
        elif key in ("inline_string", "jwks_json") and isinstance(item, str) and '"keys"' in item:
            shown[key] = _redacted_json(item)
        else:
            shown[key] = redact(item)
    return shown


def _redacted_json(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text
    return json.dumps(redact(data), sort_keys=True)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)


SECTIONS = {
    "plugin": "plugins",
    "secret": "secrets",
    "listener": "listeners",
    "upstream": "upstreams",
    "route": "routes",
}


def config_document(objects: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """(kind, name) -> stored data, as one config document that `xgate apply -f` takes back unchanged."""
    document: dict[str, Any] = {"xgate": "v1"}
    for kind, section in SECTIONS.items():
        found = {name: data for (obj_kind, name), data in sorted(objects.items()) if obj_kind == kind}
        if found:
            document[section] = found if kind == "plugin" else list(found.values())
    return document


WIDTH = 48  # characters of a table cell before it is cut (`-o wide` cuts nothing)


def table(kind: str, objects: list[tuple[str, Any]], wide: bool) -> str:
    """Objects of one kind as columns, like `kubectl get`: the first column is the name."""
    columns, cells = _COLUMNS[kind]
    rows = [[name, *cells(obj)] for name, obj in objects]
    headers = [kind.upper(), *columns]
    if wide:
        headers += _WIDE[kind][0]
        rows = [row + _WIDE[kind][1](obj) for row, (_, obj) in zip(rows, objects, strict=True)]
    else:
        rows = [[cell if len(cell) <= WIDTH else cell[: WIDTH - 1] + "…" for cell in row] for row in rows]
    widths = [max(len(row[index]) for row in [headers, *rows]) for index in range(len(headers))]
    lines = ["   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    header = "   ".join(cell.ljust(width) for cell, width in zip(headers, widths, strict=True)).rstrip()
    return "\n".join([header, *lines]) + "\n"


def _plugins(plugins: dict[str, Any]) -> str:
    return ",".join(name if value not in (None, False) else f"{name}=off" for name, value in plugins.items()) or "-"


def _listener(obj: Any) -> list[str]:
    tls = ",".join(host for cert in obj.tls.certificates for host in cert.hosts or ("*",)) if obj.tls else "-"
    return [obj.address, str(obj.port), tls, _plugins(obj.plugins)]


def _secret(obj: Any) -> list[str]:
    """What a secret holds and, for a certificate, whom it names and until when: never the key."""
    holds = [part for part, value in (("cert", obj.cert), ("ca", obj.ca), ("ticket_keys", obj.ticket_keys)) if value]
    leaf = obj.leaf
    if leaf is None:
        return [",".join(holds), "-", "-"]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        named = ",".join(san.get_values_for_type(x509.DNSName)) or "-"
    except x509.ExtensionNotFound:
        named = "-"
    return [",".join(holds), named, leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")]


def _upstream(obj: Any) -> list[str]:
    endpoints = ",".join(
        f"{endpoint.host}:{endpoint.port}" + (f"*{endpoint.weight}" if endpoint.weight != 1 else "")
        for endpoint in obj.endpoints
    )
    check = obj.health_check
    shown = (check.path if check.type == "http" else check.type) if check is not None else ""
    health = f"{shown} every {format_duration(check.interval)}" if check is not None else "-"
    return [endpoints, obj.protocol, obj.lb, health]


def _route(obj: Any) -> list[str]:
    path = obj.match.path
    shown = f"={path.exact}" if path.exact is not None else f"~{path.regex}" if path.regex is not None else path.prefix
    match = " ".join(
        part
        for part in (
            shown,
            ",".join(obj.match.methods),
            f"+{len(obj.match.headers)} headers" if obj.match.headers else "",
            f"+{len(obj.match.query)} query" if obj.match.query else "",
        )
        if part
    )
    if obj.upstream is not None:
        action = f"-> {obj.upstream}"
    elif obj.split is not None:
        action = "split " + ",".join(f"{target.upstream}:{target.weight}" for target in obj.split)
    elif obj.redirect is not None:
        action = f"redirect {obj.redirect.code} {obj.redirect.path or ''}".rstrip()
    else:
        action = f"respond {obj.direct_response.status}"
    canary = ",".join(f"{canary.stage}->{canary.upstream}" for canary in obj.canary) or "-"
    return [",".join(obj.match.hosts), match, action, canary, _plugins(obj.plugins)]


def _plugin(obj: Any) -> list[str]:
    return ["off" if obj in (None, False) else json.dumps(obj, sort_keys=True, separators=(",", ":"))]


def _route_wide(obj: Any) -> list[str]:
    timeout = format_duration(obj.timeout) if obj.timeout is not None else "-"
    return [",".join(obj.listeners) or "*", str(obj.priority), str(timeout)]


_COLUMNS: dict[str, tuple[list[str], Any]] = {
    "listener": (["ADDRESS", "PORT", "TLS", "PLUGINS"], _listener),
    "secret": (["HOLDS", "NAMES", "EXPIRES"], _secret),
    "upstream": (["ENDPOINTS", "PROTOCOL", "LB", "HEALTH CHECK"], _upstream),
    "route": (["HOSTS", "MATCH", "ACTION", "CANARY", "PLUGINS"], _route),
    "plugin": (["SETTINGS"], _plugin),
}
_WIDE: dict[str, tuple[list[str], Any]] = {
    "listener": ([], lambda obj: []),
    "upstream": (["CONNECT TIMEOUT"], lambda obj: [str(format_duration(obj.connect_timeout))]),
    "route": (["LISTENERS", "PRIORITY", "TIMEOUT"], _route_wide),
    "plugin": ([], lambda obj: []),
    "secret": ([], lambda obj: []),
}
